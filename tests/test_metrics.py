"""Correlation flags, bootstrap interval coverage and permutation p-values on synthetic data."""

import math

import numpy as np
import pytest
from scipy import stats

from fragility.stats import bootstrap_interval, correlate, format_interval, format_mean_spread, format_value, pearson_rows, permutation_pvalue, spearman_rows

REPLICATIONS, RESAMPLES, N = 200, 200, 40


def bivariate_normal(rho: float, replications: int, n: int, seed: int):
    """`replications` samples of n pairs from a standard bivariate normal with correlation rho."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((replications, n))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((replications, n))
    return x, y


def test_vectorised_correlations_match_scipy():
    x, y = bivariate_normal(0.4, 5, 25, seed=1)
    y[0, :5] = y[0, 0]  # ties
    for row in range(5):
        assert pearson_rows(x, y)[row] == pytest.approx(stats.pearsonr(x[row], y[row])[0], abs=1e-12)
        assert spearman_rows(x, y)[row] == pytest.approx(stats.spearmanr(x[row], y[row])[0], abs=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_bootstrap_interval_covers_true_correlation_at_nominal_rate(rho):
    """95% percentile intervals over 200 synthetic data sets with known ρ cover it ~95% of the time
    (binomial sd ≈ 1.5%; the percentile bootstrap runs slightly below nominal at n = 40)."""
    x, y = bivariate_normal(rho, REPLICATIONS, N, seed=7)
    boot = bootstrap_interval(x, y, RESAMPLES, confidence=0.95, rng=11)
    true = {"pearson": rho, "spearman": 6 / math.pi * math.asin(rho / 2)}  # Spearman's ρ of a bivariate normal
    for method, value in true.items():
        lo, hi = boot[method]
        assert lo.shape == (REPLICATIONS,) and np.all(lo <= hi)
        coverage = np.mean((lo <= value) & (value <= hi))
        assert 0.88 <= coverage <= 0.99, f"{method} coverage {coverage:.3f} at rho={rho}"
    assert np.all(boot["degenerate_fraction"] == 0)


def test_bootstrap_interval_narrows_with_confidence_and_is_reproducible():
    x, y = bivariate_normal(0.5, 1, 60, seed=3)
    wide = bootstrap_interval(x[0], y[0], 500, 0.95, rng=5)
    narrow = bootstrap_interval(x[0], y[0], 500, 0.5, rng=5)
    again = bootstrap_interval(x[0], y[0], 500, 0.95, rng=5)
    for method in ("pearson", "spearman"):
        assert narrow[method][0] > wide[method][0] and narrow[method][1] < wide[method][1]
        assert again[method] == wide[method]


def test_permutation_pvalue_uniform_under_null_and_small_under_alternative():
    x, y = bivariate_normal(0.0, REPLICATIONS, 30, seed=21)
    null = permutation_pvalue(x, y, RESAMPLES, rng=4)
    for method in ("pearson", "spearman"):
        p = null[method]
        assert np.all((p > 0) & (p <= 1))
        assert 0.01 <= np.mean(p <= 0.05) <= 0.10  # ≈ the 5% level
        assert 0.4 <= np.median(p) <= 0.6
    x, y = bivariate_normal(0.8, 20, 30, seed=22)
    alternative = permutation_pvalue(x, y, RESAMPLES, rng=4)
    for method in ("pearson", "spearman"):
        assert np.all(alternative[method] == pytest.approx(1 / (RESAMPLES + 1)))


def test_correlate_reports_intervals_and_pvalues():
    x, y = bivariate_normal(0.7, 1, 40, seed=2)
    out = correlate(x[0], y[0], resamples=300, permutations=300, seed=1)
    assert out["flag"] == ""
    for method in ("pearson", "spearman"):
        assert out[f"{method}_lo"] <= out[method] <= out[f"{method}_hi"]
        assert 0 < out[f"{method}_p"] < 0.01
    assert out == correlate(x[0], y[0], resamples=300, permutations=300, seed=1)
    assert out["pearson_lo"] != correlate(x[0], y[0], resamples=300, permutations=300, seed=2)["pearson_lo"]


def test_correlate_without_resampling_leaves_intervals_empty():
    out = correlate([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0])
    assert out["pearson"] == pytest.approx(stats.pearsonr([1, 2, 3, 4], [1, 3, 2, 5])[0])
    assert math.isnan(out["pearson_lo"]) and math.isnan(out["spearman_p"])


@pytest.mark.parametrize("predicted, actual, flag", [
    ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "constant_predicted"),
    ([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], "constant_actual"),
    ([1.0, 2.0], [1.0, 2.0], "too_few_points"),
    ([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], "estimator_failed"),
    ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, np.nan, 4.0], "ground_truth_missing"),
])
def test_degenerate_cases_keep_their_flag_and_get_no_interval(predicted, actual, flag):
    out = correlate(predicted, actual, resamples=100, permutations=100)
    assert out["flag"] == flag
    for key in ("pearson", "spearman", "pearson_lo", "pearson_hi", "spearman_lo", "spearman_hi", "pearson_p", "spearman_p"):
        assert math.isnan(out[key])
    assert format_interval(out["pearson"], out["pearson_lo"], out["pearson_hi"], out["flag"]) == flag


def test_resamples_that_are_constant_are_left_out_and_counted():
    # 3 distinct points: a resample draws one point only 3 times in 27
    out = correlate([0.0, 1.0, 2.0], [0.0, 2.0, 1.0], resamples=2000, seed=0)
    assert out["flag"] == ""
    assert 0.05 < out["bootstrap_degenerate_fraction"] < 0.2
    assert -1 <= out["pearson_lo"] <= out["pearson_hi"] <= 1


def test_formatting():
    assert format_value(0.8712, "", 2) == "0.87"
    assert format_value(np.nan, "constant_actual") == "constant_actual"
    assert format_interval(0.8712, 0.7061, 0.951, "") == "0.87 [0.71, 0.95]"
    assert format_interval(0.8712, np.nan, np.nan, "") == "0.87 [n/a]"
    assert format_interval(0.5, 0.1, 0.9, "model_not_trained:constant_prediction") == "model_not_trained:constant_prediction"
    assert format_mean_spread(0.61, 0.052, 3) == "0.61 ± 0.05 (n=3)"
    assert format_mean_spread(0.61, np.nan, 1) == "0.61 ± n/a (n=1)"
    assert format_mean_spread(np.nan, np.nan, 0) == "n/a"
