"""The schema and the library agree on every setting they both name: each built-in estimator's
options (engine/methods.py) and each ground truth's defaults (truths/*.py) are keys of the schema
block that validates them, with values it accepts, and the schema names no key no method reads."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from fragility.estimators import registry as estimators
from fragility.truths import registry as truths

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
DEFS = SCHEMA["$defs"]


def accepts(subschema: dict, value) -> bool:
    """Whether `subschema` (which may refer to #/$defs/...) accepts `value`."""
    try:
        jsonschema.validate(value, {**subschema, "$defs": DEFS})
    except jsonschema.ValidationError:
        return False
    return True


def test_the_schema_names_exactly_the_built_in_methods_and_the_options_they_read():
    block = DEFS["inverse_hessian_method"]["properties"]
    assert set(block["method"]["enum"]) == set(estimators.BUILT_IN)
    read = {option for method in estimators.BUILT_IN for option in estimators.options_read(method)}
    assert read <= set(block), f"options no schema key validates: {sorted(read - set(block))}"
    assert set(block) - {"method"} <= read, f"schema keys no method reads: {sorted(set(block) - {'method'} - read)}"


@pytest.mark.parametrize("name", truths.names())
def test_each_truth_s_defaults_are_keys_its_schema_block_accepts(name):
    truth = truths.get(name)
    block = DEFS.get(name, DEFS.get("loo"))
    properties = block.get("properties", {})
    for key, value in truth.defaults.items():
        assert key in properties, f"{name}.{key}: a default the schema does not know"
        assert accepts(properties[key], value), f"{name}.{key}: the schema refuses its default {value!r}"
    if truth.defaults:  # loo has none: its block (steps or epochs, chunk_size) is required in the config
        assert accepts(block, dict(truth.defaults)), f"{name}: the schema refuses the block of defaults"


def test_a_check_that_could_not_fail_would_be_caught():
    """The helper refuses what the schema refuses (so the tests above can fail)."""
    assert not accepts(DEFS["groups"]["properties"]["size"], "five")
    assert accepts(DEFS["groups"]["properties"]["size"], 5)


@pytest.mark.parametrize("block", ["train", "loo"])
def test_the_training_settings_defaults_are_values_the_train_and_loo_blocks_accept(block):
    """Every `TrainSettings` field a `train` or `loo` block sets (`CONFIG_KEYS`) is a key of that
    block's schema whose type, enum and bounds accept the dataclass default, except the fields the
    block does not offer: `loss_mean_over` (a re-training's, not θ*'s) and `check_every` (θ*'s
    progress lines)."""
    import dataclasses

    from fragility.engine.training import TrainSettings

    not_offered = {"train": {"loss_mean_over"}, "loo": {"check_every"}}[block]
    properties = DEFS[block].get("properties", {})
    defaults = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    for key in TrainSettings.CONFIG_KEYS:
        if key in not_offered:
            assert key not in properties, f"{block}.{key}: the schema offers it now; check its default here"
            continue
        assert key in properties, f"{block}.{key}: a TrainSettings field the schema does not know"
        if defaults[key] is not dataclasses.MISSING:  # lr: no default, the config gives it
            assert accepts(properties[key], defaults[key]), f"{block}.{key}: the schema refuses the default {defaults[key]!r}"


@pytest.mark.parametrize("name", sorted(estimators.BUILT_IN_CLASSES))
def test_each_built_in_estimator_class_s_defaults_are_values_the_schema_accepts(name):
    """The keyword defaults of grad_cosine, representer, tracin, trak and ensemble (their options,
    read by the DAG from the source) are values the schema's estimator block accepts, and an
    option the class checks against a list of names (trak's `models`, `projection`) has exactly
    those names as the schema's enum."""
    import inspect

    cls = estimators.estimator_class(name)
    block = DEFS["inverse_hessian_method"]["properties"]
    for option, parameter in inspect.signature(cls.__init__).parameters.items():
        if option == "self" or parameter.default is inspect.Parameter.empty:
            continue
        assert option in block, f"{name}.{option}: an option the schema does not know"
        if parameter.default is not None or option != "estimator":  # ensemble's inner block is required
            assert accepts(block[option], parameter.default), \
                f"{name}.{option}: the schema refuses the default {parameter.default!r}"
    if name == "trak":
        from fragility.estimators import trak

        assert set(block["models"]["enum"]) == set(trak.MODELS)
        assert set(block["projection"]["enum"]) == set(trak.PROJECTIONS)
