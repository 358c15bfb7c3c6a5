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


@pytest.mark.parametrize("overlay", [None] + sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(overlay):
    """config.yaml, and each configs/*.yaml merged over it as `--configfile` does, pass the schema
    and the checks made when the DAG is built (architectures, dataset options, select.by, ...)."""
    from snakemake.utils import update_config

    from fragility import grid

    merged = config()
    if overlay:
        update_config(merged, yaml.safe_load((REPO / "configs" / overlay).read_text()))
    validate(merged, SCHEMA)
    grid.check_config(merged)


@pytest.mark.parametrize(
    "where, key, value",
    [(("loo",), "copies_per_pass", 0), (("influence",), "scoring_chunk_size", 0),
     (("influence", "methods", "lissa"), "dense_max_parameters", -1), (("loo",), "copies_per_pass", "few"),
     (("loo",), "loss_mean_over", "some")],
)
def test_bad_tuning_value_is_refused_naming_the_key(where, key, value):
    bad = copy.deepcopy(config())
    block = bad["studies"]["iris"]
    for name in where:
        block = block[name]
    block[key] = value
    with pytest.raises(WorkflowError, match=key):
        validate(bad, SCHEMA)
    block[key] = "all" if key == "loss_mean_over" else 4  # a good value passes
    validate(bad, SCHEMA)


def test_a_bad_test_point_spec_in_an_override_is_refused():
    bad = copy.deepcopy(config())
    bad["studies"]["iris"]["overrides"] = {"mlp-d1-w5": {"test_points": ["maximum"]}}
    with pytest.raises(WorkflowError, match="maximum"):
        validate(bad, SCHEMA)
