"""Correlations with explicit flags instead of silent NaNs.

A correlation is only a number when both sides vary and there are enough points; otherwise
`flag` names the reason (`constant_predicted`, `constant_actual`, `too_few_points`,
`estimator_failed`), and the value is NaN and shown as that name in tables and figures.
"""

from __future__ import annotations

import numpy as np

MIN_POINTS = 3


def correlate(predicted, actual, rtol: float = 1e-12) -> dict:
    """Pearson and Spearman of predicted vs actual, with a flag when they are undefined."""
    p = np.asarray(predicted, dtype=float)
    a = np.asarray(actual, dtype=float)
    from scipy import stats  # imported here: it costs a second at every job start

    out = {"n": int(len(p)), "pearson": np.nan, "spearman": np.nan, "flag": ""}
    if np.isnan(p).any():
        out["flag"] = "estimator_failed"
    elif np.isnan(a).any():
        out["flag"] = "ground_truth_missing"
    elif len(p) < MIN_POINTS:
        out["flag"] = "too_few_points"
    elif np.ptp(p) <= rtol * max(1.0, np.abs(p).max()):
        out["flag"] = "constant_predicted"
    elif np.ptp(a) <= rtol * max(1.0, np.abs(a).max()):
        out["flag"] = "constant_actual"
    else:
        out["pearson"] = float(stats.pearsonr(p, a)[0])
        out["spearman"] = float(stats.spearmanr(p, a)[0])
    return out


def format_value(value: float, flag: str, digits: int = 2) -> str:
    """A table cell: the number, or the flag's name when there is one."""
    if flag:
        return flag
    return f"{value:.{digits}f}"
