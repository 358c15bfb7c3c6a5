"""Figures (matplotlib, PNG and PDF). A flagged value is never drawn as a number: it is shown as a
grey cross on the axis with the flag's name next to it."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .models import MLP_NAME  # noqa: E402


def save(fig, outdir, name) -> None:
    Path(outdir).mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(Path(outdir) / f"{name}.{ext}", dpi=150, bbox_inches="tight")
    plt.close(fig)


def _mlp_shape(arch: str):
    m = MLP_NAME.match(arch)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def decay_name(decay: float) -> str:
    return f"decay {decay:g}" if decay else "no decay"


def plot_sweep(ax, frame: pd.DataFrame, x: str, value: str, group: str, label_of=str) -> None:
    """Mean ± std over seeds of `value` against `x`, one line per `group`; flagged cells by name."""
    for key, part in frame.groupby(group, sort=False):
        ok = part[part.flag == ""]
        stats = ok.groupby(x)[value].agg(["mean", "std", "count"]).reset_index().sort_values(x)
        line = ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=label_of(key))
        bad = part[part.flag != ""].drop_duplicates(x)
        for _, row in bad.iterrows():
            ax.plot(row[x], 0, marker="x", color=line[0].get_color(), markersize=9)
            ax.annotate(row["flag"].replace(";", "\n"), (row[x], 0), fontsize=6, rotation=60,
                        color=line[0].get_color(), xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)


def _with_shape(frame: pd.DataFrame) -> pd.DataFrame:
    shapes = frame.arch.map(_mlp_shape)
    return frame.assign(depth=[s[0] for s in shapes], width=[s[1] for s in shapes])


def iris_figures(correlations_path, rows_path, diagnostics_path, training_path, outdir, options: dict) -> None:
    corr = _with_shape(pd.read_parquet(correlations_path))
    corr["flag"] = corr["flag"].fillna("")
    rows = pd.read_parquet(rows_path)
    diag = _with_shape(pd.read_csv(diagnostics_path))
    sweep_width = int(options.get("depth_sweep_width", 5))
    sweep_depth = int(options.get("width_sweep_depth", 1))
    primary = options.get("estimator", "exact")
    base = corr[(corr.target == "loss_change") & (corr.subset == "all") & (corr.test_point == corr.test_point.iloc[0])]

    for name, axis, keep in [("spearman_vs_depth", "depth", base.width == sweep_width),
                             ("spearman_vs_width", "width", base.depth == sweep_depth)]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        plot_sweep(ax, base[keep & (base.estimator == primary)], axis, "spearman", "decay", decay_name)
        ax.set_xlabel(f"number of hidden layers (width {sweep_width})" if axis == "depth" else f"width (depth {sweep_depth})")
        ax.set_ylabel(f"Spearman(Δ̂, Δ test loss), {primary}")
        ax.legend(fontsize=8)
        save(fig, outdir, name)

    arch = options.get("scatter_architecture", rows.arch.iloc[0])
    decays = sorted(rows.decay.unique(), reverse=True)
    fig, axes = plt.subplots(1, len(decays), figsize=(4.2 * len(decays), 3.8), squeeze=False)
    for ax, decay in zip(axes[0], decays):
        part = rows[(rows.arch == arch) & (rows.decay == decay) & (rows.estimator == primary)]
        part = part[part.test_point == part.test_point.iloc[0]] if len(part) else part
        ax.scatter(part.predicted_param_change_norm, part.actual_param_change_norm, s=12)
        if len(part):
            hi = float(np.nanmax([part.predicted_param_change_norm.max(), part.actual_param_change_norm.max()]))
            ax.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--", label="identity")
            sel = corr[(corr.arch == arch) & (corr.decay == decay) & (corr.estimator == primary)
                       & (corr.target == "param_change_norm") & (corr.subset == "all")]
            if len(sel):
                r = sel.iloc[0]
                text = r.flag if r.flag else f"Spearman {r.spearman:.2f}, Pearson {r.pearson:.2f}"
                ax.set_title(f"{arch}, {decay_name(decay)}\n{text}", fontsize=9)
        ax.set_xlabel("predicted ‖Δθ‖ (influence)")
        ax.set_ylabel("actual ‖θ₋z − θ*‖ (re-trained)")
        ax.grid(alpha=0.3)
    save(fig, outdir, "param_change_scatter")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    depth_rows = base[base.width == sweep_width].assign(series=lambda f: f.estimator + ", " + f.decay.map(decay_name))
    plot_sweep(ax, depth_rows, "depth", "spearman", "series")
    ax.set_xlabel(f"number of hidden layers (width {sweep_width})")
    ax.set_ylabel("Spearman(Δ̂, Δ test loss)")
    ax.legend(fontsize=7)
    save(fig, outdir, "estimator_spearman_vs_depth")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    exact = diag[(diag.estimator == primary) & (diag.width == sweep_width)] if "estimator" in diag else diag.iloc[0:0]
    for decay, part in exact.groupby("decay"):
        stats = part.groupby("depth")["top_eigenvalue"].agg(["mean", "std"]).reset_index()
        ax.errorbar(stats.depth, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=decay_name(decay))
    ax.set_yscale("log")
    ax.set_xlabel(f"number of hidden layers (width {sweep_width})")
    ax.set_ylabel("top |eigenvalue| of the Hessian")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, outdir, "top_eigenvalue_vs_depth")
