"""The ground-truth registry over one re-training function (src/fragility/truths):

- a study that sets only `loo.epochs` runs every truth (LOO and its drift control, PBRF, groups,
  LDS) through the chunk job, each for ceil(epochs · ceil(n / b)) steps, with the numbers of the
  same length given in steps; a truth's own `steps` or `epochs` replaces loo's;
- a new truth is one class and one registry entry: a toy truth that keeps a removed row at weight
  ½ instead of 0 plans, re-trains and is scored through the same functions.
"""

import math

import numpy as np
import pandas as pd
import pytest

from fragility.io import read_json
from fragility.study import pipeline, selection
from fragility.truths import jobs, registry
from fragility.truths.base import Truth, changes

TRAIN = {"optimizer": "sgd", "lr": 0.1, "steps": 200, "batch_size": 32, "check_every": 100}
EPOCHS = 2  # n = 120 training points in batches of 32: 4 minibatches per epoch, 8 steps


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A trained width-3 MLP on Iris with its test points, exact influence, selection and plan."""
    root = tmp_path_factory.mktemp("cell")
    paths = {"data": root / "data.pt", "model": root / "model.pt", "test_points": root / "tp.json",
             "selected": root / "selected.json", "plan": root / "plan.json", "drift_theta": root / "drift_theta.pt"}
    paths = {k: str(v) for k, v in paths.items()}
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, str(root), paths["data"])
    pipeline.train(paths["data"], "mlp-d1-w3", 0.01, 0, TRAIN, "float64", "cpu", paths["model"], root / "metrics.json",
                   log=lambda m: None)
    pipeline.pick_test_points(paths["model"], paths["data"], ["max"], paths["test_points"], "cpu")
    pipeline.compute_influence(paths["model"], paths["data"], paths["test_points"], "exact", {}, 0.01,
                               root / "exact.parquet", root / "exact.json", device_name="cpu", log=lambda m: None)
    selection.select(root / "exact.parquet", [{"top_k": 3}], paths["selected"])
    settings = {"groups": {**registry.get("groups").defaults, "random": 2, "same_class": 1, "tails": 1},
                "lds": {**registry.get("lds").defaults, "subsets": 3}}
    jobs.plan_truths(paths["data"], root / "exact.parquet", settings, ("t", 0), paths["plan"])
    return root, paths


def _run(name, paths, out, settings, loo_cfg, **extra):
    messages = []
    jobs.run_chunk(name, paths, 0, settings, loo_cfg, TRAIN, out, device_name="cpu", order_seed=7919,
                   log=messages.append, **extra)
    steps = [int(m.split(" for ")[1].split()[0]) for m in messages if " for " in m and " steps" in m]
    return pd.read_parquet(out), steps


@pytest.mark.parametrize("name", ["loo", "pbrf", "groups", "lds"])
def test_a_study_with_only_loo_epochs_runs_every_truth(cell, name):
    root, paths = cell
    truth = registry.get(name)
    by_epochs, by_steps = {"epochs": EPOCHS, "chunk_size": 8}, {"steps": 8, "chunk_size": 8}
    if name == "loo":
        registry.get("loo").drift(paths, by_epochs, TRAIN, root / "drift.parquet", paths["drift_theta"],
                                  device_name="cpu", order_seed=7919, log=lambda m: None)
    settings = truth.settings({name: {}}) if name != "loo" else by_epochs
    extra = truth.extra_params({"influence": {"damping": 0.01}}, 0.01)
    table, steps = _run(name, paths, root / f"{name}_epochs.parquet", settings, by_epochs, **extra)
    assert steps == [8]
    assert len(table) and np.isfinite(table.test_loss).all()
    again, _ = _run(name, paths, root / f"{name}_steps.parquet", settings if name != "loo" else by_steps, by_steps,
                    **extra)
    pd.testing.assert_frame_equal(table, again, check_exact=True)  # the same length, the same numbers
    if name != "loo":  # a truth's own length replaces loo's
        for own, expected in (({"epochs": 1}, 4), ({"steps": 3}, 3)):
            _, steps = _run(name, paths, root / f"{name}_own.parquet", {**settings, **own}, by_epochs, **extra)
            assert steps == [expected], (own, steps)


class HalfWeight(Truth):
    """Toy truth: re-train without each selected point's full weight, its row kept at weight ½
    (the objective (1/m)(Σ_{i≠z} ℓ_i + ½ ℓ_z) + (λ/2)‖θ‖²): half a removal, whose change is about
    half of LOO's; scored as Spearman of Δ̂/2 against it."""

    name = "half"
    label = "half"
    removal_weight = 0.5

    def score(self, scoring, table):
        for tp in scoring.points:
            actual = changes(table, "set_id", tp["index"], tp["loss"])
            for name, t in scoring.estimators.items():
                predicted = t[t.test_point == tp["name"]].set_index("train_index").predicted_loss_change / 2
                scoring.scored(name, self.name, "all", tp, predicted.reindex(actual.index).to_numpy(),
                               actual.to_numpy())


def test_a_new_truth_is_one_class_and_one_registry_line(cell, monkeypatch, tmp_path):
    root, paths = cell
    monkeypatch.setitem(registry.TRUTHS, "half", HalfWeight())  # the registry line
    assert registry.enabled({"truths": ["half", "loo"]}) == ["loo", "half"]
    loo_cfg = {"steps": 8, "chunk_size": 8}
    half, _ = _run("half", paths, tmp_path / "half.parquet", {}, loo_cfg)
    loo, _ = _run("loo", {**paths, "drift_theta": ""}, tmp_path / "loo.parquet", loo_cfg, loo_cfg)
    registry.get("loo").drift(paths, loo_cfg, TRAIN, tmp_path / "drift.parquet", tmp_path / "drift_theta.pt",
                              device_name="cpu", order_seed=7919, log=lambda m: None)
    point = read_json(paths["test_points"])["test_points"][0]
    drift = pd.read_parquet(tmp_path / "drift.parquet").test_loss.iloc[0]
    half_change = changes(half, "set_id", point["index"], drift)  # against the no-removal re-training
    loo_change = changes(loo, "removed_index", point["index"], drift).reindex(half_change.index)
    assert (half_change.abs() > 0).all()
    # weight ½ is half a removal: to first order in the (small) removal, half LOO's change
    np.testing.assert_allclose(half_change, loo_change / 2, rtol=0.05)
    frame = jobs.correlate_truths({"study": "s", "seed": 0}, {"exact": root / "exact.parquet"}, paths["test_points"],
                                  root / "metrics.json", tmp_path / "corr.parquet", {"half": [tmp_path / "half.parquet"]},
                                  options={"resamples": 0, "permutations": 0})
    assert list(frame.truth.unique()) == ["half"] and math.isfinite(frame.spearman.iloc[0])
