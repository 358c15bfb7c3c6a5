"""Correlations with explicit flags instead of silent NaNs, bootstrap intervals and permutation p-values.

A correlation is only a number when both sides vary and there are enough points; otherwise
`flag` names the reason (`constant_predicted`, `constant_actual`, `too_few_points`,
`estimator_failed`, `ground_truth_missing`), and the value is NaN and shown as that name in tables
and figures. A flagged correlation gets no interval and no p-value.

Uncertainty of a correlation r over n pairs (x_i, y_i):

- bootstrap percentile interval: draw B resamples of the n pairs with replacement, compute r*_b on
  each, and report the (α/2, 1 − α/2) quantiles of {r*_b} for confidence 1 − α. A resample whose x
  or y is constant has no correlation; it is left out, and the fraction left out is reported.
  Spearman is Pearson on the ranks of each resample (average ranks for ties), recomputed per resample.
- permutation p-value (two-sided, null: no association): permute x B times,
  p = (1 + #{b : |r_b| ≥ |r|}) / (B + 1), which is never 0 and exact in level.

Everything is vectorised over resamples (and over any leading batch axes) with numpy.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

MIN_POINTS = 3
METHODS = ("pearson", "spearman")
CORRELATION_DEFAULTS = {"resamples": 2000, "permutations": 2000, "confidence": 0.95, "seed": 0}  # config `correlation:`


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1..n) along the last axis, ties sharing their mean rank."""
    from scipy.stats import rankdata  # imported here: scipy costs a second at every job start

    return rankdata(values, axis=-1)


def pearson_rows(x: np.ndarray, y: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Pearson r along the last axis, NaN where x or y is constant (to `rtol` of its scale)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    sxx, syy = (xc * xc).sum(axis=-1), (yc * yc).sum(axis=-1)
    scale_x = np.abs(x).max(axis=-1).clip(min=1.0)
    scale_y = np.abs(y).max(axis=-1).clip(min=1.0)
    n = x.shape[-1]
    degenerate = (sxx <= n * (rtol * scale_x) ** 2) | (syy <= n * (rtol * scale_y) ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=-1) / np.sqrt(sxx * syy)
    return np.where(degenerate, np.nan, np.clip(r, -1.0, 1.0))


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ along the last axis: Pearson of the average ranks."""
    return pearson_rows(_ranks(x), _ranks(y))


ROWS = {"pearson": pearson_rows, "spearman": spearman_rows}


def bootstrap_interval(x, y, resamples: int, confidence: float = 0.95, rng=None) -> dict:
    """Percentile bootstrap intervals of Pearson and Spearman along the last axis of x, y [..., n].

    Returns {method: (lo [...], hi [...])} and `degenerate_fraction` [...] (resamples left out).
    """
    rng = np.random.default_rng(rng)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.shape[-1]
    idx = rng.integers(0, n, size=x.shape[:-1] + (resamples, n))
    xs = np.take_along_axis(x[..., None, :], idx, axis=-1)
    ys = np.take_along_axis(y[..., None, :], idx, axis=-1)
    alpha = 1.0 - confidence
    out = {}
    for method, rows in ROWS.items():
        r = rows(xs, ys)  # [..., B]
        valid = np.isfinite(r)
        enough = valid.sum(axis=-1) >= 2
        filled = np.where(enough[..., None], r, 0.0)  # rows without 2 valid resamples: NaN below
        lo = np.nanquantile(filled, alpha / 2, axis=-1)
        hi = np.nanquantile(filled, 1 - alpha / 2, axis=-1)
        out[method] = (np.where(enough, lo, np.nan), np.where(enough, hi, np.nan))
        if method == "pearson":
            out["degenerate_fraction"] = 1.0 - valid.mean(axis=-1)
    return out


def permutation_pvalue(x, y, permutations: int, rng=None) -> dict:
    """Two-sided permutation p-values of Pearson and Spearman along the last axis of x, y [..., n]."""
    rng = np.random.default_rng(rng)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.shape[-1]
    perm = rng.permuted(np.broadcast_to(np.arange(n), x.shape[:-1] + (permutations, n)), axis=-1)
    out = {}
    for method, prepared in (("pearson", (x, y)), ("spearman", (_ranks(x), _ranks(y)))):
        px, py = prepared
        observed = pearson_rows(px, py)
        shuffled = pearson_rows(np.take_along_axis(px[..., None, :], perm, axis=-1), py[..., None, :])
        # a tolerance so that permutations tying the observed value count as "as extreme"
        extreme = np.abs(shuffled) >= np.abs(observed)[..., None] - 1e-12
        out[method] = np.where(np.isfinite(observed), (1.0 + extreme.sum(axis=-1)) / (permutations + 1.0), np.nan)
    return out


def stream_seed(seed: int, *keys) -> list[int]:
    """A seed for numpy's generator that depends on `seed` and on `keys` (e.g. the cell, test point
    and subset), stable across processes: every correlation gets its own resamples and
    permutations, so the Monte-Carlo errors of different cells are independent."""
    return [int(seed), zlib.crc32("|".join(map(str, keys)).encode())]


def correlate(predicted, actual, rtol: float = 1e-12, resamples: int = 0, permutations: int = 0,
              confidence: float = 0.95, seed: int | list[int] = 0) -> dict:
    """Pearson and Spearman of predicted vs actual, with a flag when they are undefined, and (when
    `resamples`/`permutations` > 0) bootstrap intervals and permutation p-values seeded by `seed`
    (an int or a list of ints, see `stream_seed`)."""
    p = np.asarray(predicted, dtype=float)
    a = np.asarray(actual, dtype=float)
    from scipy import stats  # imported here: it costs a second at every job start

    out = {"n": int(len(p)), "pearson": np.nan, "spearman": np.nan, "flag": "",
           "pearson_lo": np.nan, "pearson_hi": np.nan, "spearman_lo": np.nan, "spearman_hi": np.nan,
           "pearson_p": np.nan, "spearman_p": np.nan, "bootstrap_degenerate_fraction": np.nan,
           "resamples": int(resamples), "permutations": int(permutations), "confidence": float(confidence)}
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
        entropy = [int(v) for v in np.atleast_1d(seed)]
        boot_rng, perm_rng = np.random.default_rng(entropy + [0]), np.random.default_rng(entropy + [1])
        if resamples > 0:
            boot = bootstrap_interval(p, a, int(resamples), confidence, boot_rng)
            for method in METHODS:
                out[f"{method}_lo"], out[f"{method}_hi"] = (float(v) for v in boot[method])
            out["bootstrap_degenerate_fraction"] = float(boot["degenerate_fraction"])
        if permutations > 0:
            pvalues = permutation_pvalue(p, a, int(permutations), perm_rng)
            for method in METHODS:
                out[f"{method}_p"] = float(pvalues[method])
    return out


def without_values(stats: dict) -> dict:
    """`correlate`'s result with every correlation, interval and p-value set to NaN: for a flagged
    cell, whose flag is then the only thing reported."""
    blank = [f"{m}{suffix}" for m in METHODS for suffix in ("", "_lo", "_hi", "_p")] + ["bootstrap_degenerate_fraction"]
    return {**stats, **{key: math.nan for key in blank}}


def format_value(value: float, flag: str, digits: int = 2) -> str:
    """A table cell: the number, or the flag's name when there is one."""
    if flag:
        return flag
    return f"{value:.{digits}f}"


def format_interval(value: float, lo: float, hi: float, flag: str, digits: int = 2) -> str:
    """A table cell with its interval, `0.87 [0.71, 0.95]`; the flag's name when there is one, and
    `0.87 [n/a]` when no interval could be computed (bootstrap disabled or all resamples degenerate)."""
    if flag:
        return flag
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{value:.{digits}f} [n/a]"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def format_mean_spread(mean: float, std: float, n: int, digits: int = 2) -> str:
    """Mean ± standard deviation over n values (`0.61 ± 0.05 (n=3)`); `n/a` when n is 0."""
    if n == 0 or not math.isfinite(mean):
        return "n/a"
    spread = f"{std:.{digits}f}" if math.isfinite(std) else "n/a"
    return f"{mean:.{digits}f} ± {spread} (n={n})"

