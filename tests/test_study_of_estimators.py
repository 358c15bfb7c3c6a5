"""One Snakemake run of the shipped `configs/tiny_ensembles.yaml` (two of its seeds here), with a
user's estimator that raises added: what this round's estimators and selection do in a study.

- `ensemble` of exact is, at seed 0, the mean of exact on seed 0's and seed 1's models at seed
  0's test points (recomputed here in-process); `trak` over seeds reads the other seed's model.
- `select.by: union` takes turns over the estimators that scored a test point (the failed one
  left out), plus `select.random`'s sample, re-trained and correlated as its own subset; groups'
  tail groups come from the union of the estimators' tails.
- The raising estimator is a flagged row (`estimator_failed:failed: KeyError ...`, verdict
  "estimator failed"), and the study's tables, verdict and report are still written.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fragility.estimators import registry
from fragility.estimators.base import Context
from fragility.io import read_json
from fragility.study import pipeline, selection, verdict
from fragility.truths.groups import tail_pools
from workflow_files import copy_workflow

RAISES = textwrap.dedent('''
    from fragility.estimators.base import Estimator


    class Raises(Estimator):
        """Fails inside fit, as a user's estimator with a bug does."""

        def fit(self, context):
            super().fit(context)
            return {}["no such key"]
''')

OVERLAY = """
studies:
  iris:
    seeds: [0, 1]
    influence:
      methods:
        broken: {method: "broken.py:Raises"}
    loo: {steps: 60}
    correlation: {resamples: 100, permutations: 100}
"""


@pytest.mark.slow
def test_ensembles_a_fair_selection_and_a_failing_estimator_in_one_study(tmp_path):
    work = copy_workflow(tmp_path / "work", overlays={"two_seeds.yaml": OVERLAY})
    (work / "broken.py").write_text(RAISES)
    cmd = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", "iris", "--configfile",
           "configs/tiny.yaml", "configs/tiny_ensembles.yaml", "configs/two_seeds.yaml"]
    proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    study = work / "results" / "iris"
    cells = [work / f"results/iris/iris/mlp-d2-w5/wd0/seed{s}" for s in (0, 1)]

    # the tables: every estimator, the failing one flagged by name, never a number
    summary = pd.read_csv(study / "summary.csv")
    assert set(summary.estimator) == {"exact", "identity", "exact_ensemble", "trak_seeds", "broken"}
    loss = summary[(summary.quantity == "loss_change") & (summary.subset == "all")]
    broken = loss[loss.estimator == "broken"]
    assert len(broken) == len(loss[loss.estimator == "exact"]) > 0 and broken.flag.str.startswith("estimator_failed:failed: KeyError").all()
    assert broken.pearson.str.startswith("estimator_failed").all()
    verdicts = pd.read_csv(study / "verdict.csv")
    assert (verdicts[verdicts.estimator == "broken"].verdict == verdict.FAILED).all()
    assert (study / "report" / "index.html").stat().st_size > 0
    assert "Traceback" in read_json(cells[0] / "influence" / "broken.json")["traceback"]

    # the ensemble of exact at seed 0: the mean of exact on both seeds' models at seed 0's test points
    points = read_json(cells[0] / "test_points.json")["test_points"]
    damping = read_json(cells[0] / "influence" / "exact.json")["damping"]
    split = pipeline.Split.load(str(work / "results/iris/iris/data.pt"))
    net, theta, record = pipeline.load_trained(str(cells[1] / "model.pt"))
    x, y, xt, yt = pipeline._tensors(split, theta.dtype, torch.device("cpu"))
    other = registry.make_estimator("exact", {}).fit(Context(net, theta, x, y, xt, yt, decay=record["decay"],
                                                             damping=damping)).scores(points).predicted_loss_change
    ensemble = pd.read_parquet(cells[0] / "influence" / "exact_ensemble.parquet")
    own = pd.read_parquet(cells[0] / "influence" / "exact.parquet")
    for t, point in enumerate(points):
        rows, mine = ensemble[ensemble.test_point == point["name"]], own[own.test_point == point["name"]]
        expected = (mine.predicted_loss_change.to_numpy() + other[t].numpy()) / 2
        np.testing.assert_allclose(rows.predicted_loss_change.to_numpy(), expected, rtol=1e-8, atol=1e-14)
    assert [m["model"] for m in read_json(cells[0] / "influence" / "exact_ensemble.json")["members"]] == ["θ*", "seed 1"]
    assert read_json(cells[1] / "influence" / "trak_seeds.json")["models"] == ["θ*", "seed 0"]

    # the fair selection: the union over the estimators that scored a point, and the random sample
    chosen = read_json(cells[0] / "selected.json")
    assert chosen["by"] == "union" and chosen["random"] == {"k": 8, "seed": 0}
    assert set(chosen["left_out"]) == {point["name"] for point in points}  # broken, at every test point
    assert all(set(left) == {"broken"} for left in chosen["left_out"].values())
    sample = selection.random_training_points(len(y), 8, 0)
    for point in points:
        labels = chosen["per_test_point"][point["name"]]
        assert {int(i) for i, label in labels.items() if label == "random"} == set(sample)
        assert sum(label == "union" for label in labels.values()) >= 12 - 8  # the rules' 12, less the overlap
    correlations = pd.read_parquet(cells[0] / "correlations.parquet")
    assert {"random", "union"} <= set(correlations.subset)
    assert (correlations[correlations.subset == "random"].n == 8).all()
    tables = {name: pd.read_parquet(cells[0] / f"influence/{name}.parquet")  # in the plan's order
              for name in chosen["estimators"] if name != "broken"}
    tails = [g for g in read_json(cells[0] / "truths/plan.json")["groups"] if g["kind"].startswith("tails")]
    assert tails
    for group in tails:
        scores = {name: t[t.test_point == group["test_point"]].sort_values("train_index").predicted_loss_change.to_numpy()
                  for name, t in tables.items()}
        pools = tail_pools(scores, round(0.15 * len(y)))
        assert set(group["indices"]) <= set(pools[group["kind"] == "tails_negative"].tolist())
