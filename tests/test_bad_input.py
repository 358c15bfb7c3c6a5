"""Bad configs and bad targets stop the run when the DAG is built, with a message that names the
key (or the path's part) and what would be right. One line per case: a YAML overlay merged over
config.yaml + configs/tiny.yaml as `--configfile` merges it, and the fragments the error must hold.

The in-process tables run the same checks, in the same order, as workflow/rules/common.smk
(grid.check_all); a few cases go through `snakemake -n` to show the wiring."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config, validate

from fragility.study import grid
from workflow_files import REPO, copy_workflow

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def merged_files(overlay: str) -> tuple[dict, list[tuple[str, dict]]]:
    files = [("config.yaml", yaml.safe_load((REPO / "config.yaml").read_text())),
             ("configs/tiny.yaml", yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())),
             ("configs/bad.yaml", yaml.safe_load(overlay) or {})]
    config = {}
    for _, raw in files:
        update_config(config, raw)
    return config, files


def dag_checks(overlay: str) -> None:
    config, files = merged_files(overlay)
    grid.check_all(config, files, SCHEMA, fill_defaults=lambda c: validate(c, SCHEMA))


IRIS = "studies:\n  iris:\n    "
BAD_CONFIGS = [  # (id, overlay, fragments of the message)
    ("unknown-top-level-key", "colour: red", ["configs/bad.yaml: colour: unknown key 'colour'; the keys here are"]),
    ("unknown-key", IRIS + "train: {stepz: 10}", ["configs/bad.yaml: studies.iris.train.stepz: unknown key 'stepz'",
                                                  "steps"]),
    ("yaml-exponent", IRIS + "train: {lr: 1e-3}",
     ["configs/bad.yaml: studies.iris.train.lr: '1e-3' is a string, not a number", "write 1.0e-3 or 0.001"]),
    ("yaml-exponent-unsigned", IRIS + "loo: {lr: 2.5e4}", ["studies.iris.loo.lr", "write 2.5e+4 or 25000"]),
    ("quoted-number", IRIS + "train: {lr: '0.01'}", ["studies.iris.train.lr", "write it without quotes"]),
    ("wrong-type", IRIS + "train: {lr: fast}", ["configs/bad.yaml: studies.iris.train.lr: 'fast' is not a number"]),
    ("negative-steps", IRIS + "loo: {steps: -5}", ["studies.iris.loo.steps", "-5 is less than the minimum of 1"]),
    ("bad-enum", IRIS + "train: {optimizer: lbfgs}", ["studies.iris.train.optimizer", "'lbfgs' is not one of gd, sgd, adam"]),
    ("top0", IRIS + "test_points: [top0]", ["studies.iris.test_points[0]: 'top0' is not a test-point spec", "k ≥ 1"]),
    ("top999", IRIS + "test_points: [top999]", ["studies.iris.test_points", "top999", "asks for 999 test points", "30"]),
    ("p150", IRIS + "test_points: [p150]", ["studies.iris.test_points", "'p150' is not a percentile"]),
    ("override-p150", IRIS + "overrides: {mlp-d1-w5: {test_points: [max, p150]}}",
     ["studies.iris.overrides.mlp-d1-w5.test_points", "p150"]),
    ("test-fraction-0.99", IRIS + "datasets: {iris: {test_fraction: 0.99}}",
     ["studies.iris.datasets.iris", "0 training and 150 test points"]),
    ("width-0", IRIS + "architectures: [mlp-d1-w0]", ["studies.iris.architectures", "mlp-d1-w0", "width must be positive"]),
    ("no-method", IRIS + "influence: {methods: {newton: {}}}",
     ["studies.iris.influence.methods.newton", "names no method", "exact, cg, lissa, arnoldi"]),
    ("override-no-method", IRIS + "overrides: {mlp-d1-w5: {influence: {methods: {newton: {depth: 3}}}}}",
     ["studies.iris.overrides.mlp-d1-w5.influence.methods.newton", "names no method"]),
    ("top-k-500", IRIS + "select: {rules: [{top_k: 500}]}",
     ["studies.iris.select.rules[0].top_k", "500", "iris has 120"]),
    ("around-k-500", IRIS + "select: {rules: [{top_k: 5}, {around_percentile: 30, k: 500}]}",
     ["studies.iris.select.rules[1].k", "120"]),
    ("override-top-k", IRIS + "overrides: {mlp-d2-w5: {select: {rules: [{top_k: 121}]}}}",
     ["studies.iris.overrides.mlp-d2-w5.select.rules[0].top_k", "121"]),
    ("other-methods-option", IRIS + "influence: {methods: {lissa: {rank: 3}}}",
     ["configs/bad.yaml", "studies.iris.influence.methods.lissa.rank", "lissa method does not read 'rank'",
      "an option of arnoldi"]),
    ("other-methods-option-in-override", IRIS + "overrides: {mlp-d1-w5: {influence: {methods: {exact: {depth: 9}}}}}",
     ["configs/bad.yaml", "studies.iris.overrides.mlp-d1-w5.influence.methods.exact.depth", "exact method"]),
    ("two-rule-kinds", IRIS + "select: {rules: [{top_fraction: 0.1, top_k: 5}]}",
     ["studies.iris.select.rules[0]", "not top_fraction and top_k", "2 rules"]),
    ("k-without-percentile", IRIS + "select: {rules: [{top_k: 5, k: 3}]}",
     ["studies.iris.select.rules[0]", "k belongs to around_percentile"]),
    ("percentile-without-k", IRIS + "select: {rules: [{around_percentile: 30}]}",
     ["studies.iris.select.rules[0]", "around_percentile needs k"]),
    ("empty-rule", IRIS + "select: {rules: [{}]}", ["studies.iris.select.rules[0]", "is no rule"]),
    ("exclude-unknown-arch", IRIS + "exclude: [{arch: mlp-d3-w5}]",
     ["studies.iris.exclude[0].arch", "'mlp-d3-w5' is not one of the study's architectures: mlp-d1-w5, mlp-d2-w5"]),
    ("exclude-everything", IRIS + "exclude: [{dataset: iris}]", ["studies.iris.exclude: leaves no cell"]),
    ("subset-too-large", "studies:\n  mnist_small:\n    datasets: {mnist_b: {loader: mnist, subset_size: 70000}}",
     ["studies.mnist_small.datasets.mnist_b.subset_size", "70000", "60000"]),
]


@pytest.mark.parametrize("overlay, fragments", [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS])
def test_a_bad_config_is_refused_at_dag_build_naming_the_key(overlay, fragments):
    with pytest.raises((ValueError, WorkflowError)) as caught:
        dag_checks(overlay)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message[:2000]
    assert len(message) < 600 and "\n" not in message, message[:2000]  # the key and the problem, not a schema dump


@pytest.mark.parametrize("overlay", [
    "",  # the tiny config itself
    # an override that switches an estimator's method inherits the other method's options: dropped, not an error
    IRIS + "overrides: {mlp-d1-w5: {influence: {methods: {lissa: {method: exact, block: 4}}}}}",
    IRIS + "select: {rules: [{top_k: 120}, {around_percentile: 50, k: 120}]}\n    test_points: [top30, p100]",
])
def test_a_good_config_passes_the_same_checks(overlay):
    dag_checks(overlay)


TINY = grid.deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), {})
update_config(TINY, yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text()))
CELL = {"study": "iris", "dataset": "iris", "arch": "mlp-d1-w5", "decay": "0.005", "seed": "0"}
BAD_TARGETS = [  # (id, the wildcards that differ from CELL, fragments of the message)
    ("seed", {"seed": "7"}, ["seed7/", "not one of studies.iris.seeds", "seed0"]),
    ("seed-spelling", {"seed": "00"}, ["seed00/", "seed0"]),
    ("arch", {"arch": "mlp-d3-w5"}, ["mlp-d3-w5/", "studies.iris.architectures", "mlp-d1-w5, mlp-d2-w5"]),
    ("dataset", {"dataset": "mnist"}, ["results/iris/mnist/", "not a dataset of studies.iris.datasets", "iris"]),
    ("study", {"study": "iris2"}, ["results/iris2/", "not a study", "iris, mnist_small, table1"]),
    ("decay-spelling", {"decay": "0.0"}, ["wd0.0/", "written wd0.005, wd0", "0.0 as wd0"]),
    ("decay", {"decay": "0.1"}, ["wd0.1/", "wd0.005, wd0"]),
    ("estimator", {"estimator": "cg"}, ["influence/cg", "not an estimator", "exact, lissa"]),
]


@pytest.mark.parametrize("change, fragments", [case[1:] for case in BAD_TARGETS], ids=[case[0] for case in BAD_TARGETS])
def test_a_path_outside_the_grid_is_refused_listing_what_exists(change, fragments):
    with pytest.raises(grid.GridError) as caught:
        grid.check_wildcards(TINY, {**CELL, **change})
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_every_cell_of_the_grid_and_its_estimators_pass_the_target_check():
    for cell in grid.cells(TINY, "iris"):
        for estimator in grid.estimators(TINY, "iris", cell["arch"]):
            grid.check_wildcards(TINY, {**cell, "estimator": estimator})


def test_an_excluded_cell_is_refused_naming_the_exclusion():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    with pytest.raises(grid.GridError, match="studies.table1.exclude leaves out smallcnn on cifar10"):
        grid.check_wildcards(config, {"study": "table1", "dataset": "cifar10", "arch": "smallcnn"})


def test_the_sizes_of_the_shipped_loaders_are_those_they_load():
    """expected_sizes (from the options alone) against the splits the loaders return (Iris here;
    offline MNIST in test_image_data.py, which loads it anyway)."""
    from fragility.data.registry import expected_sizes, load_split

    for dataset, cfg in [("iris", {}), ("iris", {"test_fraction": 0.33}), ("iris", {"test_fraction": 0.5})]:
        split = load_split(dataset, cfg)
        assert expected_sizes(dataset, cfg) == (len(split.y_train), len(split.y_test)), (dataset, cfg)


def test_prepare_data_checks_a_split_of_unknown_size_before_writing(tmp_path):
    """A loader of one's own has no size known at DAG build: prepare_data checks its split
    against the study before data.pt is written."""
    from fragility.study import pipeline

    loader = tmp_path / "tiny_loader.py"
    loader.write_text("import torch\nfrom fragility.data.split import Split\n"
                      "def load(data_dir='data', n=4):\n"
                      "    return Split(torch.randn(n, 2), torch.arange(n) % 2, torch.randn(3, 2), torch.arange(3) % 2, n_classes=2)\n")
    config, _ = merged_files(IRIS + f"datasets: {{iris: {{loader: '{loader}:load', n: 4}}}}\n"
                             "    select: {rules: [{top_k: 5}]}")
    out = tmp_path / "data.pt"
    with pytest.raises(ValueError, match=r"studies.iris.select.rules\[0\].top_k: asks for 5 .* has 4"):
        pipeline.prepare_data("iris", {"loader": f"{loader}:load", "n": 4}, "data", out,
                              check=lambda a, b: grid.check_sizes(config, "iris", "iris", a, b))
    assert not out.exists()


# ------------------------------------------------------------------ through `snakemake -n`
E2E = [  # (id, target, overlay, fragments): the checks are wired into the workflow
    ("seed-target", "results/iris/iris/mlp-d1-w5/wd0.005/seed7/correlations.parquet", "",
     ["results/iris/iris/mlp-d1-w5/wd0.005/seed7/", "seed0"]),
    # (a study with fuse_fit makes its influence tables in the fused job, whose outputs name its own
    # estimators only: a path naming another is then a plain missing-input error)
    ("estimator-target", "results/iris/iris/mlp-d1-w5/wd0/seed0/influence/cg.parquet", IRIS + "fuse_fit: false\n",
     ["'cg'", "exact, lissa"]),
    ("dataset-target", "results/iris/mnist/data.pt", "", ["'mnist'", "its datasets: iris"]),
    ("other-methods-option", "iris", IRIS + "influence: {methods: {lissa: {rank: 3}}}", ["configs/bad.yaml", "rank"]),
    ("two-rule-kinds", "iris", IRIS + "select: {rules: [{top_fraction: 0.1, top_k: 5}]}", ["not top_fraction and top_k"]),
    ("yaml-exponent", "iris", IRIS + "train: {lr: 1e-3}", ["configs/bad.yaml: studies.iris.train.lr", "1.0e-3 or 0.001"]),
    ("unknown-top-level-key", "iris", "colour: red\n", ["configs/bad.yaml: colour: unknown key 'colour'"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("target, overlay, fragments", [case[1:] for case in E2E], ids=[case[0] for case in E2E])
def test_snakemake_dry_run_refuses(tmp_path, target, overlay, fragments):
    work = copy_workflow(tmp_path / "wf", overlays={"bad.yaml": overlay or "{}\n"})
    proc = subprocess.run([SNAKEMAKE, "-n", target, "--configfile", "configs/tiny.yaml", "configs/bad.yaml"],
                          cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode != 0 and "Job stats" not in proc.stdout, proc.stdout[-3000:]
    for fragment in fragments:
        assert fragment in proc.stdout, proc.stdout[-3000:]
    assert len(proc.stdout.splitlines()) < 40, proc.stdout[-3000:]  # no schema dump


# ------------------------------------------------------------------ a failed job names its cell
def test_a_job_error_starts_with_its_rule_and_cell():
    from fragility.runtime import JobError, job_label, naming_failures

    logged = []
    label = job_label("influence", {**CELL, "estimator": "lissa"})
    assert label == "rule influence, cell results/iris/iris/mlp-d1-w5/wd0.005/seed0, estimator=lissa"
    assert job_label("prepare_data", {"study": "iris", "dataset": "iris"}) == "rule prepare_data, study iris, dataset iris"
    with pytest.raises(JobError, match=r"^rule influence, cell .*/seed0, estimator=lissa: IndexError: boom$") as caught:
        with naming_failures(label, logged.append):
            raise IndexError("boom")
    assert isinstance(caught.value.__cause__, IndexError) and logged == [f"FAILED {caught.value}"]


@pytest.mark.slow
def test_a_training_that_diverges_names_its_cell(tmp_path):
    work = copy_workflow(tmp_path / "wf", overlays={"bad.yaml": IRIS + "train: {lr: 1.0e+6}\n"})
    cell = "results/iris/iris/mlp-d1-w5/wd0/seed0"
    proc = subprocess.run([SNAKEMAKE, "--cores", "1", f"{cell}/model.pt", "--configfile", "configs/tiny.yaml",
                           "configs/bad.yaml"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode != 0
    log = (work / "results/logs/iris/iris/mlp-d1-w5/wd0/seed0/train.log").read_text()
    # the tiny Iris study fuses a cell's fit steps into one job (fuse_fit), which names the step
    expected = f"JobError: rule fit_iris (step train), cell {cell}: NonFiniteLossError: training loss became non-finite"
    assert expected in log and expected in proc.stdout  # the profile shows a failed job's log


def test_the_library_refuses_rules_and_specs_beyond_the_data():
    """The same limits without the workflow: a rule asking for more training points than there
    are, and top0, are errors (not a silent 'all of them' or an empty selection)."""
    import numpy as np

    from fragility.study.selection import choose_test_points, select_training_points

    scores = np.arange(10.0)
    for rule in ({"top_k": 11}, {"around_percentile": 50, "k": 11}):
        with pytest.raises(ValueError, match="asks for 11 training points, but there are 10"):
            select_training_points(scores, [rule])
    assert len(select_training_points(scores, [{"top_k": 10}])) == 10
    with pytest.raises(ValueError, match="top0"):
        choose_test_points(scores, ["top0"])


def test_a_script_job_logs_and_names_its_rule_and_cell(tmp_path):
    """runtime.script_job: the rule's log receives the lines, an error is re-raised as a JobError
    naming the rule and the cell (and logged), and a CPU job writes no peak-GPU-memory line."""
    import sys

    from fragility.runtime import JobError, script_job

    wildcards = {"study": "iris", "dataset": "iris", "arch": "mlp-d1-w5", "decay": "0.01", "seed": "0", "chunk": "3"}
    saved = sys.stdout, sys.stderr
    try:
        ok_log = tmp_path / "ok.log"
        with script_job(str(ok_log), 1, "loo_chunk", wildcards, "cpu") as log:
            log("working")
        failed_log = tmp_path / "failed.log"
        with pytest.raises(JobError, match=r"^rule loo_chunk, cell results/iris/iris/mlp-d1-w5/wd0.01/seed0, chunk=3: "
                                           r"ValueError: broken"):
            with script_job(str(failed_log), 1, "loo_chunk", wildcards, "cpu"):
                raise ValueError("broken")
    finally:
        sys.stdout.flush()
        sys.stdout, sys.stderr = saved
    assert "working" in ok_log.read_text() and "peak_gpu_memory_mb" not in ok_log.read_text()
    assert "FAILED rule loo_chunk" in failed_log.read_text()
