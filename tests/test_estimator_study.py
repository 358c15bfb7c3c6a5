"""The estimator study's table, figure and page (report/estimator_study.py): on a synthetic
study whose every number is known, the table holds exactly the inputs' correlations and seconds;
on empty and one-row input every function still writes its output."""

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fragility.estimators.registry import BUILT_IN
from fragility.report import estimator_study as study

ROOT = Path(__file__).resolve().parents[1]
CELLS = [{"study": "s", "dataset": "d", "arch": "net", "decay": 0.0, "seed": seed} for seed in (0, 1)]
ESTIMATORS = {"primary": "lissa", "cos": "grad_cosine"}
TRUTH_POINTS = {None: ("max", "median"), "pbrf": ("max", "median"), "lds": ("max", "median", "mean")}


def _value(seed, estimator, truth, point, method):
    """A distinct, known correlation for every row (so that a wrong join shows)."""
    k = (seed * 97 + list(ESTIMATORS).index(estimator) * 31 + list(TRUTH_POINTS).index(truth) * 7
         + ("max", "median", "mean").index(point) * 3 + (method == "spearman"))
    return round(-0.9 + (k % 37) * 0.05, 6)


def _correlations() -> pd.DataFrame:
    rows = []
    for cell in CELLS:
        for truth, points in TRUTH_POINTS.items():
            estimators = list(ESTIMATORS) + (["loo_retraining"] if truth == "pbrf" else [])
            for estimator in estimators:
                for point in points:
                    est = estimator if estimator in ESTIMATORS else "primary"
                    record = {**cell, "test_point": point, "estimator": estimator, "quantity": "loss_change",
                              "subset": "all", "truth": truth, "n": 40, "flag": ""}
                    for method in ("pearson", "spearman"):
                        value = _value(cell["seed"], est, truth, point, method) + (0.001 if estimator != est else 0)
                        record.update({method: value, f"{method}_lo": value - 0.1, f"{method}_hi": value + 0.05})
                    if truth == "lds" and point == "mean":
                        record.update(pearson=math.nan, pearson_lo=math.nan, pearson_hi=math.nan)
                    rows.append(record)
                    # rows the study must leave out: another subset and another quantity
                    rows.append({**record, "subset": "tails", "pearson": 0.5})
                    rows.append({**record, "quantity": "param_change_norm", "pearson": 0.5})
    frame = pd.DataFrame(rows)
    flagged = (frame.seed == 1) & (frame.estimator == "cos") & (frame.truth.isna()) & (frame.test_point == "max")
    frame.loc[flagged & (frame.subset == "all"), ["pearson", "flag"]] = [math.nan, "constant_predicted"]
    return frame


FIT = {("primary", 0): 1e-5, ("primary", 1): 2e-5, ("cos", 0): None, ("cos", 1): None}
SCORING = {("primary", 0): 30.0, ("primary", 1): 31.5, ("cos", 0): 1.5, ("cos", 1): 1.75}


def _diagnostics(folder: Path):
    paths, cells = [], []
    for cell in CELLS:
        for name, method in ESTIMATORS.items():
            record = {"estimator": name, "method": method,
                      "test_points": [{"test_point": "max", "seconds_all_points": SCORING[name, cell["seed"]]},
                                      {"test_point": "median", "seconds_all_points": SCORING[name, cell["seed"]] - 1}]}
            if FIT[name, cell["seed"]] is not None:
                record["fit_seconds"] = FIT[name, cell["seed"]]
            path = folder / f"{name}_{cell['seed']}.json"
            path.write_text(json.dumps(record))
            paths.append(path)
            cells.append(cell)
    return paths, cells


@pytest.fixture()
def inputs(tmp_path):
    corr = tmp_path / "correlations.parquet"
    _correlations().to_parquet(corr)
    paths, cells = _diagnostics(tmp_path)
    return corr, paths, cells


def test_seconds_are_fit_plus_scoring_of_all_test_points(inputs):
    _, paths, cells = inputs
    seconds = study.estimator_seconds(paths, cells)
    assert len(seconds) == 4
    for record in seconds.to_dict("records"):
        key = (record["estimator"], record["seed"])
        assert record["scoring_seconds"] == SCORING[key]  # the largest over test points: all are scored together
        fit = FIT[key]
        assert (math.isnan(record["fit_seconds"]) if fit is None else record["fit_seconds"] == fit)
        assert record["seconds"] == pytest.approx(SCORING[key] + (fit or 0.0), rel=1e-15)
    with pytest.raises(ValueError, match="one cell per diagnostics file"):
        study.estimator_seconds(paths, cells[:1])


def test_the_table_holds_every_estimator_and_truth_with_the_inputs_values(inputs, tmp_path):
    corr, paths, cells = inputs
    table = study.write_cost_table(corr, paths, cells, tmp_path / "estimator_cost.csv")
    written = pd.read_csv(tmp_path / "estimator_cost.csv", keep_default_na=False, na_values=[""])
    assert len(written) == len(table)
    # LOO and PBRF per test point, LDS its `mean` row only; PBRF also scores loo_retraining
    expected = len(CELLS) * (2 * 2 + 3 * 2 + 2 * 1)
    assert len(table) == expected
    assert set(table.truth) == {"loo", "pbrf", "lds"}
    assert set(table[table.truth == "lds"].test_point) == {"mean"}
    assert set(table[table.truth == "lds"].score) == {"spearman"} and set(table[table.truth != "lds"].score) == {"pearson"}
    source = _correlations()
    source = source[(source.subset == "all") & (source.quantity == "loss_change")].assign(
        truth=lambda f: f.truth.fillna("loo"))
    for record in table.to_dict("records"):
        match = source[(source.seed == record["seed"]) & (source.estimator == record["estimator"])
                       & (source.truth == record["truth"]) & (source.test_point == record["test_point"])]
        assert len(match) == 1
        row = match.iloc[0]
        score = record["score"]
        for end in ("", "_lo", "_hi"):
            want, got = row[f"{score}{end}"], record[f"correlation{end}"]
            assert (math.isnan(want) and math.isnan(got)) or want == got
            for method in ("pearson", "spearman"):
                a, b = row[f"{method}{end}"], record[f"{method}{end}"]
                assert (math.isnan(a) and math.isnan(b)) or a == b
        assert record["flag"] == row["flag"]
        if record["estimator"] == "loo_retraining":
            assert math.isnan(record["seconds"]) and record["method"] == "loo_retraining"
        else:
            key = (record["estimator"], record["seed"])
            assert record["seconds"] == pytest.approx(SCORING[key] + (FIT[key] or 0.0), rel=1e-15)
            assert record["method"] == ESTIMATORS[record["estimator"]]
    flagged = table[table.flag != ""]
    assert len(flagged) == 1 and flagged.iloc[0].flag == "constant_predicted" and math.isnan(flagged.iloc[0].correlation)


def test_a_study_scored_on_loo_alone_has_truth_loo(inputs):
    corr, paths, cells = inputs
    frame = pd.read_parquet(corr)
    loo = frame[frame.truth.isna()].drop(columns="truth")
    table = study.cost_table(loo, study.estimator_seconds(paths, cells))
    assert set(table.truth) == {"loo"} and len(table) == len(CELLS) * 2 * 2


def test_figure_and_page_are_written(inputs, tmp_path):
    corr, paths, cells = inputs
    out = tmp_path / "out"
    table = study.estimator_study(corr, paths, cells, ESTIMATORS, out / "estimator_cost.csv", out / "figures",
                                  out / "estimator_study.html", {"net": "union"})
    assert (out / "figures/cost_vs_accuracy.png").stat().st_size > 0
    assert (out / "figures/cost_vs_accuracy.pdf").stat().st_size > 0
    page = (out / "estimator_study.html").read_text()
    for name, method in ESTIMATORS.items():
        assert html.escape(study.ESTIMATOR_NOTES[method][1]) in page  # why it might fail, one line per estimator
    assert "loo_retraining" in page and "select.by union" in page
    assert len(table) == len(pd.read_csv(out / "estimator_cost.csv"))


@pytest.mark.parametrize("size", [0, 1])
def test_empty_and_one_row_input(inputs, tmp_path, size):
    corr, paths, cells = inputs
    frame = pd.read_parquet(corr).head(size)
    small = tmp_path / f"corr{size}.parquet"
    frame.to_parquet(small)
    out = tmp_path / f"out{size}"
    table = study.estimator_study(small, paths[:size], cells[:size], {}, out / "cost.csv", out, out / "page.html")
    assert len(table) == size
    assert (out / "cost_vs_accuracy.png").exists() and (out / "page.html").exists()
    assert list(pd.read_csv(out / "cost.csv").columns) == study.COST_COLUMNS
    # a row whose estimator recorded no seconds is named, not drawn
    study.cost_vs_accuracy(table.assign(seconds=np.nan), out, "untimed")
    assert (out / "untimed.png").exists()


def test_every_built_in_estimator_has_a_caption_line():
    rst = (ROOT / "workflow/report/estimator_study.rst").read_text()
    for method in BUILT_IN:
        assert method in study.ESTIMATOR_NOTES
        computes, fails = study.ESTIMATOR_NOTES[method]  # each writes its own (what, why it might fail)
        assert computes and fails, method
    for method in study.ESTIMATOR_NOTES:
        assert f"``{method}``:" in rst
    assert study.estimator_note("my.py:Mine").startswith(study.PLUGIN_NOTE[0])


def test_correlation_by_truth_keeps_every_seed_and_dataset(inputs, tmp_path):
    """One label per cell, test point and seed: two seeds (or datasets) never share a point."""
    from fragility.report import figures

    frame = pd.read_parquet(inputs[0])
    frame = frame[(frame.subset == "all") & (frame.quantity == "loss_change")].assign(truth=lambda f: f.truth.fillna("loo"))
    frame = frame[(frame.truth != "lds") | (frame.test_point == "mean")]  # as correlation_by_truth keeps them
    labels = figures.truth_cell_labels(frame, ["lds"])
    keys = frame[["seed", "test_point", "truth", "estimator"]].astype(str).agg("/".join, axis=1)
    assert labels.groupby(frame.truth.to_numpy()).nunique()["loo"] == 2 * 2  # seeds × test points
    assert (labels + frame.truth + frame.estimator).nunique() == keys.nunique()
    one_seed = frame[frame.seed == 0]
    assert not figures.truth_cell_labels(one_seed).str.contains("seed").any()  # a single seed's figure is unchanged
    two_datasets = one_seed.assign(dataset=np.where(one_seed.test_point == "max", "a", "b"))
    assert figures.truth_cell_labels(two_datasets).str.startswith(("a\n", "b\n")).all()
    figures.correlation_by_truth(frame, tmp_path)
    assert (tmp_path / "correlation_by_truth.png").exists()
