"""Figures (matplotlib, PNG and PDF). A flagged value is never drawn as a number: it is shown as a
grey cross on the axis with the flag's name next to it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..stats import format_interval  # noqa: E402
from .aggregate import NO_EXACT  # noqa: E402
from ..models.registry import MLP_NAME  # noqa: E402
from ..truths.registry import TRUTHS  # noqa: E402


def save(fig, outdir, name) -> None:
    Path(outdir).mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(Path(outdir) / f"{name}.{ext}", dpi=150, bbox_inches="tight")
    plt.close(fig)


def _mlp_shape(arch: str):
    m = MLP_NAME.match(arch)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def correlation_text(row) -> str:
    """`P 0.87 [0.71, 0.95], S ... (n=40)` with the bootstrap intervals, or the flag's name."""
    if row.flag:
        return row.flag
    return f"P {_interval_text(row, 'pearson')}, S {_interval_text(row, 'spearman')} (n={row.n})"


def decay_name(decay: float) -> str:
    return f"decay {decay:g}" if decay else "no decay"


def flags_by_x(part: pd.DataFrame, x: str) -> list[tuple[float, str]]:
    """(x, every distinct flag of the flagged rows at x, joined by ';') for the flagged rows of `part`,
    so that two seeds flagged for different reasons at one x are both named."""
    bad = part[part.flag != ""]
    return [(value, ";".join(dict.fromkeys(f for flag in group.flag for f in flag.split(";") if f)))
            for value, group in bad.groupby(x, sort=True)]


def plot_sweep(ax, frame: pd.DataFrame, x: str, value: str, group: str, label_of=str, flag_at_bottom: bool = False) -> None:
    """Mean of `value` over the unflagged seeds against `x`, one line per `group`; error bars: the
    standard deviation over seeds where there are several, else that seed's bootstrap interval;
    flagged cells as crosses at 0 (at the bottom of the axes with `flag_at_bottom`), named below."""
    notes = []
    for key, part in frame.groupby(group, sort=False):
        ok = part[part.flag == ""]
        bounds = [f"{value}_lo", f"{value}_hi"] if f"{value}_lo" in ok else [value, value]
        stats = ok.groupby(x).agg(mean=(value, "mean"), std=(value, "std"), count=(value, "count"),
                                  lo=(bounds[0], "first"), hi=(bounds[1], "first")).reset_index().sort_values(x)
        single = stats["count"] == 1
        below = np.where(single, stats["mean"] - stats["lo"], stats["std"])
        above = np.where(single, stats["hi"] - stats["mean"], stats["std"])
        yerr = np.nan_to_num(np.vstack([below, above]).astype(float)).clip(min=0)
        line = ax.errorbar(stats[x], stats["mean"], yerr=yerr, marker="o", capsize=3, label=label_of(key))
        for at, flag in flags_by_x(part, x):
            where = ax.get_xaxis_transform() if flag_at_bottom else ax.transData  # a log axis has no 0
            ax.plot(at, 0, marker="x", color=line[0].get_color(), markersize=9, transform=where)
            notes.append((line[0].get_color(), f"× {label_of(key)}, {x} {at:g}: {flag.replace(';', ', ')}"))
    for i, (colour, note) in enumerate(notes):  # flagged cells: a cross at 0 on the plot, named below it
        ax.annotate(note, (0, 0), xycoords="axes fraction", xytext=(0, -30 - 8 * i), textcoords="offset points",
                    fontsize=6, color=colour, va="top")
    if not flag_at_bottom:
        ax.axhline(0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)


def _with_shape(frame: pd.DataFrame) -> pd.DataFrame:
    shapes = frame.arch.map(_mlp_shape)
    return frame.assign(depth=[s[0] for s in shapes], width=[s[1] for s in shapes])


def iris_figures(correlations_path, rows_path, diagnostics_path, training_path, outdir, options: dict) -> None:
    """Figures 1 and 2 of the paper. A figure with nothing to draw (a study without the depth sweep's
    width, say `architectures: [mlp-d0-w0]`, or no rows at all) says so instead of failing."""
    corr = _with_shape(pd.read_parquet(correlations_path))
    corr["flag"] = corr["flag"].fillna("")
    rows = pd.read_parquet(rows_path)
    diag = _with_shape(pd.read_csv(diagnostics_path))
    sweep_width = int(options.get("depth_sweep_width", 5))
    sweep_depth = int(options.get("width_sweep_depth", 1))
    primary = options.get("estimator", "exact")
    point = corr.test_point.iloc[0] if len(corr) else None  # one test point, named in the titles
    base = corr[(corr.quantity == "loss_change") & (corr.subset == "all") & (corr.test_point == point)]

    for name, axis, keep in [("spearman_vs_depth", "depth", base.width == sweep_width),
                             ("spearman_vs_width", "width", base.depth == sweep_depth)]:
        part = base[keep & (base.estimator == primary)]
        where = f"width {sweep_width}" if axis == "depth" else f"depth {sweep_depth}"
        if part.empty:
            _note_figure(outdir, name, f"nothing to draw: no {primary} correlations of MLPs of {where}")
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        plot_sweep(ax, part, axis, "spearman", "decay", decay_name)
        ax.set_xlabel(f"number of hidden layers ({where})" if axis == "depth" else f"width ({where})")
        ax.set_ylabel(f"Spearman(Δ̂, Δ test loss), {primary}")
        ax.legend(fontsize=8)
        save(fig, outdir, name)

    arch = options.get("scatter_architecture", rows.arch.iloc[0] if len(rows) else None)
    decays = sorted(rows.decay.unique(), reverse=True)
    if not decays:
        _note_figure(outdir, "param_change_scatter", "nothing to draw: no re-trained points")
    else:
        seed = rows.seed.min()  # one seed and test point, named in the titles
        fig, axes = plt.subplots(1, len(decays), figsize=(4.2 * len(decays), 3.8), squeeze=False)
        for ax, decay in zip(axes[0], decays):
            part = rows[(rows.arch == arch) & (rows.decay == decay) & (rows.estimator == primary)
                        & (rows.seed == seed) & (rows.test_point == point)]
            ax.scatter(part.predicted_param_change_norm, part.actual_param_change_norm, s=12)
            if len(part):
                hi = float(np.nanmax([part.predicted_param_change_norm.max(), part.actual_param_change_norm.max()]))
                ax.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--", label="identity")
            sel = corr[(corr.arch == arch) & (corr.decay == decay) & (corr.estimator == primary) & (corr.seed == seed)
                       & (corr.test_point == point) & (corr.quantity == "param_change_norm") & (corr.subset == "all")]
            text = correlation_text(sel.iloc[0]) if len(sel) else "not run"
            ax.set_title(f"{arch}, {decay_name(decay)}, seed {seed}, test point {point}\n{text}", fontsize=8)
            ax.set_xlabel("predicted ‖Δθ‖ (influence)")
            ax.set_ylabel("actual ‖θ₋z − θ*‖ (re-trained)")
            ax.grid(alpha=0.3)
        save(fig, outdir, "param_change_scatter")

    depth_rows = base[base.width == sweep_width]
    if depth_rows.empty:
        _note_figure(outdir, "estimator_spearman_vs_depth", f"nothing to draw: no correlations of MLPs of width {sweep_width}")
    else:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        depth_rows = depth_rows.assign(series=depth_rows.estimator.astype(str) + ", "
                                       + depth_rows.decay.map(decay_name).astype(str))
        plot_sweep(ax, depth_rows, "depth", "spearman", "series")
        ax.set_xlabel(f"number of hidden layers (width {sweep_width})")
        ax.set_ylabel("Spearman(Δ̂, Δ test loss)")
        ax.legend(fontsize=7)
        save(fig, outdir, "estimator_spearman_vs_depth")

    exact = (diag[(diag.estimator == primary) & (diag.width == sweep_width)]
             if "estimator" in diag and "top_eigenvalue" in diag else diag.iloc[0:0])
    if exact.empty:
        _note_figure(outdir, "top_eigenvalue_vs_depth",
                     f"nothing to draw: no top eigenvalue from {primary} for MLPs of width {sweep_width}")
        return
    exact = exact.assign(flag=exact["flag"].fillna("") if "flag" in exact else "")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    plot_sweep(ax, exact, "depth", "top_eigenvalue", "decay", decay_name, flag_at_bottom=True)
    if exact.top_eigenvalue[exact.flag == ""].gt(0).any():
        ax.set_yscale("log")
    ax.set_xlabel(f"number of hidden layers (width {sweep_width})")
    ax.set_ylabel("top |eigenvalue| of the Hessian\n(mean ± sd over the seeds that trained)", fontsize=8)
    ax.legend(fontsize=8)
    save(fig, outdir, "top_eigenvalue_vs_depth")


# --------------------------------------------------------------------------- figures for every study
def _note_figure(outdir, name, text) -> None:
    """A figure that says why there is nothing to draw (so every study has the same outputs)."""
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)
    save(fig, outdir, name)


def _interval_text(row, method: str) -> str:
    return format_interval(row[method], row.get(f"{method}_lo", np.nan), row.get(f"{method}_hi", np.nan), row["flag"])


def predicted_vs_actual(corr: pd.DataFrame, rows: pd.DataFrame, outdir, estimator: str, quantity=("predicted_loss_change", "actual_loss_change"),
                        name="predicted_vs_actual", columns: int = 4) -> None:
    """Δ̂ against Δ, one panel per (dataset, arch, decay, test point), seeds in colours, identity line;
    each panel lists every seed's Pearson and Spearman with its bootstrap interval (or flag)."""
    pred_col, true_col = quantity
    quantity_name = "loss_change" if true_col == "actual_loss_change" else true_col.replace("actual_", "")
    part = rows[rows.estimator == estimator]
    stats = corr[(corr.estimator == estimator) & (corr.quantity == quantity_name) & (corr.subset == "all")]
    keys = ["dataset", "arch", "decay", "test_point"]
    # a panel for every cell and test point with a correlation row, also those with nothing
    # re-trained (selection_failed), which have no rows to draw but a flag to name
    panel_keys = list(dict.fromkeys([tuple(k) for k in part[keys].itertuples(index=False)]
                                    + [tuple(k) for k in stats[keys].itertuples(index=False)]))
    if not panel_keys:
        return _note_figure(outdir, name, f"estimator '{estimator}' has no rows in this study")
    drawn = dict(list(part.groupby(keys, sort=False)))
    panels = [(key, drawn.get(key, part.iloc[:0])) for key in panel_keys]
    n_rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(n_rows, min(columns, len(panels)), figsize=(3.6 * min(columns, len(panels)), 3.4 * n_rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, panel) in zip(axes.flat, panels):
        dataset, arch, decay, tp = key
        lines = []
        cell_stats = stats[(stats.dataset == dataset) & (stats.arch == arch) & (stats.decay == decay) & (stats.test_point == tp)]
        for k, seed in enumerate(sorted(set(panel.seed) | set(cell_stats.seed))):
            seed_rows = panel[panel.seed == seed]
            ax.scatter(seed_rows[pred_col], seed_rows[true_col], s=10, alpha=0.7, color=colours[k % len(colours)], label=f"seed {seed}")
            sel = cell_stats[cell_stats.seed == seed]
            if len(sel):
                r = sel.iloc[0]
                lines.append(f"s{seed}: P {_interval_text(r, 'pearson')}  S {_interval_text(r, 'spearman')}"
                             + (f"  {r.noise_flag}" if r.get("noise_flag") else ""))
        values = np.concatenate([panel[pred_col].to_numpy(float), panel[true_col].to_numpy(float)])
        values = values[np.isfinite(values)]
        if len(values):
            lo, hi = float(values.min()), float(values.max())
            ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.4)
        ax.axvline(0, color="grey", lw=0.4)
        ax.set_title(f"{arch}, {decay_name(decay)}, {tp}\n" + "\n".join(lines), fontsize=6.5)
        ax.set_xlabel("predicted Δ̂ (influence)", fontsize=8)
        ax.set_ylabel("actual Δ (re-trained)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    save(fig, outdir, name)


def _sweep_with_bands(ax, frame: pd.DataFrame, x: str, value: str, group: str, label_of=str) -> None:
    """Mean over unflagged seeds against `x`, a band of ± one standard deviation across seeds (≥ 2
    seeds), error bars spanning the mean bootstrap interval, and flagged cells by name."""
    for key, part in frame.groupby(group, sort=False):
        ok = part[part.flag == ""]
        stats = ok.groupby(x).agg(mean=(value, "mean"), std=(value, "std"), count=(value, "count"),
                                  lo=(f"{value}_lo", "mean"), hi=(f"{value}_hi", "mean")).reset_index().sort_values(x)
        line, = ax.plot(stats[x], stats["mean"], marker="o", label=label_of(key))
        colour = line.get_color()
        if len(stats):
            yerr = np.vstack([(stats["mean"] - stats["lo"]).clip(lower=0).fillna(0), (stats["hi"] - stats["mean"]).clip(lower=0).fillna(0)])
            ax.errorbar(stats[x], stats["mean"], yerr=yerr, fmt="none", ecolor=colour, capsize=2, lw=0.8)
        spread = stats[stats["count"] >= 2]
        if len(spread):
            ax.fill_between(spread[x], spread["mean"] - spread["std"], spread["mean"] + spread["std"], color=colour, alpha=0.2, lw=0)
        for at, flag in flags_by_x(part, x):
            ax.plot(at, 0, marker="x", color=colour, markersize=9)
            ax.annotate(flag.replace(";", "\n"), (at, 0), fontsize=6, rotation=60, color=colour,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)


def correlation_sweeps(corr: pd.DataFrame, outdir, estimator: str, options: dict | None = None,
                       names=("correlation_vs_depth", "correlation_vs_width", "correlation_vs_decay")) -> None:
    """Pearson and Spearman of Δ̂ vs Δ against depth (at a width), width (at a depth) and decay
    (the sweeps in `names`)."""
    options = options or {}
    corr = _with_shape(corr.assign(flag=corr["flag"].fillna("")))
    base = corr[(corr.quantity == "loss_change") & (corr.subset == "all") & (corr.estimator == estimator)]
    if base.empty:
        for name in names:
            _note_figure(outdir, name, f"estimator '{estimator}' has no loss-change correlations in this study")
        return
    width = int(options.get("depth_sweep_width", base.width.mode().iloc[0] if base.width.notna().any() else 0))
    depth = int(options.get("width_sweep_depth", base.depth.mode().iloc[0] if base.depth.notna().any() else 0))
    # one series per dataset too when the study has several (Table 1: MNIST and CIFAR-10), so a
    # line's mean and band are over seeds only, never over datasets
    datasets = ["dataset"] if base["dataset"].nunique() > 1 else []
    sweeps = [("correlation_vs_depth", "depth", base[base.width == width], datasets + ["decay", "test_point"],
               f"hidden layers (width {width})"),
              ("correlation_vs_width", "width", base[base.depth == depth], datasets + ["decay", "test_point"],
               f"width ({depth} hidden layer{'s' if depth != 1 else ''})"),
              ("correlation_vs_decay", "decay", base, datasets + ["arch", "test_point"], "weight decay λ")]
    for name, x, frame, group, xlabel in [sweep for sweep in sweeps if sweep[0] in names]:

        def label_of(key, group=group):
            return ", ".join(decay_name(v) if column == "decay" else str(v) for column, v in zip(group, key))

        if frame[x].nunique() < 2:
            _note_figure(outdir, name, f"fewer than two values of {x} in this study: no sweep to draw")
            continue
        values = sorted(frame[x].unique())
        # decays span orders of magnitude and include 0: equally spaced positions, labelled by value
        position = {v: k for k, v in enumerate(values)} if x == "decay" else {v: v for v in values}
        frame = frame.assign(position=frame[x].map(position), series=list(zip(*[frame[g] for g in group])))
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, method in zip(axes, ("pearson", "spearman")):
            _sweep_with_bands(ax, frame, "position", method, "series", label_of)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{method.capitalize()}(Δ̂, Δ), {estimator}")
            ax.set_xticks([position[v] for v in values])
            ax.set_xticklabels([f"{v:g}" for v in values])
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        save(fig, outdir, name)


def _cell_labels(part: pd.DataFrame) -> pd.Series:
    """'arch / decay / seed, test point' per row (with the dataset first when there are several)."""
    prefix = part.dataset.astype(str) + "\n" if part.dataset.nunique() > 1 else ""
    return prefix + pd.Series([f"{a}\n{decay_name(d)}\nseed {s}, {t}" for a, d, s, t in
                               zip(part.arch, part.decay, part.seed, part.test_point)], index=part.index)


CORRELATION_PANELS = (("pearson", "flag", "Pearson(Δ̂, Δ)"), ("spearman", "flag", "Spearman(Δ̂, Δ)"))


def _by_cell(part: pd.DataFrame, outdir, name: str, title: str | None = None, panels=CORRELATION_PANELS) -> None:
    """One panel per (value column, flag column, y label) of `panels` (default: Pearson on top,
    Spearman below), each estimator of `part` per cell (column `cell`) with its bootstrap interval
    (`<value>_lo`, `<value>_hi`); a flagged or undefined value is a grey cross at 0, and each cell's
    flags are named once below it (with the estimators they concern, unless all), never a number."""
    cells = list(dict.fromkeys(part.cell))
    methods = list(dict.fromkeys(part.estimator))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.9 * len(cells) * max(1, len(methods)) ** 0.5 + 2),
                                                      3.5 * len(panels)), sharex=True, squeeze=False)
    axes = axes[:, 0]
    offsets = np.linspace(-0.3, 0.3, len(methods)) if len(methods) > 1 else [0.0]
    for ax, (column, flag_column, label) in zip(axes, panels):
        named = {}  # cell index -> {flag: [estimators]}: one label per cell, inside the axes
        for off, estimator in zip(offsets, methods):
            rows = part[part.estimator == estimator].set_index("cell").reindex(cells)
            xs = np.arange(len(cells)) + off
            flags = rows[flag_column].fillna("missing")
            ok = (flags == "").to_numpy() & rows[column].notna().to_numpy()
            lo = rows.get(f"{column}_lo", rows[column])
            hi = rows.get(f"{column}_hi", rows[column])
            yerr = np.vstack([(rows[column] - lo).clip(lower=0), (hi - rows[column]).clip(lower=0)])
            ax.errorbar(xs[ok], rows[column][ok], yerr=yerr[:, ok], fmt="o", capsize=2, label=estimator)
            ax.plot(xs[~ok], np.zeros(int((~ok).sum())), "x", color="grey")
            for i, flag in zip(np.flatnonzero(~ok), flags[~ok].replace("", "undefined")):
                named.setdefault(i, {}).setdefault(flag, []).append(estimator)
        for i, by_flag in named.items():
            text = "\n".join(flag.replace(";", "\n") + ("" if len(names) == len(methods) else f" ({', '.join(names)})")
                             for flag, names in by_flag.items())
            ax.text(i, -0.1, text, fontsize=5, ha="center", va="top", wrap=True, clip_on=True)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=min(4, len(methods)))
    if title:
        axes[0].set_title(title, fontsize=9)
    axes[-1].set_xticks(np.arange(len(cells)))
    axes[-1].set_xticklabels(cells, fontsize=6)
    fig.tight_layout()
    save(fig, outdir, name)


def estimator_comparison(est: pd.DataFrame, outdir, name="estimator_comparison", quantity="loss_change") -> None:
    """The estimator study per cell and test point: each estimator's Pearson and Spearman of Δ̂
    with the same ground truth Δ (bootstrap intervals), and below them its agreement with exact
    Δ̂ (Pearson over the same points) where the exact Hessian ran. A flagged value (model not
    trained, constant values) or a cell without exact is named by a cross at 0, not drawn."""
    part = est[est.quantity == quantity].copy() if len(est) else est
    if part is None or part.empty:
        return _note_figure(outdir, name, "no estimator correlations in this study")
    part["flag"] = part["flag"].fillna("")
    finite = part["agreement_with_exact"].notna()
    part["agreement_flag"] = np.where(finite, "", part["agreement_with_exact_text"].fillna("not computed"))
    part["cell"] = _cell_labels(part)
    if (part["agreement_with_exact_text"] == NO_EXACT).all():  # nothing to draw in the agreement panel
        return _by_cell(part, outdir, name, "every estimator against the same re-training (95 % bootstrap intervals); "
                        "no cell computed the exact Hessian, so no agreement with exact Δ̂")
    _by_cell(part, outdir, name, "every estimator against the same re-training, and against exact Δ̂ (95 % bootstrap intervals)",
             CORRELATION_PANELS + (("agreement_with_exact", "agreement_flag", "Pearson(Δ̂, exact Δ̂)"),))


def correlation_by_test_point(corr: pd.DataFrame, outdir, name="correlation_by_test_point", quantity="loss_change") -> None:
    """Every estimator's Pearson and Spearman of Δ̂ vs Δ (bootstrap intervals) per cell and test
    point: the audit's main figure. A flagged value (model not trained, estimator failed, constant
    values) is drawn as a cross at 0 with its flag's name, never as a number."""
    part = corr[(corr.quantity == quantity) & (corr.subset == "all")].copy()
    if part.empty:
        return _note_figure(outdir, name, f"no '{quantity}' correlations in this study")
    part["flag"] = part["flag"].fillna("")
    part["cell"] = _cell_labels(part)
    _by_cell(part, outdir, name, "influence estimate vs re-training, per cell and test point (95 % bootstrap intervals)")


def study_figures(correlations_path, rows_path, estimators_path, outdir, options: dict | None = None,
                  names=("predicted_vs_actual", "correlation_by_test_point", "correlation_vs_depth", "correlation_vs_width",
                         "correlation_vs_decay", "estimator_comparison")) -> None:
    """The overview figures `names` (study/outputs.py decides which a study has something to draw
    in): predicted vs actual per cell, correlations per test point, sweeps with bands, estimator study."""
    options = options or {}
    corr = pd.read_parquet(correlations_path)
    corr["flag"] = corr["flag"].fillna("")
    if corr.empty:  # every estimator failed or nothing was re-trained: each figure says so
        for name in names:
            _note_figure(outdir, name, "nothing to draw: the study has no correlations")
        return
    estimator = options.get("estimator") or ("exact" if (corr.estimator == "exact").any() else corr.estimator.iloc[0])
    if "predicted_vs_actual" in names:
        predicted_vs_actual(corr, pd.read_parquet(rows_path), outdir, estimator)
    if "correlation_by_test_point" in names:
        correlation_by_test_point(corr, outdir)
    sweeps = [n for n in names if n.startswith("correlation_vs_")]
    if sweeps:
        correlation_sweeps(corr, outdir, estimator, options, names=sweeps)
    if "estimator_comparison" in names:
        est = pd.read_csv(estimators_path, keep_default_na=False, na_values=[""])
        estimator_comparison(est, outdir)


def truth_cell_labels(part: pd.DataFrame, whole=()) -> pd.Series:
    """'arch / decay / test point' per row (no test point for a truth in `whole`, scored over all
    of them), with the dataset and the seed where `part` has several, so that no cell's point
    hides another's (correlation_by_truth draws one point per label and estimator)."""
    dataset = part.dataset.astype(str) + "\n" if "dataset" in part and part.dataset.nunique() > 1 else ""
    seed = "\nseed " + part.seed.astype(str) if "seed" in part and part.seed.nunique() > 1 else ""
    return dataset + pd.Series([f"{a}\n{decay_name(d)}" + ("" if t in whole else f"\n{p}")
                                for a, d, p, t in zip(part.arch, part.decay, part.test_point, part.truth)],
                               index=part.index, dtype=object) + seed


def correlation_by_truth(corr: pd.DataFrame, outdir, name: str = "correlation_by_truth") -> None:
    """Each estimator's Pearson and Spearman (bootstrap intervals) against each ground truth, one
    column of panels per truth (LOO, PBRF, group removal, LDS: the mean over test points), per
    cell and test point (subset `all`, loss change); flagged values named, not drawn."""
    part = corr[(corr.subset == "all") & (corr.quantity == "loss_change")].copy()
    part["truth"] = part["truth"].fillna("loo") if "truth" in part else "loo"
    whole = [t for t, truth in TRUTHS.items() if truth.mean_over_points]  # LDS: one row over all test points
    part = part[~part.truth.isin(whole) | (part.test_point == "mean")]
    if part.empty:
        return _note_figure(outdir, name, "no correlations against any ground truth")
    part["flag"] = part["flag"].fillna("")
    truths = [t for t in TRUTHS if (part.truth == t).any()]
    part["cell"] = truth_cell_labels(part, whole)
    estimators = list(dict.fromkeys(part.estimator))
    offsets = np.linspace(-0.3, 0.3, len(estimators)) if len(estimators) > 1 else [0.0]
    widest = max(part[part.truth == t].cell.nunique() for t in truths)
    fig, axes = plt.subplots(2, len(truths), figsize=(max(4, 0.8 * widest + 1.5) * len(truths), 7), squeeze=False,
                             sharey=True)
    titles = {t: truth.title for t, truth in TRUTHS.items()}
    for j, truth in enumerate(truths):
        here = part[part.truth == truth]
        cells = list(dict.fromkeys(here.cell))
        for i, method in enumerate(("pearson", "spearman")):
            ax = axes[i, j]
            if truth in whole and method == "pearson":
                ax.text(0.5, 0.5, f"{TRUTHS[truth].label} is a Spearman score", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                continue
            for e, (off, est) in enumerate(zip(offsets, estimators)):
                if not (here.estimator == est).any():
                    continue  # e.g. loo_retraining exists only under PBRF
                rows = here[here.estimator == est].drop_duplicates("cell").set_index("cell").reindex(cells)
                xs = np.arange(len(cells)) + off
                present = rows.flag.notna().to_numpy()
                ok = present & (rows.flag.fillna("") == "").to_numpy() & np.isfinite(rows[method].to_numpy(float))
                yerr = np.vstack([(rows[method] - rows[f"{method}_lo"]).clip(lower=0).fillna(0),
                                  (rows[f"{method}_hi"] - rows[method]).clip(lower=0).fillna(0)])
                ax.errorbar(xs[ok], rows[method][ok], yerr=yerr[:, ok], fmt="o", capsize=2, label=est, color=f"C{e}")
                for x, flag in zip(xs[present & ~ok], rows.flag[present & ~ok]):
                    ax.plot(x, 0, marker="x", color="grey")
                    ax.annotate(flag or "undefined", (x, 0), fontsize=6, rotation=60)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_ylim(-1.05, 1.05)
            ax.grid(alpha=0.3)
            ax.set_xticks(np.arange(len(cells)))
            ax.set_xticklabels(cells, fontsize=6)
            if i == 0:
                ax.set_title(titles[truth])
            if j == 0:
                ax.set_ylabel(f"{method.capitalize()}(Δ̂, truth)")
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    axes[0, 0].legend(handles.values(), handles.keys(), fontsize=7, ncol=min(4, len(handles)))
    fig.tight_layout()
    save(fig, outdir, name)
