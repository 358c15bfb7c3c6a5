"""The config schema alone (no DAG build): the shipped configs are valid, and a bad value of a
tuning key is refused with an error that names the key (the slow tests in test_reruns.py check
the same through `snakemake -n`)."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_shipped_config_is_valid():
    validate(config(), SCHEMA)


@pytest.mark.parametrize(
    "where, key, value",
    [(("loo",), "copies_per_pass", 0), (("influence",), "scoring_chunk_size", 0),
     (("influence", "methods", "lissa"), "dense_max_parameters", -1), (("loo",), "copies_per_pass", "few")],
)
def test_bad_tuning_value_is_refused_naming_the_key(where, key, value):
    bad = copy.deepcopy(config())
    block = bad["studies"]["iris"]
    for name in where:
        block = block[name]
    block[key] = value
    with pytest.raises(WorkflowError, match=key):
        validate(bad, SCHEMA)
    block[key] = 4  # a good value passes
    validate(bad, SCHEMA)
