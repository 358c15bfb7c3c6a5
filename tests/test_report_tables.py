"""Study tables: intervals in every correlation cell, seeds aggregated with flags named, benchmarks."""

import math

import numpy as np
import pandas as pd
import pytest

from fragility.report import aggregate as report_tables


def correlation_rows():
    base = {"study": "iris", "dataset": "iris", "arch": "mlp-d1-w5", "decay": 0.0, "test_point": "max", "estimator": "exact",
            "quantity": "loss_change", "subset": "all", "n": 20, "drift_loss_change": 0.01, "actual_std": 0.1,
            "effect": 0.1, "drift_noise": 0.01, "repeat_noise": 0.0, "repeat_n": 5, "noise": 0.01, "noise_source": "drift",
            "signal_to_noise": 10.0, "noise_flag": "", "pearson_p": 0.001, "spearman_p": 0.002}
    values = [(0, 0.8, 0.6, ""), (1, 0.6, 0.5, ""), (2, np.nan, np.nan, "constant_actual")]
    rows = []
    for seed, pearson, spearman, flag in values:
        rows.append({**base, "seed": seed, "pearson": pearson, "spearman": spearman, "flag": flag,
                     "pearson_lo": pearson - 0.1, "pearson_hi": pearson + 0.1, "spearman_lo": spearman - 0.2,
                     "spearman_hi": spearman + 0.1})
    rows[1].update(noise_flag="noise_exceeds_effect", signal_to_noise=0.5, noise_source="repeat")
    return pd.DataFrame(rows)


def test_summary_cells_carry_intervals_or_flags():
    table = report_tables.summary_table(correlation_rows())
    assert table.pearson.tolist() == ["0.800 [0.700, 0.900]", "0.600 [0.500, 0.700]", "constant_actual"]
    assert table.spearman.iloc[0] == "0.600 [0.400, 0.700]"
    assert table.pearson_p.tolist() == ["0.001", "0.001", ""]
    assert table.ground_truth.iloc[0] == "SNR 10 (drift)"
    assert table.ground_truth.iloc[1] == "noise_exceeds_effect (repeat, SNR 0.5)"


def test_seed_summary_averages_unflagged_seeds_and_names_the_flagged():
    table = report_tables.seed_summary(correlation_rows())
    assert len(table) == 1
    row = table.iloc[0]
    assert row.n_seeds == 3 and row.n_used == 2 and row.n_flagged == 1
    assert row.flagged_seeds == "seed2:constant_actual" and row.noisy_seeds == "seed1"
    assert row.pearson_mean == pytest.approx(0.7) and row.pearson_std == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert row.pearson == f"0.700 ± {np.std([0.8, 0.6], ddof=1):.3f} (n=2)"


def test_seed_summary_when_every_seed_is_flagged():
    rows = correlation_rows()
    rows["flag"] = "constant_predicted"
    row = report_tables.seed_summary(rows).iloc[0]
    assert row.pearson == "all seeds flagged" and math.isnan(row.pearson_mean) and row.n_flagged == 3


def test_estimator_table_compares_with_exact_on_the_same_points():
    corr = pd.concat([correlation_rows().iloc[:1].assign(estimator=name) for name in ("exact", "lissa", "cg")])
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(20)
    rows = pd.concat([
        pd.DataFrame({"study": "iris", "dataset": "iris", "arch": "mlp-d1-w5", "decay": 0.0, "seed": 0, "test_point": "max",
                      "train_index": np.arange(20), "estimator": name, "predicted_loss_change": values})
        for name, values in (("exact", exact), ("lissa", 2 * exact + 1), ("cg", rng.standard_normal(20)))])
    table = report_tables.estimator_table(corr, rows)
    agreement = dict(zip(table.estimator, table.agreement_with_exact))
    assert agreement["exact"] == pytest.approx(1.0) and agreement["lissa"] == pytest.approx(1.0)
    assert abs(agreement["cg"]) < 0.6
    assert set(table.pearson_text) == {"0.80 [0.70, 0.90]"}
    # a cell without exact keeps every estimator's correlation, and says that agreement was not computed
    without = report_tables.estimator_table(corr[corr.estimator != "exact"], rows)
    assert set(without.estimator) == {"lissa", "cg"} and set(without.reference) == {""}
    assert set(without.agreement_with_exact_text) == {report_tables.NO_EXACT} and without.agreement_with_exact.isna().all()
    assert set(without.pearson_text) == {"0.80 [0.70, 0.90]"}
    assert (table.agreement_with_exact_lo <= table.agreement_with_exact + 1e-12).all()
    assert (table.agreement_with_exact <= table.agreement_with_exact_hi + 1e-12).all()
    # the exact estimator may carry another name in the config (e.g. `primary: {method: exact}`)
    renamed = report_tables.estimator_table(corr.replace({"estimator": {"exact": "primary"}}),
                                            rows.replace({"estimator": {"exact": "primary"}}), [("mlp-d1-w5", "primary")])
    assert dict(zip(renamed.estimator, renamed.agreement_with_exact))["lissa"] == pytest.approx(1.0)
    assert set(renamed.reference) == {"primary"}


def test_benchmarks_are_gathered_with_logged_gpu_memory(tmp_path):
    bench, logs = tmp_path / "benchmarks" / "iris", tmp_path / "logs" / "iris"
    cell = "iris/mlp-d1-w5/wd0/seed0"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for job, seconds, rss in (("train", 3.5, 700.0), ("loo_chunk0000", 2.0, 650.0), ("loo_chunk0001", 4.0, 660.0)):
        (bench / cell).mkdir(parents=True, exist_ok=True)
        (bench / cell / f"{job}.tsv").write_text(header + f"{seconds}\t0:00:03\t{rss}\t3000\t300\t350\t1\t0\t50\t{seconds}\n")
    (logs / cell).mkdir(parents=True)
    (logs / cell / "train.log").write_text("[0.1s] training\n[3.0s] peak_gpu_memory_mb=812.5\n")
    jobs = report_tables.benchmark_table(bench, logs)
    assert sorted(jobs.step) == ["loo_chunk", "loo_chunk", "train"]
    train = jobs[jobs.step == "train"].iloc[0]
    assert train.seconds == 3.5 and train.max_rss_mb == 700.0 and train.peak_gpu_memory_mb == 812.5
    summary = report_tables.benchmark_summary(jobs).set_index("step")
    assert summary.loc["loo_chunk", "jobs"] == 2 and summary.loc["loo_chunk", "total_seconds"] == 6.0
    assert summary.loc["loo_chunk", "max_rss_mb"] == 660.0 and math.isnan(summary.loc["loo_chunk", "peak_gpu_memory_mb"])


def test_table1_page_shows_intervals_next_to_the_paper(tmp_path):
    pd.DataFrame({"dataset": ["mnist"], "model": ["LeNet"], "A, decay P": ["0.80 [0.70, 0.90]"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"dataset": ["mnist", "mnist"], "model": ["LeNet", "LeNet"], "column": ["A, decay P", "B, decay P"],
                  "ours": ["0.80 [0.70, 0.90]", "constant_actual"], "paper": [0.83, 0.28], "paper_in_interval": [True, None],
                  "difference": [-0.03, np.nan], "flag": ["", "constant_actual"]}).to_csv(tmp_path / "v.csv", index=False)
    report_tables.table1_page(tmp_path / "t.csv", tmp_path / "v.csv", tmp_path / "t.html")
    page = (tmp_path / "t.html").read_text()
    assert page.count("0.80 [0.70, 0.90]") == 2 and "inside our interval in 1 of 1 cells" in page
    assert '<td class="flag">constant_actual</td>' in page


def test_noise_table_names_the_flags_of_the_cell_not_of_one_estimator():
    rows = correlation_rows().assign(test_index=7)
    rows.loc[0, "flag"] = "model_not_trained:constant_outputs;estimator_failed"
    rows.loc[1, "flag"] = "selection_failed:diverged"
    table = report_tables.noise_table(rows).set_index("seed")
    assert table.loc[0, "flag"] == "model_not_trained:constant_outputs"
    assert table.loc[1, "flag"] == "selection_failed:diverged"
    assert table.loc[2, "flag"] == "constant_actual"


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the drawing is replaced by a recorder
def test_decay_sweep_draws_one_series_per_dataset(tmp_path, monkeypatch):
    """With two datasets (Table 1), a line's mean and band are over seeds, never over datasets."""
    from fragility.report import figures as plots

    rows = []
    for dataset, value in (("mnist", 0.9), ("cifar10", 0.1)):
        for decay in (0.0, 0.001):
            rows.append({"study": "table1", "dataset": dataset, "arch": "lenet", "decay": decay, "seed": 0,
                         "test_point": "max", "estimator": "exact", "quantity": "loss_change", "subset": "all",
                         "flag": "", "pearson": value, "spearman": value, "pearson_lo": value, "pearson_hi": value,
                         "spearman_lo": value, "spearman_hi": value})
    drawn = {}
    monkeypatch.setattr(plots, "_sweep_with_bands", lambda ax, frame, x, value, group, label_of: drawn.update(
        {label_of(key): sorted(part[value]) for key, part in frame.groupby(group)}))
    plots.correlation_sweeps(pd.DataFrame(rows), tmp_path, "exact")
    assert drawn == {"mnist, lenet, max": [0.9, 0.9], "cifar10, lenet, max": [0.1, 0.1]}


def test_small_mnist_means_name_the_flagged_rows_they_leave_out():
    from fragility.report.figures_images import _mean_std

    frame = pd.DataFrame({"decay": [0.001] * 5 + [0.0] * 2, "pearson": [0.9, 0.7, np.nan, np.nan, np.nan, np.nan, np.nan],
                          "flag": ["", "", "constant_actual", "selection_failed:diverged", "constant_actual",
                                   "constant_actual", "constant_actual"]})
    stats = _mean_std(frame, ["decay"], "pearson").set_index("decay")
    assert stats.loc[0.001, "mean"] == pytest.approx(0.8) and stats.loc[0.001, "flag"] == ""
    assert stats.loc[0.001, "note"] == "3 of 5 left out: constant_actual;selection_failed:diverged"
    assert math.isnan(stats.loc[0.0, "mean"]) and stats.loc[0.0, "flag"] == "constant_actual"
    assert stats.loc[0.0, "note"] == ""


def test_a_test_point_with_nothing_retrained_keeps_its_panel_and_flag(tmp_path, monkeypatch):
    from fragility.report import figures as plots

    cell = {"study": "iris", "dataset": "iris", "arch": "mlp-d1-w5", "decay": 0.0, "seed": 0, "estimator": "exact",
            "quantity": "loss_change", "subset": "all", "pearson_lo": np.nan, "pearson_hi": np.nan,
            "spearman_lo": np.nan, "spearman_hi": np.nan}
    corr = pd.DataFrame([{**cell, "test_point": "max", "flag": "", "pearson": 0.9, "spearman": 0.8},
                         {**cell, "test_point": "median", "flag": "selection_failed:diverged", "pearson": np.nan,
                          "spearman": np.nan}])
    rows = pd.DataFrame({"dataset": "iris", "arch": "mlp-d1-w5", "decay": 0.0, "seed": 0, "test_point": "max",
                         "estimator": "exact", "predicted_loss_change": [0.1, 0.2, 0.3], "actual_loss_change": [0.1, 0.25, 0.3]})
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, outdir, name: figures.append(fig))
    plots.predicted_vs_actual(corr, rows, tmp_path, "exact")
    titles = [ax.get_title() for ax in figures[0].axes]
    assert any("max" in t for t in titles)
    assert any("median" in t and "selection_failed:diverged" in t for t in titles)


def test_agreement_with_exact_has_an_interval_or_a_flag():
    """The estimator study's agreement is a correlation like any other: an interval and a p-value,
    the model's flag when it did not train, and the reason's name when it is undefined."""
    corr = pd.concat([correlation_rows().iloc[:2].assign(estimator=name) for name in ("exact", "lissa", "cg")])
    corr.loc[corr.seed == 1, "flag"] = "model_not_trained:chance_accuracy"
    rng = np.random.default_rng(0)
    exact = rng.standard_normal(20)
    frames = []
    for seed in (0, 1):
        for name, values in (("exact", exact), ("lissa", exact + 0.1 * rng.standard_normal(20)), ("cg", np.full(20, 0.5))):
            frames.append(pd.DataFrame({"study": "iris", "dataset": "iris", "arch": "mlp-d1-w5", "decay": 0.0, "seed": seed,
                                        "test_point": "max", "train_index": np.arange(20), "estimator": name,
                                        "predicted_loss_change": values}))
    table = report_tables.estimator_table(corr, pd.concat(frames),
                                          correlation={"resamples": 200, "permutations": 200})
    trained = table[table.seed == 0].set_index("estimator")
    assert trained.loc["lissa", "agreement_with_exact"] > 0.9
    assert trained.loc["lissa", "agreement_with_exact_text"].startswith(f"{trained.loc['lissa', 'agreement_with_exact']:.2f} [")
    assert 0 < trained.loc["lissa", "agreement_with_exact_p"] < 0.01
    assert trained.loc["cg", "agreement_with_exact_text"] == "constant_predicted"
    assert math.isnan(trained.loc["cg", "agreement_with_exact"])
    collapsed = table[table.seed == 1]
    assert set(collapsed.agreement_with_exact_text) == {"model_not_trained:chance_accuracy"}
    assert collapsed.agreement_with_exact.isna().all() and collapsed.agreement_with_exact_p.isna().all()


def test_noise_table_keeps_constant_actual_when_the_first_estimator_failed():
    rows = pd.concat([correlation_rows().iloc[2:].assign(estimator="lissa", flag="estimator_failed"),
                      correlation_rows().iloc[2:].assign(estimator="exact", flag="constant_actual")])
    table = report_tables.noise_table(rows.assign(test_index=7))
    assert table.flag.tolist() == ["constant_actual"]


def test_diagnostics_carry_the_models_flag(tmp_path):
    import json

    cell = tmp_path / "results" / "iris" / "iris" / "mlp-d8-w5" / "wd0.005" / "seed0"
    (cell / "influence").mkdir(parents=True)
    (cell / "train_metrics.json").write_text(json.dumps({"flags": ["constant_outputs"], "train_accuracy": 0.33}))
    (cell / "influence" / "exact.json").write_text(json.dumps({"method": "exact", "top_eigenvalue": 1e-9,
                                                                "test_points": [{"status": "ok"}]}))
    corr = correlation_rows().iloc[:1].assign(arch="mlp-d8-w5", decay=0.005)
    (cell / "correlations.parquet").parent.mkdir(exist_ok=True)
    corr.to_parquet(cell / "correlations.parquet")
    pd.DataFrame({"study": ["iris"], "dataset": "iris", "arch": "mlp-d8-w5", "decay": 0.005, "seed": 0, "test_point": "max",
                  "train_index": 0, "estimator": "exact", "predicted_loss_change": 0.1}).to_parquet(cell / "rows.parquet")
    out = tmp_path / "out"
    keys = {"study": "iris", "dataset": "iris", "arch": "mlp-d8-w5", "decay": 0.005, "seed": 0}
    report_tables.aggregate_study([cell / "correlations.parquet"], [cell / "rows.parquet"], [cell / "train_metrics.json"],
                                  [cell / "influence" / "exact.json"], out / "c.parquet", out / "s.csv", out / "r.parquet",
                                  out / "t.csv", out / "d.csv", metric_cells=[keys], diagnostic_cells=[keys])
    assert pd.read_csv(out / "d.csv").flag.tolist() == ["model_not_trained:constant_outputs"]
    assert pd.read_csv(out / "t.csv")[["arch", "decay", "seed"]].values.tolist() == [["mlp-d8-w5", 0.005, 0]]


def test_every_correlation_gets_its_own_resamples():
    from fragility.stats import correlate, stream_seed

    rng = np.random.default_rng(0)
    x = rng.standard_normal(20)
    y = x + rng.standard_normal(20)
    first = correlate(x, y, resamples=300, seed=stream_seed(0, "iris", "mlp-d1-w5", 0.005, 0, "max", "all"))
    again = correlate(x, y, resamples=300, seed=stream_seed(0, "iris", "mlp-d1-w5", 0.005, 0, "max", "all"))
    other = correlate(x, y, resamples=300, seed=stream_seed(0, "iris", "mlp-d2-w5", 0.005, 0, "max", "all"))
    assert first["pearson_lo"] == again["pearson_lo"]  # reproducible
    assert first["pearson_lo"] != other["pearson_lo"]  # another cell: other resamples, same data


def test_sweeps_name_every_flag_at_a_position_and_leave_flagged_seeds_out(monkeypatch):
    from matplotlib import pyplot as plt

    from fragility.report import figures as plots

    frame = pd.DataFrame({"depth": [1, 1, 7, 7, 7], "decay": 0.005, "seed": [0, 1, 0, 1, 2],
                          "top_eigenvalue": [2.0, 4.0, 1e-9, 1e-9, 50.0],
                          "flag": ["", "", "model_not_trained:constant_outputs", "model_not_trained:chance_accuracy", ""]})
    assert plots.flags_by_x(frame, "depth") == [(7, "model_not_trained:constant_outputs;model_not_trained:chance_accuracy")]
    fig, ax = plt.subplots()
    plots.plot_sweep(ax, frame, "depth", "top_eigenvalue", "decay", flag_at_bottom=True)
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [1, 7] and list(ys) == [3.0, 50.0]  # depth 7: only the seed that trained
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "constant_outputs" in notes and "chance_accuracy" in notes
    plt.close(fig)


def test_a_single_value_gets_its_bootstrap_interval_as_error_bar():
    from fragility.report.figures_images import _mean_std

    frame = pd.DataFrame({"decay": [0.001, 0.0, 0.0], "pearson": [0.8, 0.5, 0.7], "pearson_lo": [0.6, 0.3, 0.5],
                          "pearson_hi": [0.9, 0.6, 0.8], "flag": ""})
    stats = _mean_std(frame, ["decay"], "pearson").set_index("decay")
    assert stats.loc[0.001, ["below", "above"]].tolist() == pytest.approx([0.2, 0.1])
    spread = np.std([0.5, 0.7], ddof=1)
    assert stats.loc[0.0, ["below", "above"]].tolist() == pytest.approx([spread, spread])


def test_estimator_figure_names_flags_and_cells_without_an_exact_reference(monkeypatch):
    """Pearson, Spearman and agreement-with-exact panels; a failed estimator and a cell without the
    exact Hessian are named, not drawn as numbers; with no exact anywhere the third panel is left out."""
    from matplotlib import pyplot as plt

    from fragility.report import figures as plots

    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, outdir, name: drawn.update(fig=fig))

    def row(arch, estimator, value, flag="", agreement=math.nan, agreement_text=report_tables.NO_EXACT):
        return {"study": "s", "dataset": "d", "arch": arch, "decay": 0.0, "seed": 0, "test_point": "max",
                "quantity": "loss_change", "estimator": estimator, "pearson": value, "pearson_lo": value - 0.1,
                "pearson_hi": value + 0.1, "spearman": value, "spearman_lo": value - 0.1, "spearman_hi": value + 0.1,
                "flag": flag, "agreement_with_exact": agreement, "agreement_with_exact_lo": agreement - 0.05,
                "agreement_with_exact_hi": agreement + 0.05, "agreement_with_exact_text": agreement_text}

    est = pd.DataFrame([row("a", "exact", 0.9, agreement=1.0, agreement_text="1.00 [1.00, 1.00]"),
                        row("a", "lissa", math.nan, flag="estimator_failed", agreement_text="estimator_failed"),
                        row("b", "exact", 0.5), row("b", "lissa", 0.4)])
    plots.estimator_comparison(est, "unused")
    axes = drawn["fig"].axes
    assert len(axes) == 3
    notes = [" ".join(t.get_text() for t in ax.texts) for ax in axes]
    assert "estimator_failed (lissa)" in notes[0] and "no exact" not in notes[0]
    assert report_tables.NO_EXACT in notes[2]
    pearson_points = sorted(float(y) for line in axes[0].lines if line.get_marker() == "o" for y in line.get_ydata())
    assert pearson_points == [0.4, 0.5, 0.9]  # the failed estimator's NaN is not drawn
    plt.close(drawn["fig"])
    plots.estimator_comparison(est[est.arch == "b"], "unused")
    assert len(drawn["fig"].axes) == 2 and "no cell computed the exact Hessian" in drawn["fig"].axes[0].get_title()
    plt.close(drawn["fig"])
