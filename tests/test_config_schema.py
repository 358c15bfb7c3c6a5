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


@pytest.mark.parametrize("overlay", [None] + sorted(f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml"))
                         + ["examples/audit.yaml"])
def test_shipped_configs_are_valid(overlay, monkeypatch):
    """config.yaml, and each configs/*.yaml (and the example) merged over it as `--configfile`
    does, pass the schema and the checks made when the DAG is built (architectures, dataset
    options, select.by, plug-in paths relative to the repository root, ...)."""
    from snakemake.utils import update_config

    from fragility.study import grid

    monkeypatch.chdir(REPO)
    merged = config()
    if overlay:
        update_config(merged, yaml.safe_load((REPO / overlay).read_text()))
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


def test_an_estimator_keeps_only_the_options_its_method_reads():
    """Table 1's small CNN overrides `primary` to `exact`; the LiSSA options merged in from the
    study's `primary` are not its settings, so changing them re-runs nothing for it."""
    from fragility.study import grid

    cfg = config()
    lissa = grid.estimators(cfg, "table1", "lenet")["primary"]
    exact = grid.estimators(cfg, "table1", "smallcnn")["primary"]
    assert lissa["method"] == "lissa" and "depth" in lissa
    assert exact["method"] == "exact" and not {"depth", "batch_size", "scale", "power_iterations"} & set(exact)


def test_an_override_of_the_repeat_offset_keeps_the_studys_repeat_count():
    from snakemake.utils import update_config

    from fragility.study import grid

    cfg = config()
    update_config(cfg, {"studies": {"table1": {"loo": {"repeats": {"count": 5}},
                                               "overrides": {"lenet": {"loo": {"repeats": {"order_seed_offset": 3}}}}}}})
    validate(cfg, SCHEMA)
    assert grid.arch_config(cfg, "table1", "lenet")["loo"]["repeats"] == {"count": 5, "order_seed_offset": 3}


@pytest.mark.parametrize("where", ["study", "dataset"])
def test_a_name_that_cannot_be_a_path_wildcard_is_refused(where):
    bad = copy.deepcopy(config())
    if where == "study":
        bad["studies"]["Iris-b"] = bad["studies"].pop("iris")
    else:
        bad["studies"]["iris"]["datasets"]["Iris-b"] = bad["studies"]["iris"]["datasets"].pop("iris")
    with pytest.raises(WorkflowError, match="Iris-b"):
        validate(bad, SCHEMA)


def test_outputs_follow_the_kind_not_the_name(tmp_path):
    """A study of kind iris under another name gets the Iris figures; a sweep with one value
    (a single width) is not asked for."""
    import subprocess
    import sys


    block = copy.deepcopy(config()["studies"]["iris"])
    block["architectures"] = ["mlp-d1-w5", "mlp-d2-w5"]
    overlay = tmp_path / "renamed.yaml"
    overlay.write_text(yaml.safe_dump({"studies": {"iris": {"enabled": False}, "iris_b": block}}))
    snakemake = str(Path(sys.executable).parent / "snakemake")
    run = subprocess.run([snakemake, "-n", "all", "--configfile", str(overlay)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "results/iris_b/figures/spearman_vs_depth.png" in run.stdout
    assert "results/iris_b/figures/overview/correlation_vs_depth.png" in run.stdout
    assert "overview/correlation_vs_width" not in run.stdout
    assert "results/iris/" not in run.stdout


@pytest.mark.parametrize("key, value", [("pbrf", {"epsilon_scale": 0}), ("lds", {"fraction": 1.0}),
                                        ("groups", {"size": 0}), ("pbrf", {"solver": "newton"}),
                                        ("lds", {"start": "zero"}), ("groups", {"epochs": 0})])
def test_a_bad_ground_truth_setting_is_refused_naming_the_key(key, value):
    bad = copy.deepcopy(config())
    bad["studies"]["iris"][key] = value
    with pytest.raises(WorkflowError, match=list(value)[0]):
        validate(bad, SCHEMA)
    bad["studies"]["iris"][key] = {}
    validate(bad, SCHEMA)


def test_an_unknown_ground_truth_is_refused_naming_the_key():
    """The names of `truths` are the registry's (src/fragility/truths/registry.py), checked when
    the DAG is built."""
    from fragility.study import grid
    from fragility.truths import registry

    bad = copy.deepcopy(config())
    bad["studies"]["iris"]["truths"] = ["loo", "datamodels"]
    validate(bad, SCHEMA)
    with pytest.raises(ValueError, match="truths: unknown ground truth 'datamodels'"):
        registry.study_enabled(bad, "iris")
    bad["studies"]["iris"]["truths"] = ["lds", "loo"]
    assert registry.study_enabled(bad, "iris") == ["loo", "lds"]


def test_the_old_targets_key_fails_naming_the_new_one():
    from fragility.study import grid

    for patch in ({"targets": ["loo", "lds"]}, {"overrides": {"mlp-d1-w5": {"targets": ["loo"]}}}):
        old = copy.deepcopy(config())
        old["studies"]["iris"].update(patch)
        with pytest.raises(ValueError, match=r"studies\.iris\.(overrides\.mlp-d1-w5\.)?targets: renamed to `truths:`") as err:
            grid.check_all(old, [], SCHEMA)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["pbrf", "groups", "lds"])
def test_every_truth_length_accepts_steps_or_epochs(key):
    """Each truth's re-training length is `steps` or `epochs` (or loo's): the schema takes either,
    and the truth refuses both."""
    from fragility.study import grid
    from fragility.truths import registry

    good = copy.deepcopy(config())
    for length in ({"epochs": 1.5}, {"steps": 7}, {"steps": None, "epochs": 2}):
        good["studies"]["iris"][key] = length
        validate(good, SCHEMA)
        registry.get(key).settings(grid.arch_config(good, "iris", "mlp-d1-w5"))
    good["studies"]["iris"][key] = {"steps": 7, "epochs": 2}
    validate(good, SCHEMA)
    with pytest.raises(ValueError, match=f"set at most one of {key}.steps and {key}.epochs"):
        registry.get(key).settings(grid.arch_config(good, "iris", "mlp-d1-w5"))


def test_a_null_estimator_is_dropped_and_cannot_be_the_selection():
    """An overlay drops an estimator the base config names with `name: null` (the quick grid drops
    the paper config's GPU-only solves this way); select.by must name one that is left."""
    from snakemake.utils import update_config

    from fragility.study import grid

    cfg = config()
    update_config(cfg, yaml.safe_load((REPO / "configs" / "quick.yaml").read_text()))
    validate(cfg, SCHEMA)
    assert set(grid.estimators(cfg, "mnist_small", "smallcnn")) == {"primary", "kfac", "ekfac", "identity"}
    assert set(grid.estimators(cfg, "table1", "smallcnn")) == {"primary", "kfac", "ekfac", "identity", "grad_cosine",
                                                                "representer", "tracin", "trak"}
    assert set(grid.estimators(cfg, "table1", "lenet")) == {"primary", "kfac", "ekfac", "identity"}
    assert grid.estimators(cfg, "table1", "resnet18")["ekfac"] == {"method": "ekfac", "output_hessian": "sampled"}
    cfg["studies"]["mnist_small"]["influence"]["methods"]["primary"] = None
    with pytest.raises(ValueError, match="select.by"):
        grid.check_config(cfg)


def test_seeds_per_architecture():
    """`overrides.<arch>.seeds` gives one architecture its own seeds: its cells, and only its, have them."""
    from snakemake.utils import update_config

    from fragility.study import grid

    cfg = config()
    update_config(cfg, {"studies": {"table1": {"overrides": {"lenet": {"seeds": [0, 1]}}}}})
    validate(cfg, SCHEMA)
    grid.check_config(cfg)
    seeds = {}
    for cell in grid.cells(cfg, "table1"):
        seeds.setdefault(cell["arch"], set()).add(cell["seed"])
    assert seeds["lenet"] == {0, 1} and seeds["smallcnn"] == {0}
    grid.check_wildcards(cfg, {"study": "table1", "dataset": "mnist", "arch": "lenet", "seed": "1"})
    with pytest.raises(grid.GridError, match=r"not one of studies.table1.seeds; the seeds are written seed0"):
        grid.check_wildcards(cfg, {"study": "table1", "dataset": "mnist", "arch": "smallcnn", "seed": "1"})
    with pytest.raises(grid.GridError, match=r"overrides.lenet.seeds; the seeds are written seed0, seed1"):
        grid.check_wildcards(cfg, {"study": "table1", "dataset": "mnist", "arch": "lenet", "seed": "2"})
    cfg["studies"]["table1"]["overrides"]["lenet"]["seeds"] = [1, 1]
    with pytest.raises(ValueError, match=r"overrides.lenet.seeds: duplicate values"):
        grid.check_config(cfg)


@pytest.mark.parametrize("patch, message", [
    ({"verdict": {"reliable": 0.2, "partly_reliable": 0.5}}, r"studies\.iris\.verdict: need -1 ≤ partly_reliable ≤ reliable"),
    ({"train": {"keep_checkpoints": 10**6}}, r"studies\.iris\.train\.keep_checkpoints .*checkpoints of a run of"),
])
def test_verdict_thresholds_and_kept_checkpoints_are_checked_when_the_dag_is_built(patch, message):
    from snakemake.utils import update_config

    from fragility.study import grid

    cfg = config()
    update_config(cfg["studies"]["iris"], patch)
    with pytest.raises(ValueError, match=message):
        grid.check_config(cfg)
