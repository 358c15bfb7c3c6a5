"""Figures of the image studies (PNG and PDF): small MNIST (the paper's Figure 3 and its decay and
test-point sweeps) and Table 1 ours-vs-paper. A flagged correlation is never drawn as a number: it
is a grey cross at zero with the flag's name."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .figures import _note_figure, correlation_text, decay_name, save  # noqa: E402

METRIC_NAMES = {"pearson": "Pearson", "spearman": "Spearman"}
SUBSET_NAMES = {"top": "top by |Δ̂|", "all": "all re-trained", "random": "random sample (select.random)",
                "union": "union of the estimators' rankings"}


def subset_name(subset: str) -> str:
    if subset in SUBSET_NAMES:
        return SUBSET_NAMES[subset]
    return f"around {subset[1:]}th percentile" if subset.startswith("p") else subset


def _mark_flag(ax, x, flag: str, color="grey") -> None:
    ax.plot(x, 0, marker="x", color=color, markersize=9)
    ax.annotate(flag.replace(";", "\n"), (x, 0), fontsize=6, rotation=60, color=color, xytext=(3, 3), textcoords="offset points")


def _mark_partial(ax, x, y, note: str, color="grey") -> None:
    """Name the flagged rows a drawn mean leaves out, next to it."""
    if note and np.isfinite(y):
        ax.annotate(note, (x, y), fontsize=6, color=color, xytext=(3, -9), textcoords="offset points")


def _mean_std(frame: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Mean of `metric` over the unflagged rows of each group, with error bars `below`/`above`:
    the standard deviation over several rows, the bootstrap interval of a single row (NaN when it
    has none). A group whose rows are all flagged keeps its flag (joined) and a NaN mean; a group
    with some flagged rows keeps its mean and names what it left out in `note` ("2 of 5 left
    out: constant_actual")."""
    out = []
    for key, part in frame.groupby(keys, sort=False):
        ok, bad = part[part.flag == ""], part[part.flag != ""]
        key = key if isinstance(key, tuple) else (key,)
        reasons = ";".join(sorted(set(bad.flag)))
        mean = ok[metric].mean() if len(ok) else math.nan
        if len(ok) > 1:
            below = above = ok[metric].std()
        elif len(ok) == 1 and f"{metric}_lo" in ok:
            below, above = mean - ok[f"{metric}_lo"].iloc[0], ok[f"{metric}_hi"].iloc[0] - mean
        else:
            below = above = math.nan
        out.append({**dict(zip(keys, key)), "mean": mean, "below": below, "above": above, "count": len(ok),
                    "flag": "" if len(ok) else reasons,
                    "note": f"{len(bad)} of {len(part)} left out: {reasons}" if len(ok) and len(bad) else ""})
    return pd.DataFrame(out)


def _yerr(stats: pd.DataFrame) -> np.ndarray:
    """`_mean_std`'s error bars for matplotlib; no bar where there is none."""
    return np.nan_to_num(stats[["below", "above"]].to_numpy(float).T).clip(min=0)


SPREAD = "mean ± sd over test points and seeds; a single value: its bootstrap interval"


MNIST_SMALL_FIGURES = ("scatter_top_and_percentile", "correlation_by_subset", "correlation_vs_decay",
                       "correlation_across_test_points")


def mnist_small_figures(correlations_path, rows_path, outdir, decay: float, estimator: str,
                        method: str | None = None, quantity: str = "loss_change") -> None:
    """Figure 3 (scatter, top vs 30th-percentile points, with/without decay), correlation by subset,
    correlation vs decay, correlation across test points."""
    corr = pd.read_parquet(correlations_path)
    corr["flag"] = corr["flag"].fillna("")
    corr = corr[(corr.estimator == estimator) & (corr.quantity == quantity)]
    rows = pd.read_parquet(rows_path)
    rows = rows[rows.estimator == estimator]
    actual_col = "actual_" + quantity
    if corr.empty:  # the estimator failed everywhere, or nothing was re-trained: each figure says so
        for name in MNIST_SMALL_FIGURES:
            _note_figure(outdir, name, f"nothing to draw: no {quantity} correlations of {estimator}")
        return
    subsets = sorted((s for s in corr.subset.unique() if s != "all"), key=lambda s: (s != "top", s)) or ["all"]
    first_point = corr.sort_values("test_loss", ascending=False).test_point.iloc[0]
    first_seed = corr.seed.min()  # the scatter shows one seed; the summaries pool seeds and test points
    decays = [decay, 0.0]

    fig, axes = plt.subplots(len(subsets), 2, figsize=(8.4, 3.8 * len(subsets)), squeeze=False)
    for i, subset in enumerate(subsets):
        for j, d in enumerate(decays):
            ax = axes[i][j]
            part = rows[(rows.decay == d) & (rows.test_point == first_point) & (rows.seed == first_seed)]
            if subset != "all":
                part = part[part.selection == subset]
            ax.scatter(part.predicted_loss_change, part[actual_col], s=10)
            if len(part):
                lo = float(np.nanmin([part.predicted_loss_change.min(), part[actual_col].min()]))
                hi = float(np.nanmax([part.predicted_loss_change.max(), part[actual_col].max()]))
                ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
            stat = corr[(corr.decay == d) & (corr.test_point == first_point) & (corr.subset == subset)
                        & (corr.seed == first_seed)]
            text = correlation_text(stat.iloc[0]) if len(stat) else "not run"
            ax.set_title(f"{subset_name(subset)}, {decay_name(d)}\n{text}", fontsize=9)
            ax.set_xlabel("predicted Δ̂ (influence)")
            ax.set_ylabel("actual Δ (re-trained)")
            ax.grid(alpha=0.3)
    fig.suptitle(f"small MNIST, test point {first_point}, seed {first_seed}, estimator {estimator} ({method or estimator})",
                 fontsize=10)
    fig.tight_layout()
    save(fig, outdir, "scatter_top_and_percentile")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, METRIC_NAMES):
        stats = _mean_std(corr[corr.decay.isin(decays)], ["subset", "decay"], metric)
        order = subsets + (["all"] if "all" not in subsets else [])
        width = 0.38
        for k, d in enumerate(decays):
            xs = np.arange(len(order)) + (k - 0.5) * width
            part = stats[stats.decay == d].set_index("subset").reindex(order)
            bars = ax.bar(xs, part["mean"].fillna(0), width, yerr=_yerr(part), capsize=3, label=decay_name(d))
            for x, flag, mean, note in zip(xs, part["flag"].fillna("not run"), part["mean"], part["note"].fillna("")):
                if flag:
                    _mark_flag(ax, x, flag, bars.patches[0].get_facecolor())
                _mark_partial(ax, x, mean, note, bars.patches[0].get_facecolor())
        ax.set_xticks(np.arange(len(order)), [subset_name(s) for s in order], fontsize=8)
        ax.set_ylabel(f"{METRIC_NAMES[metric]}\n({SPREAD})", fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    save(fig, outdir, "correlation_by_subset")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    nonzero = sorted(d for d in corr.decay.unique() if d > 0)
    for ax, metric in zip(axes, METRIC_NAMES):
        stats = _mean_std(corr, ["subset", "decay"], metric)
        for subset, part in stats.groupby("subset", sort=False):
            part = part.sort_values("decay")
            ok = part[part.flag == ""]
            line = ax.errorbar(ok.decay, ok["mean"], yerr=_yerr(ok), marker="o", capsize=3, label=subset_name(subset))
            for _, r in part[part.flag != ""].iterrows():
                _mark_flag(ax, r.decay, r.flag, line[0].get_color())
            for _, r in ok.iterrows():
                _mark_partial(ax, r.decay, r["mean"], r.note, line[0].get_color())
        if nonzero:
            ax.set_xscale("symlog", linthresh=nonzero[0])
        ax.set_xlabel("weight decay λ")
        ax.set_ylabel(f"{METRIC_NAMES[metric]}\n({SPREAD})", fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save(fig, outdir, "correlation_vs_decay")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    points = corr.sort_values("test_loss", ascending=False).test_point.drop_duplicates().tolist()
    for ax, metric in zip(axes, METRIC_NAMES):
        for d, part in corr[corr.subset == "all"].groupby("decay"):
            stats = _mean_std(part, ["test_point"], metric).set_index("test_point").reindex(points)
            xs = np.arange(len(points))
            line = ax.errorbar(xs, stats["mean"], yerr=_yerr(stats), marker="o", capsize=3, label=decay_name(d))
            for x, flag, mean, note in zip(xs, stats["flag"].fillna("not run"), stats["mean"], stats["note"].fillna("")):
                if flag:
                    _mark_flag(ax, x, flag, line[0].get_color())
                _mark_partial(ax, x, mean, note, line[0].get_color())
        ax.set_xticks(np.arange(len(points)), points, fontsize=8)
        ax.set_xlabel("test point (by decreasing test loss)")
        ax.set_ylabel(f"{METRIC_NAMES[metric]}, all re-trained points\n(mean ± sd over seeds; one seed: its bootstrap interval)", fontsize=7)
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save(fig, outdir, "correlation_across_test_points")


def table1_figure(versus_path, outdir, name: str = "table1_vs_paper") -> None:
    """One panel per Table 1 column: our value (error bar: its bootstrap interval) next to the paper's
    for every (dataset, model)."""
    versus = pd.read_csv(versus_path, keep_default_na=False, na_values=[""])
    if versus.empty:
        return _note_figure(outdir, name, "nothing to draw: Table 1 has no cell")
    versus["flag"] = versus["flag"].fillna("")
    columns = list(dict.fromkeys(versus.column))
    labels = list(dict.fromkeys(versus.dataset + " · " + versus.model))
    fig, axes = plt.subplots(3, 2, figsize=(10, 3 * (1.0 + 0.3 * len(labels))), squeeze=False, sharex=True)
    for ax, column in zip(axes.flat, columns):
        part = versus[versus.column == column].assign(label=lambda f: f.dataset + " · " + f.model).set_index("label").reindex(labels)
        ys = np.arange(len(labels))
        ours = part.ours_value.astype(float)
        if "ours_lo" in part:  # the bootstrap interval of our value (tables.table1_long)
            xerr = np.vstack([(ours - part.ours_lo.astype(float)).clip(lower=0), (part.ours_hi.astype(float) - ours).clip(lower=0)])
            xerr = np.nan_to_num(xerr)
        else:
            xerr = None
        ax.barh(ys + 0.2, ours.fillna(0), 0.4, xerr=xerr, capsize=2, error_kw={"lw": 0.8}, label="ours")
        ax.barh(ys - 0.2, part.paper.astype(float).fillna(0), 0.4, label="paper", color="lightgrey", edgecolor="grey")
        for y, flag, paper in zip(ys, part.flag.fillna(""), part.paper.astype(float)):
            if flag:
                ax.annotate(flag, (0, y + 0.2), fontsize=6, color="tab:red", va="center")
            if math.isnan(paper):
                ax.annotate("not in paper", (0, y - 0.2), fontsize=6, color="grey", va="center")
        ax.set_yticks(ys, labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlim(-1, 1)
        ax.set_title(column, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, outdir, name)
