"""The linear datamodeling score (Park et al., 2023). M subsets S_m keep a fraction α of the
training set; each is re-trained (from θ*, or from the cell's initialisation with the original
training: `start: scratch`, the published protocol); per test point LDS = Spearman over m between
the predicted change Σ_{i∉S_m} Δ̂(i) (the points the subset leaves out) and the measured change
ℓ(z_t; θ_{S_m}) − ℓ(z_t; θ*). Both sides are changes of the test loss on removing the left-out
points, so a correct estimator scores +1. Reported: the mean over test points, with a bootstrap
interval resampling subsets (the same resamples for every test point)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..stats import spearman_rows, stream_seed
from .base import Truth, changes


def draw_subsets(n: int, cfg: dict, rng: np.random.Generator) -> list[list[int]]:
    """M subsets keeping round(α n) training points each; returned as the indices each leaves out."""
    keep = int(round(float(cfg["fraction"]) * n))
    if not 1 <= keep < n:
        raise ValueError(f"lds.fraction {cfg['fraction']} keeps {keep} of {n} training points")
    return [sorted(rng.permutation(n)[keep:].tolist()) for _ in range(int(cfg["subsets"]))]


def lds_score(predicted: np.ndarray, actual: np.ndarray, resamples: int = 2000, confidence: float = 0.95,
              seed=0) -> dict:
    """LDS of predicted vs actual changes, both [T, M] (test points × subsets): per test point
    Spearman over subsets, their mean, and a percentile bootstrap interval of the mean that
    resamples the M subsets with replacement (one draw shared by the T test points)."""
    predicted, actual = np.atleast_2d(np.asarray(predicted, float)), np.atleast_2d(np.asarray(actual, float))
    per_point = spearman_rows(predicted, actual)
    mean = float(np.nanmean(per_point)) if np.isfinite(per_point).any() else math.nan
    out = {"per_point": per_point, "lds": mean, "lds_lo": math.nan, "lds_hi": math.nan, "n_subsets": predicted.shape[1]}
    if resamples > 0 and math.isfinite(mean):
        rng = np.random.default_rng(seed)
        m = predicted.shape[1]
        values = np.empty(resamples)
        for start in range(0, resamples, 200):  # [T, b, M] at a time
            idx = rng.integers(0, m, size=(min(200, resamples - start), m))
            r = spearman_rows(predicted[:, idx], actual[:, idx])  # [T, b]
            values[start : start + len(idx)] = np.nanmean(r, axis=0)
        alpha = 1 - confidence
        out["lds_lo"], out["lds_hi"] = (float(v) for v in np.nanquantile(values, [alpha / 2, 1 - alpha / 2]))
    return out


class Lds(Truth):
    name = "lds"
    label = "LDS"
    title = "LDS (mean over test points)"
    planned = True
    mean_over_points = True  # its headline row is test point `mean`, a Spearman (no Pearson)
    # start: theta_star (warm start for `steps`/`epochs`, default loo's, with loo's settings) or
    # scratch (the original training settings from the cell's seeded initialisation)
    defaults = {"subsets": 100, "fraction": 0.5, "seed": 0, "chunk_size": 25, "start": "theta_star"}
    draw_keys = ("subsets", "fraction", "seed")
    inputs = {"plan": "truths/plan.json"}

    def check(self, settings: dict) -> None:
        if not 0 < float(settings["fraction"]) < 1:
            raise ValueError(f"lds.fraction must be in (0, 1), got {settings['fraction']}")
        if settings["start"] not in ("theta_star", "scratch"):
            raise ValueError(f"lds.start must be theta_star or scratch, got '{settings['start']}'")

    def draw(self, influence: dict, labels: np.ndarray, settings: dict, rng: np.random.Generator):
        return {"fraction": float(settings["fraction"]), "left_out": draw_subsets(len(labels), settings, rng)}

    def sets(self, inputs: dict, settings: dict) -> list[tuple[int, list[int]]]:
        return list(enumerate(inputs["plan"].get(self.name, {}).get("left_out", [])))

    def score(self, scoring, table: pd.DataFrame) -> None:
        options, points = scoring.options, scoring.points
        left_out = scoring.plan[self.name]["left_out"]
        actual = np.stack([changes(table, "set_id", tp["index"], tp["loss"]).reindex(range(len(left_out))).to_numpy()
                           for tp in points])
        for name, t in scoring.estimators.items():
            scores = np.stack([t[t.test_point == tp["name"]].sort_values("train_index").predicted_loss_change.to_numpy(float)
                               for tp in points])
            predicted = np.stack([scores[:, idx].sum(axis=1) for idx in left_out], axis=1)  # [T, M]
            for t_, tp in enumerate(points):
                scoring.scored(name, self.name, "all", tp, predicted[t_], actual[t_])
            failed = np.isnan(predicted).any(axis=1) | np.isnan(actual).any(axis=1)
            result = lds_score(predicted[~failed], actual[~failed], resamples=options["resamples"],
                               confidence=options["confidence"],
                               seed=stream_seed(options["seed"], *scoring.cell.values(), "lds"))
            stats_ = {"n": int(len(left_out)), "pearson": math.nan, "spearman": result["lds"],
                      "spearman_lo": result["lds_lo"], "spearman_hi": result["lds_hi"],
                      "pearson_lo": math.nan, "pearson_hi": math.nan, "pearson_p": math.nan, "spearman_p": math.nan,
                      "resamples": int(options["resamples"]), "permutations": 0,
                      "confidence": float(options["confidence"]), "bootstrap_degenerate_fraction": math.nan,
                      "flag": "" if math.isfinite(result["lds"]) else ("estimator_failed" if failed.all() else
                                                                        "constant_actual"),
                      "test_points_used": int((~failed).sum())}
            scoring.row({"name": "mean", "index": -1, "loss": math.nan}, name, self.name, "all", stats_)
