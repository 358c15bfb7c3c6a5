"""The ground truth and its noise: the drift-control difference, repeated re-trainings, the flag."""

import math

import numpy as np
import pandas as pd
import pytest

from fragility.study import correlate, noise, pipeline, selection
from fragility.io import read_json, write_json
from fragility.truths.registry import get

loo = get("loo")


def loo_table(removed, test_index, losses, distances, to_drift):
    return pd.DataFrame({"removed_index": removed, "test_index": test_index, "test_loss": losses,
                         "param_distance": distances, "param_distance_vs_drift": to_drift, "final_objective": 0.1})


def test_drift_control_difference_is_computed_as_documented():
    """Δ = ℓ(θ_{-z}) − ℓ(θ*), Δ_vs_drift = ℓ(θ_{-z}) − ℓ(θ_drift), and Δ = Δ_vs_drift + drift."""
    loss_star, drift_loss = 1.0, 1.25
    loo = pd.concat([loo_table([3, 7], 5, [1.5, 0.75], [0.2, 0.3], [0.05, 0.06]),
                     loo_table([3, 7], 9, [9.0, 9.0], [0.2, 0.3], [0.05, 0.06])])
    drift = pd.concat([loo_table([-1], 5, [drift_loss], [0.4], [np.nan]), loo_table([-1], 9, [2.0], [0.4], [np.nan])])
    truth = noise.ground_truth(loo, drift, test_index=5, loss_at_optimum=loss_star)
    assert list(truth.index) == [3, 7]
    assert truth.actual_loss_change.tolist() == [0.5, -0.25]
    assert truth.actual_loss_change_vs_drift.tolist() == [1.5 - drift_loss, 0.75 - drift_loss]
    assert np.allclose(truth.actual_loss_change, truth.actual_loss_change_vs_drift + truth.drift_loss_change)
    assert truth.drift_loss_change.unique().tolist() == [drift_loss - loss_star]
    assert truth.drift_param_change_norm.unique().tolist() == [0.4]
    assert truth.actual_param_change_norm_vs_drift.tolist() == [0.05, 0.06]


def test_drift_control_must_be_unique():
    drift = loo_table([-1, -1], 5, [1.0, 1.1], [0.1, 0.1], [np.nan, np.nan])
    with pytest.raises(ValueError, match="2 rows"):
        noise.drift_changes(drift, 5, 1.0)


def test_repeat_spread_estimates_the_noise_of_one_retraining():
    rng = np.random.default_rng(0)
    signal = pd.Series(rng.standard_normal(4000))
    sigma = 0.3
    first = signal + sigma * rng.standard_normal(4000)
    second = (signal + 1.7 + sigma * rng.standard_normal(4000)).iloc[:3000]  # some points, a shared shift
    estimate, n = noise.repeat_spread(first, second)
    assert n == 3000 and estimate == pytest.approx(sigma, rel=0.05)  # the shared shift cancels
    assert noise.repeat_spread(first, first) == (0.0, 4000)
    assert noise.repeat_spread(pd.Series([1.0], index=[1]), pd.Series([1.0], index=[2]))[1] == 0


@pytest.mark.parametrize("effect, drift, repeat, source, flag", [
    (1.0, 0.2, 0.1, "repeat", ""),
    (1.0, 0.2, 1.5, "repeat", noise.NOISE_FLAG),
    (0.1, 0.1, 0.1, "repeat", noise.NOISE_FLAG),        # noise == effect is flagged
    (0.1, 5.0, 0.01, "repeat", ""),                     # a drift larger than the effect is not noise
    (0.5, None, 0.05, "repeat", ""),                    # a _vs_drift quantity: drift subtracted
])
def test_signal_to_noise_and_flag(effect, drift, repeat, source, flag):
    out = noise.signal_to_noise(effect, drift, repeat)
    assert out["noise_source"] == source and out["noise_flag"] == flag
    assert out["noise"] == repeat and out["signal_to_noise"] == pytest.approx(effect / repeat)
    assert out["drift_noise"] == (drift if drift is not None else pytest.approx(math.nan, nan_ok=True))


def test_without_repeats_the_noise_is_not_measured():
    out = noise.signal_to_noise(0.1, 5.0, math.nan)
    assert out["noise_flag"] == "" and math.isnan(out["noise"]) and out["drift_noise"] == 5.0


def test_no_noise_estimate_gives_no_flag():
    out = noise.signal_to_noise(1.0, None, math.nan)
    assert out["noise_flag"] == "" and math.isnan(out["signal_to_noise"])


# --------------------------------------------------------------------------- on real re-trainings
@pytest.fixture(scope="module")
def tiny_cell(tmp_path_factory):
    """A trained width-3 MLP on Iris, its influence, selection, LOO chunk and drift control."""
    root = tmp_path_factory.mktemp("cell")
    paths = {name: str(root / name) for name in ("data.pt", "model.pt", "metrics.json", "tp.json", "exact.parquet",
                                                 "exact.json", "selected.json", "chunk.parquet", "drift.parquet",
                                                 "drift_theta.pt")}
    train_cfg = {"optimizer": "sgd", "lr": 0.1, "steps": 200, "batch_size": 32, "check_every": 100}
    loo_cfg = {"steps": 40, "chunk_size": 8}
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, "data", paths["data.pt"])
    pipeline.train(paths["data.pt"], "mlp-d1-w3", 0.01, 0, train_cfg, "float64", "cpu", paths["model.pt"],
                   paths["metrics.json"], log=lambda m: None)
    pipeline.pick_test_points(paths["model.pt"], paths["data.pt"], ["max"], paths["tp.json"], "cpu")
    pipeline.compute_influence(paths["model.pt"], paths["data.pt"], paths["tp.json"], "exact", {}, 0.01,
                               paths["exact.parquet"], paths["exact.json"], device_name="cpu", log=lambda m: None)
    selection.select(paths["exact.parquet"], [{"top_k": 8}], paths["selected.json"])
    removed = read_json(paths["selected.json"])["indices"]
    common = dict(device_name="cpu", order_seed=3, log=lambda m: None)
    cell = {"model": paths["model.pt"], "data": paths["data.pt"], "test_points": paths["tp.json"],
            "drift_theta": paths["drift_theta.pt"]}
    loo.drift(cell, loo_cfg, train_cfg, paths["drift.parquet"], paths["drift_theta.pt"], **common)
    loo.retrain_chunk(cell, [(i, [i]) for i in removed], loo_cfg, loo_cfg, train_cfg, paths["chunk.parquet"], **common)
    return root, paths, train_cfg, loo_cfg


def _correlate(paths, root, repeat=None):
    out = (str(root / "rows.parquet"), str(root / "corr.parquet"))
    correlate.correlate_cell({"arch": "mlp-d1-w3", "seed": 0}, {"exact": paths["exact.parquet"]}, paths["tp.json"],
                            paths["selected.json"], [paths["chunk.parquet"]], paths["drift.parquet"], paths["metrics.json"],
                            *out, repeat_path=repeat, options={"resamples": 200, "permutations": 200})
    return pd.read_parquet(out[0]), pd.read_parquet(out[1])


def test_correlate_cell_uses_the_drift_control_and_reports_noise(tiny_cell):
    root, paths, train_cfg, loo_cfg = tiny_cell
    rows, corr = _correlate(paths, root)
    point = read_json(paths["tp.json"])["test_points"][0]
    chunk = pd.read_parquet(paths["chunk.parquet"]).set_index("removed_index")
    drift_loss = float(pd.read_parquet(paths["drift.parquet"]).test_loss.iloc[0])
    assert np.allclose(rows.actual_loss_change_vs_drift, chunk.loc[rows.train_index, "test_loss"].to_numpy() - drift_loss)
    assert np.allclose(rows.actual_loss_change, chunk.loc[rows.train_index, "test_loss"].to_numpy() - point["loss"])
    loss = corr[(corr.quantity == "loss_change") & (corr.subset == "all")].iloc[0]
    assert loss.flag == "" and loss.pearson_lo <= loss.pearson <= loss.pearson_hi and 0 < loss.pearson_p <= 1
    assert loss.drift_noise == pytest.approx(abs(drift_loss - point["loss"]))
    assert loss.effect == pytest.approx(rows.actual_loss_change.std())
    assert math.isnan(loss.repeat_noise) and loss.repeat_n == 0
    # the drift is shared by every copy and cancels in a correlation: reported, never the noise
    assert loss.noise_flag == "" and math.isnan(loss.noise)


def test_a_test_point_without_selection_is_flagged_by_name(tiny_cell, tmp_path):
    """When the selecting estimator failed for a test point, nothing was re-trained for it: every
    correlation of that point carries `selection_failed:<status>`, never a number."""
    root, paths, _, _ = tiny_cell
    record = read_json(paths["selected.json"])
    name = read_json(paths["tp.json"])["test_points"][0]["name"]
    failed = {**paths, "selected.json": str(tmp_path / "selected.json")}
    write_json({**record, "indices": [], "per_test_point": {name: {}}, "not_selected": {name: "diverged"}},
               failed["selected.json"])
    out = (str(tmp_path / "rows.parquet"), str(tmp_path / "corr.parquet"))
    correlate.correlate_cell({"arch": "mlp-d1-w3", "seed": 0}, {"exact": paths["exact.parquet"]}, paths["tp.json"],
                            failed["selected.json"], [], paths["drift.parquet"], paths["metrics.json"], *out,
                            options={"resamples": 50, "permutations": 50})
    corr = pd.read_parquet(out[1])
    assert len(corr) > 0 and (corr.flag == "selection_failed:diverged").all()
    assert corr.pearson.isna().all() and corr.spearman.isna().all()
    assert {"loss_change", "param_change_norm"} <= set(corr.quantity)  # flagged, not dropped


def test_a_random_sample_gets_its_own_correlation_subset(tiny_cell, tmp_path):
    """Points labelled `random` in selected.json (select.random) are correlated on their own too,
    next to `all` and the rules' labels, with the same rows as a direct computation."""
    root, paths, _, _ = tiny_cell
    record = read_json(paths["selected.json"])
    name = read_json(paths["tp.json"])["test_points"][0]["name"]
    chosen = sorted(record["per_test_point"][name], key=int)
    sample = chosen[::2]
    labelled = {**paths, "selected.json": str(tmp_path / "selected.json")}
    write_json({**record, "per_test_point": {name: {i: "random" if i in sample else "top" for i in chosen}}},
               labelled["selected.json"])
    rows, corr = _correlate(labelled, tmp_path)
    loss = corr[(corr.quantity == "loss_change") & (corr.estimator == "exact")].set_index("subset")
    assert set(loss.index) == {"all", "random", "top"}
    part = rows[rows.selection == "random"]
    assert sorted(part.train_index.astype(str)) == sorted(sample)
    assert loss.loc["random", "pearson"] == pytest.approx(np.corrcoef(part.predicted_loss_change,
                                                                      part.actual_loss_change)[0, 1])


def test_a_model_that_did_not_train_is_reported_by_its_flag_only(tiny_cell, tmp_path):
    root, paths, _, _ = tiny_cell
    metrics = read_json(paths["metrics.json"])
    collapsed = str(tmp_path / "metrics.json")
    write_json({**metrics, "flags": ["constant_outputs"]}, collapsed)
    out = (str(tmp_path / "rows.parquet"), str(tmp_path / "corr.parquet"))
    correlate.correlate_cell({"arch": "mlp-d1-w3", "seed": 0}, {"exact": paths["exact.parquet"]}, paths["tp.json"],
                            paths["selected.json"], [paths["chunk.parquet"]], paths["drift.parquet"], collapsed, *out,
                            options={"resamples": 50, "permutations": 50})
    corr = pd.read_parquet(out[1])
    assert len(corr) > 0 and corr.flag.str.startswith("model_not_trained:constant_outputs").all()
    numbers = [f"{m}{s}" for m in ("pearson", "spearman") for s in ("", "_lo", "_hi", "_p")]
    assert corr[numbers].isna().all().all()


def test_repeat_with_another_minibatch_order_measures_noise(tiny_cell):
    root, paths, train_cfg, loo_cfg = tiny_cell
    kwargs = dict(device_name="cpu", log=lambda m: None)
    same = str(root / "repeat_same.parquet")
    other = str(root / "repeat_other.parquet")
    cell = {"model": paths["model.pt"], "data": paths["data.pt"], "test_points": paths["tp.json"],
            "selected": paths["selected.json"]}
    loo.repeat(cell, 3, loo_cfg, train_cfg, same, order_seed=3, **kwargs)
    _, indices = loo.repeat(cell, 3, loo_cfg, train_cfg, other, order_seed=4, **kwargs)
    assert indices == read_json(paths["selected.json"])["indices"][:3]
    assert sorted(pd.read_parquet(other).removed_index) == [-1] + indices
    _, corr_same = _correlate(paths, root, same)
    _, corr_other = _correlate(paths, root, other)
    pick = lambda c: c[(c.quantity == "loss_change") & (c.subset == "all")].iloc[0]  # noqa: E731
    assert pick(corr_same).repeat_n == 3 and pick(corr_same).repeat_noise == pytest.approx(0.0, abs=1e-12)
    assert pick(corr_other).repeat_noise > 1e-6  # another minibatch order moves the re-trained loss
    assert not list(root.glob(".repeat_*"))


def test_the_verdict_reads_a_real_cell_with_repeats(tiny_cell, tmp_path):
    """On real re-trainings (minibatch SGD): the verdict's σ_repeat is the centred spread of the
    repeat against the original (the same as summary.csv's repeat noise), the ceiling follows from it,
    and the flagged variants of the cell read as words, never numbers."""
    from fragility.study import verdict

    root, paths, train_cfg, loo_cfg = tiny_cell
    other = str(tmp_path / "repeat.parquet")
    cell = {"model": paths["model.pt"], "data": paths["data.pt"], "test_points": paths["tp.json"],
            "selected": paths["selected.json"]}
    get("loo").repeat(cell, 4, loo_cfg, train_cfg, other, order_seed=5, device_name="cpu", log=lambda m: None)
    rows, corr = _correlate(paths, root, other)
    keys = {"study": "s", "dataset": "iris", "decay": 0.01}
    rows, corr = rows.assign(**keys), corr.assign(**keys)
    cell = {**keys, "arch": "mlp-d1-w3", "seed": 0}
    measured = verdict.repeat_noise(rows, [(cell, pd.read_parquet(other))])
    sigma = float(measured.sigma_repeat.iloc[0])
    assert measured.repeat_n.iloc[0] == 4 and 0 < sigma
    loss = corr[(corr.quantity == "loss_change") & (corr.subset == "all")].iloc[0]
    assert sigma == pytest.approx(loss.repeat_noise, rel=1e-9)  # one centred σ, in the verdict and the summary
    row = verdict.verdict_table(corr, rows, measured).iloc[0]
    assert row.sigma_repeat == sigma and row.ceiling == pytest.approx(verdict.ceiling(sigma, loss.actual_std))
    assert row.verdict in verdict.WORDS and row.repeat_n == 4 and row.selection == "top 8"
    flagged = corr.assign(flag="model_not_trained:constant_outputs")
    assert (verdict.verdict_table(flagged, rows, measured).verdict == verdict.NOT_TRAINED).all()
