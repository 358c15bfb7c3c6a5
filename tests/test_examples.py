"""The worked example (examples/): a model and datasets of a user's own, named by file path in the
config, run end to end through Snakemake on tiny settings, classification and regression; the
estimator of one's own (examples/my_estimator.py) is in every table like a built-in one."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflow_files import REPO, copy_workflow

pytestmark = pytest.mark.slow  # a real workflow run

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# the example's two studies, scaled down: one decay, fewer steps and re-trained points
TINY = """
studies:
  cancer:
    decays: [0.01]
    datasets:
      cancer: {loader: "examples/my_data.py:load_breast_cancer", n_points: 120, test_fraction: 0.25}
    test_points: [max]
    train: {steps: 1500}
    influence: {methods: {cg: null}}   # exact and Gauss-Newton only
    select: {rules: [{top_k: 12}]}
    loo: {steps: 600, chunk_size: 12}
    correlation: {resamples: 200, permutations: 200}
  diabetes:
    decays: [0.01]
    architectures: [mlp-d0-w0]
    test_points: [max]
    train: {steps: 1500, lr: 0.1}
    select: {rules: [{top_k: 12}]}
    loo: {steps: 1500, chunk_size: 12}
    correlation: {resamples: 200, permutations: 200}
"""


def test_the_example_runs_end_to_end(tmp_path):
    work = copy_workflow(tmp_path / "work", overlays={"example_tiny.yaml": TINY})
    import shutil

    shutil.copytree(REPO / "examples", work / "examples")
    cmd = [SNAKEMAKE, "--cores", "2", "--configfile", "examples/audit.yaml", "configs/example_tiny.yaml"]
    proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not (work / "results" / "iris").exists()  # the example runs only its own studies

    cancer = pd.read_csv(work / "results" / "cancer" / "summary.csv")
    assert set(cancer.arch) == {"tanhnet", "mlp-d0-w0"} and set(cancer.estimator) == {"exact", "gauss_newton", "last_layer"}
    training = pd.read_csv(work / "results" / "cancer" / "training.csv")
    assert (training.task == "cross_entropy").all() and (training.train_accuracy > 0.9).all()

    diabetes = pd.read_parquet(work / "results" / "diabetes" / "correlations.parquet")
    metrics = pd.read_csv(work / "results" / "diabetes" / "training.csv")
    assert (metrics.task == "mse").all() and (metrics.train_explained_variance > 0.4).all()
    # least squares is convex: influence and re-training agree
    convex = diabetes[(diabetes.quantity == "loss_change") & (diabetes.subset == "all") & (diabetes.estimator == "exact")]
    assert len(convex) == 1 and (convex.pearson > 0.95).all() and (convex.spearman > 0.9).all(), convex

    assert set(pd.read_csv(work / "results" / "cancer" / "estimators.csv").estimator) >= {"exact", "last_layer"}
    diagnostics = pd.read_csv(work / "results" / "diabetes" / "influence_diagnostics.csv")
    assert (diagnostics[diagnostics.estimator == "last_layer"].statuses == "ok").all()
    assert set(diabetes.estimator) == {"exact", "gauss_newton", "last_layer"}

    figures = work / "results" / "cancer" / "figures" / "overview"
    assert (figures / "correlation_by_test_point.png").stat().st_size > 0
    assert (figures / "predicted_vs_actual.png").exists() and (figures / "estimator_comparison.png").exists()
    assert not (figures / "correlation_vs_depth.png").exists()  # nothing to sweep: not drawn
