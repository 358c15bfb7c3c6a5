"""Every figure and table function on a study's real tables cut to one row and to none: a figure
with nothing to draw says so, a table with nothing in it is written empty; neither fails."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from fragility.io import read_json
from fragility.report import aggregate, estimator_study, figures, figures_images, tables
from fragility.study import correlate, pipeline, selection
from fragility.truths.registry import get

QUIET = dict(log=lambda m: None)
PAPER = Path(__file__).resolve().parents[1] / "workflow/resources/paper_table1.csv"
CELL = {"study": "s", "dataset": "iris", "arch": "mlp-d1-w3", "decay": 0.01, "seed": 0}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study of one trained Iris cell: exact and identity influence, 6 re-trained points, aggregated."""
    root = tmp_path_factory.mktemp("study")
    p = {name: str(root / name) for name in ("data.pt", "model.pt", "metrics.json", "tp.json", "selected.json",
                                             "chunk.parquet", "drift.parquet", "drift_theta.pt", "rows_cell.parquet",
                                             "corr_cell.parquet")}
    train_cfg = {"optimizer": "sgd", "lr": 0.1, "steps": 100, "batch_size": 32, "check_every": 100}
    loo_cfg = {"steps": 20}
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, "data", p["data.pt"])
    pipeline.train(p["data.pt"], CELL["arch"], CELL["decay"], 0, train_cfg, "float64", "cpu", p["model.pt"],
                   p["metrics.json"], **QUIET)
    pipeline.pick_test_points(p["model.pt"], p["data.pt"], ["max", "median"], p["tp.json"], "cpu")
    influence = {}
    for method in ("exact", "identity"):
        influence[method] = str(root / f"{method}.parquet")
        pipeline.compute_influence(p["model.pt"], p["data.pt"], p["tp.json"], method, {}, 0.01, influence[method],
                                   str(root / f"{method}.json"), device_name="cpu", **QUIET)
    selection.select(influence["exact"], [{"top_k": 6}], p["selected.json"])
    removed = read_json(p["selected.json"])["indices"]
    common = dict(device_name="cpu", order_seed=0, **QUIET)
    cell = {"model": p["model.pt"], "data": p["data.pt"], "test_points": p["tp.json"], "drift_theta": p["drift_theta.pt"]}
    loo = get("loo")
    loo.drift(cell, loo_cfg, train_cfg, p["drift.parquet"], p["drift_theta.pt"], **common)
    loo.retrain_chunk(cell, [(i, [i]) for i in removed], loo_cfg, loo_cfg, train_cfg, p["chunk.parquet"], **common)
    correlate.correlate_cell(CELL, influence, p["tp.json"], p["selected.json"], [p["chunk.parquet"]],
                             p["drift.parquet"], p["metrics.json"], p["rows_cell.parquet"], p["corr_cell.parquet"],
                             options={"resamples": 50, "permutations": 50})
    out = root / "results"
    out.mkdir()
    names = ("correlations.parquet", "summary.csv", "rows.parquet", "training.csv", "influence_diagnostics.csv",
             "summary_by_seed.csv", "noise.csv", "estimators.csv")
    aggregate.aggregate_study([p["corr_cell.parquet"]], [p["rows_cell.parquet"]], [p["metrics.json"]],
                              [str(root / "exact.json"), str(root / "identity.json")],
                              *[str(out / n) for n in names], metric_cells=[CELL], diagnostic_cells=[CELL, CELL])
    return out


def cut(study, tmp_path, size):
    """The study's tables with `size` rows each (the first ones), in a folder of their own."""
    folder = tmp_path / f"rows{size}"
    shutil.copytree(study, folder)
    for path in folder.iterdir():
        if path.suffix == ".parquet":
            pd.read_parquet(path).head(size).to_parquet(path)
        elif path.suffix == ".csv":
            pd.read_csv(path, keep_default_na=False, na_values=[""]).head(size).to_csv(path, index=False)
    return folder


@pytest.mark.parametrize("size", [0, 1])
def test_every_figure_draws_or_says_it_has_nothing_to_draw(study, tmp_path, size):
    folder = cut(study, tmp_path, size)
    corr, rows = folder / "correlations.parquet", folder / "rows.parquet"
    out = tmp_path / "figures"
    figures.iris_figures(corr, rows, folder / "influence_diagnostics.csv", folder / "training.csv", out, {})
    figures.study_figures(corr, rows, folder / "estimators.csv", out, {})
    frame = pd.read_parquet(corr)
    frame["flag"] = frame["flag"].fillna("")
    figures.correlation_by_truth(frame, out)
    diagnostics = [study.parent / f"{method}.json" for method in ("exact", "identity")]
    cost = estimator_study.estimator_study(corr, diagnostics, [CELL, CELL], {"exact": "exact", "identity": "identity"},
                                           folder / "estimator_cost.csv", out, folder / "estimator_study.html")
    assert len(cost) == size and (out / "cost_vs_accuracy.png").exists()
    figures_images.mnist_small_figures(corr, rows, out, 0.01, "exact")
    tables.write_table1(corr, PAPER, {}, {CELL["arch"]: "exact"}, [0.01], folder / "t1.csv", folder / "versus.csv")
    figures_images.table1_figure(folder / "versus.csv", out)
    assert list(out.glob("*.png"))


@pytest.mark.parametrize("size", [0, 1])
def test_every_table_is_written_whatever_its_size(study, tmp_path, size):
    folder = cut(study, tmp_path, size)
    frame = pd.read_parquet(folder / "correlations.parquet")
    rows = pd.read_parquet(folder / "rows.parquet")
    metrics = folder / "metrics.json"
    metrics.write_text('{"flags": [], "train_loss": 0.1}')
    diagnostics = folder / "diagnostics.json"
    diagnostics.write_text('{"method": "exact", "test_points": []}')
    aggregate.aggregate_study([folder / "correlations.parquet"], [folder / "rows.parquet"], [metrics], [diagnostics],
                              *[tmp_path / f"agg_{name}" for name in ("corr.parquet", "summary.csv", "rows.parquet",
                                                                      "training.csv", "diag.csv", "by_seed.csv",
                                                                      "noise.csv", "estimators.csv")],
                              metric_cells=[CELL], diagnostic_cells=[CELL])
    aggregate.summary_table(frame)
    aggregate.seed_summary(frame)
    aggregate.noise_table(frame)
    aggregate.estimator_table(frame, rows)
    estimator_of = {CELL["arch"]: "exact"}
    long = tables.table1_long(frame, estimator_of, 0.01)
    tables.table1_wide(long, {})
    tables.table1_truths(frame, estimator_of, [0.01])
    tables.write_table1_truths(folder / "correlations.parquet", folder / "t1_truths.csv", estimator_of, [0.01])
    tables.write_table1(folder / "correlations.parquet", PAPER, {}, estimator_of, [0.01], folder / "t1.csv",
                        folder / "versus.csv")
    aggregate.table1_page(folder / "t1.csv", folder / "versus.csv", tmp_path / "t1.html")
    aggregate.study_report_pages(folder, tmp_path / "report", "config: {}")
    aggregate.gather_benchmarks(tmp_path / "no_benchmarks", tmp_path / "no_logs", tmp_path / "jobs.csv",
                                tmp_path / "bench.csv", tmp_path / "bench.html")
    written = [tmp_path / "agg_summary.csv", tmp_path / "agg_estimators.csv", folder / "t1_truths.csv",
               folder / "t1.csv", folder / "versus.csv", tmp_path / "t1.html", tmp_path / "bench.csv"]
    assert [path.name for path in written if not path.exists()] == []
    assert len(pd.read_csv(tmp_path / "agg_summary.csv")) == len(aggregate.summary_table(frame))


IRIS_FIGURES = ("spearman_vs_depth", "spearman_vs_width", "param_change_scatter", "estimator_spearman_vs_depth",
                "top_eigenvalue_vs_depth")


def test_iris_figures_of_a_study_of_logistic_regression_alone(study, tmp_path):
    """`architectures: [mlp-d0-w0]` (the convex check): no depth or width sweep to draw; every
    figure is still written, the empty ones saying so (it failed on the depth sweep before)."""
    folder = cut(study, tmp_path, 10**6)
    for name in ("correlations.parquet", "rows.parquet"):
        pd.read_parquet(folder / name).assign(arch="mlp-d0-w0").to_parquet(folder / name)
    diagnostics = pd.read_csv(folder / "influence_diagnostics.csv").assign(arch="mlp-d0-w0")
    diagnostics.to_csv(folder / "influence_diagnostics.csv", index=False)
    out = tmp_path / "figures"
    figures.iris_figures(folder / "correlations.parquet", folder / "rows.parquet", folder / "influence_diagnostics.csv",
                         folder / "training.csv", out, {"scatter_architecture": "mlp-d0-w0"})
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(IRIS_FIGURES)
