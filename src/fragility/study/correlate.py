"""Join the predicted Δ̂ of every estimator with the re-trained ground truth of one cell and
correlate them: one row per (test point, estimator, quantity, subset), with bootstrap intervals,
permutation p-values, the flags and the ground truth's noise (`noise.py`)."""

from __future__ import annotations

import math

import pandas as pd

from ..io import read_json, write_parquet
from ..stats import CORRELATION_DEFAULTS, correlate, stream_seed, without_values
from . import noise

QUANTITIES = {
    "loss_change": ("predicted_loss_change", "actual_loss_change"),
    "loss_change_vs_drift": ("predicted_loss_change", "actual_loss_change_vs_drift"),
    "param_change_norm": ("predicted_param_change_norm", "actual_param_change_norm"),
    "param_change_norm_vs_drift": ("predicted_param_change_norm", "actual_param_change_norm_vs_drift"),
}
LOO_COLUMNS = ["removed_index", "test_index", "test_loss", "param_distance", "param_distance_vs_drift", "final_objective"]


def _repeat_noise(repeat: pd.DataFrame | None, truth: pd.DataFrame, tp: dict) -> dict:
    """σ_repeat per quantity for one test point (NaN when no repeat was run); see noise.py."""
    if repeat is None:
        return {quantity: (math.nan, 0) for quantity in QUANTITIES}
    again = noise.ground_truth(repeat[repeat.removed_index >= 0], repeat[repeat.removed_index < 0], tp["index"], tp["loss"])
    return {quantity: noise.repeat_spread(truth[col], again[col]) for quantity, (col, _) in noise.NOISE_SOURCES.items()}


NAMED_FAILURES = ("unsupported", "factor_decomposition_failed", "failed:")  # statuses a flag names (README)


def named_failure(est: pd.DataFrame) -> str:
    """The estimator's status where it says what could not be computed (`unsupported: derivative
    of <op>`, `factor_decomposition_failed`, `failed: <error>` of an estimator that raised:
    pipeline.compute_influence), for the flag `estimator_failed:<status>`; else ""."""
    statuses = [s for s in dict.fromkeys(est["status"]) if isinstance(s, str) and s.startswith(NAMED_FAILURES)]
    return statuses[0] if statuses else ""


def correlate_cell(cell: dict, influence_paths: dict, test_points_path, selection_path, loo_paths, drift_path,
                   metrics_path, rows_out, correlations_out, repeat_path=None, options: dict | None = None):
    """Join Δ̂ with the re-trained Δ for one cell; one correlation row per (test point, estimator,
    quantity, subset), with bootstrap intervals, permutation p-values (`options`: resamples,
    permutations, confidence, seed) and the ground truth's noise (noise.py; `repeat_path` is the
    `LeaveOneOut.repeat` table (truths/loo.py), or None when no repeat was run)."""
    options = {**CORRELATION_DEFAULTS, **(options or {})}
    points = read_json(test_points_path)["test_points"]
    selection_record = read_json(selection_path)
    selection, not_selected = selection_record["per_test_point"], selection_record.get("not_selected", {})
    metrics = read_json(metrics_path)
    model_flags = [f"model_not_trained:{f}" for f in metrics.get("flags", [])]
    loo = pd.concat([pd.read_parquet(p) for p in loo_paths], ignore_index=True) if loo_paths else pd.DataFrame(columns=LOO_COLUMNS)
    drift = pd.read_parquet(drift_path)
    repeat = pd.read_parquet(repeat_path) if repeat_path else None
    truths = {tp["name"]: noise.ground_truth(loo, drift, tp["index"], tp["loss"]) for tp in points}
    repeat_noise = {tp["name"]: _repeat_noise(repeat, truths[tp["name"]], tp) for tp in points}
    rows, summary = [], []
    for method, path in influence_paths.items():
        table = pd.read_parquet(path)
        for tp in points:
            chosen = selection.get(tp["name"], {})
            est = table[(table.test_point == tp["name"]) & table.train_index.isin([int(i) for i in chosen])]
            truth = truths[tp["name"]].reindex(est.train_index.to_numpy())
            control = noise.drift_changes(drift, tp["index"], tp["loss"])
            frame = est.assign(selection=est.train_index.astype(str).map(chosen), estimator=method,
                               **{col: truth[col].to_numpy() for col in truth.columns if col.startswith("actual_")}, **control)
            rows.append(frame)
            labels = sorted(set(frame.selection))
            subsets = [("all", frame)] + ([(lab, frame[frame.selection == lab]) for lab in labels] if len(labels) > 1 else [])
            for quantity, (pred_col, true_col) in QUANTITIES.items():
                if (quantity.startswith("param_change_norm") and len(est) and frame[pred_col].isna().all()
                        and est["status"].eq("ok").all()):
                    continue  # this estimator does not predict parameter changes
                drift_col = noise.NOISE_SOURCES[quantity][1]
                drift_noise = abs(control[drift_col]) if drift_col else None
                sigma_repeat, n_repeat = repeat_noise[tp["name"]][quantity]
                for subset, part in subsets:
                    # resamples drawn per (cell, test point, subset): independent across cells, shared by
                    # the estimators and quantities of the same points, so that those compare on equal terms
                    stats_ = correlate(part[pred_col], part[true_col], resamples=options["resamples"],
                                       permutations=options["permutations"], confidence=options["confidence"],
                                       seed=stream_seed(options["seed"], *cell.values(), tp["name"], subset))
                    if stats_["flag"] == "estimator_failed" and named_failure(est):
                        stats_["flag"] = f"estimator_failed:{named_failure(est)}"
                    if tp["name"] in not_selected:  # nothing was re-trained for this test point
                        stats_["flag"] = f"selection_failed:{not_selected[tp['name']]}"
                    flag = ";".join(filter(None, model_flags + [stats_["flag"]]))
                    if model_flags:  # a model that did not train gets its flag, never a number
                        stats_ = without_values(stats_)
                    effect = float(part[true_col].std()) if len(part) > 1 else math.nan
                    summary.append({**cell, "test_point": tp["name"], "test_index": tp["index"], "test_loss": tp["loss"],
                                    "estimator": method, "quantity": quantity, "subset": subset, "truth": "loo",
                                    **stats_, "flag": flag,
                                    "drift_loss_change": control["drift_loss_change"], "actual_std": effect,
                                    **noise.signal_to_noise(effect, drift_noise, sigma_repeat), "repeat_n": n_repeat,
                                    "train_accuracy": metrics["train_accuracy"], "test_accuracy": metrics["test_accuracy"]})
    all_rows = pd.concat(rows, ignore_index=True)
    for key, value in cell.items():
        all_rows[key] = value
    write_parquet(all_rows, rows_out)
    write_parquet(pd.DataFrame(summary), correlations_out)
