"""How much of the leave-one-out ground truth is signal: the drift control and repeated re-trainings.

Ground truth for removing z, at test point z_t (θ* the trained model, θ_{-z} re-trained from θ*
without z, θ_drift re-trained from θ* with nothing removed, same steps and minibatch order):

    Δ(z)          = ℓ(z_t; θ_{-z}) − ℓ(z_t; θ*)          (actual_loss_change)
    Δ_vs_drift(z) = ℓ(z_t; θ_{-z}) − ℓ(z_t; θ_drift)     (actual_loss_change_vs_drift)
    drift         = ℓ(z_t; θ_drift) − ℓ(z_t; θ*)          (drift_loss_change), so Δ = Δ_vs_drift + drift.

Noise in that ground truth, per test point and quantity:

- drift noise: |drift|, how far continued training alone moves the quantity (for the parameter
  quantities, ‖θ_drift − θ*‖). Not applicable (NaN) for the `_vs_drift` quantities, which subtract it.
  Reported, but not counted as noise: every copy of a cell shares it (same start, same minibatch
  order), so it shifts Δ(z) alike for every z and cancels in a correlation.
- repeat noise: the first `count` selected points are re-trained again with another minibatch
  order (a different `order_seed`, its own drift control). With d_i = Δ_i(repeat) − Δ_i(original),
  two independent draws of the same quantity, the standard deviation of one re-training is
  σ_repeat = sqrt(Var(d) / 2), centred so that a shift shared by every copy of one run cancels, as
  it does in a correlation. With full-batch gradient descent the order has no effect and
  σ_repeat only measures numerical non-determinism (≈ 0).
- effect: the standard deviation of the quantity over the re-trained points, i.e. the variation a
  correlation tries to explain.
- noise = the repeat noise; signal-to-noise = effect / noise; the flag `noise_exceeds_effect` is
  set when noise ≥ effect. Without repeats the noise is not measured (no flag).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

NOISE_FLAG = "noise_exceeds_effect"

# quantity → (column of the re-trained value, column of the no-removal drift, or None when subtracted)
NOISE_SOURCES = {
    "loss_change": ("actual_loss_change", "drift_loss_change"),
    "loss_change_vs_drift": ("actual_loss_change_vs_drift", None),
    "param_change_norm": ("actual_param_change_norm", "drift_param_change_norm"),
    "param_change_norm_vs_drift": ("actual_param_change_norm_vs_drift", None),
}


def drift_changes(drift: pd.DataFrame, test_index: int, loss_at_optimum: float) -> dict:
    """The no-removal control at one test point: ℓ(θ_drift) − ℓ(θ*) and ‖θ_drift − θ*‖."""
    row = drift[(drift.test_index == test_index) & (drift.removed_index < 0)]
    if len(row) != 1:
        raise ValueError(f"the drift control has {len(row)} rows for test index {test_index}, expected 1")
    return {"drift_loss_change": float(row.test_loss.iloc[0]) - loss_at_optimum,
            "drift_param_change_norm": float(row.param_distance.iloc[0])}


def ground_truth(loo: pd.DataFrame, drift: pd.DataFrame, test_index: int, loss_at_optimum: float) -> pd.DataFrame:
    """Per removed index, the documented ground truth at one test point.

    `loo` and `drift` are LOO chunk and drift tables (truths/loo.py) (removed_index, test_index, test_loss, param_distance,
    param_distance_vs_drift); `drift` holds the no-removal row (removed_index −1); `loss_at_optimum`
    is ℓ(z_t; θ*). Returns a frame indexed by removed_index.
    """
    control = drift_changes(drift, test_index, loss_at_optimum)
    drift_loss = loss_at_optimum + control["drift_loss_change"]
    rows = loo[loo.test_index == test_index].set_index("removed_index")
    return pd.DataFrame({
        "actual_loss_change": rows.test_loss - loss_at_optimum,
        "actual_loss_change_vs_drift": rows.test_loss - drift_loss,
        "actual_param_change_norm": rows.param_distance,
        "actual_param_change_norm_vs_drift": rows.param_distance_vs_drift,
        **control,
    }, index=rows.index)


def repeat_sigma(original, repeated) -> float:
    """σ_repeat = sqrt(Var(d) / 2), d = repeated − original over the finite pairs (centred: a shift
    shared by every copy of one run cancels); NaN with fewer than 2 pairs."""
    d = np.asarray(repeated, float) - np.asarray(original, float)
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.var(d, ddof=1) / 2.0)) if len(d) >= 2 else math.nan


def repeat_spread(original: pd.Series, repeated: pd.Series) -> tuple[float, int]:
    """(σ_repeat, number of pairs) from two runs of the same removals, over the indices both hold
    (`repeat_sigma`); (NaN, 0) when they share none."""
    joined = pd.concat([original.rename("a"), repeated.rename("b")], axis=1, join="inner").dropna()
    if joined.empty:
        return math.nan, 0
    return repeat_sigma(joined.a.to_numpy(), joined.b.to_numpy()), int(len(joined))


def signal_to_noise(effect: float, drift_noise: float, repeat_noise: float) -> dict:
    """The noise is the repeat noise (the drift is reported, not counted: it cancels in a
    correlation); flag when it reaches the effect."""
    out = {"effect": effect, "drift_noise": drift_noise if drift_noise is not None else math.nan,
           "repeat_noise": repeat_noise, "noise": math.nan, "noise_source": "", "signal_to_noise": math.nan,
           "noise_flag": ""}
    if repeat_noise is None or not math.isfinite(repeat_noise) or not math.isfinite(effect):
        return out
    out.update(noise=repeat_noise, noise_source="repeat",
               signal_to_noise=(effect / repeat_noise) if repeat_noise > 0 else math.inf,
               noise_flag=NOISE_FLAG if repeat_noise >= effect else "")
    return out
