"""The estimator study: what each estimator costs and how well it matches each ground truth.

- `estimator_cost.csv` (`cost_table`): one row per (cell, estimator, test point, ground truth)
  with the estimator's seconds in that cell and its correlation with the truth, with bootstrap
  intervals or the flag that replaces them. Seconds = `fit_seconds` + `scoring_seconds`, both as
  the estimator measured them in its influence job (its diagnostics JSON): the fit once per
  trained model, the scoring of every training point for all the cell's test points together
  (`seconds_all_points`), so every test point of a cell has the same seconds. Loading the model
  and the data is not counted; an inverse-Hessian estimator's scoring includes its ‖∇ℓ_i‖ and
  ‖Δθ̂_i‖ columns (where the n × p gradient matrix is affordable). `fit_seconds` is empty for an estimator without a fit step
  (grad_cosine, tracin): all its work is scoring.
- The correlation drawn (`score`, `correlation[_lo, _hi]`): Pearson of Δ̂ with the truth, per
  test point; for a truth scored over all test points at once (LDS) its headline, the mean over
  test points of a Spearman (test point `mean`), as in truths.csv.
- `cost_vs_accuracy.png`: that correlation against the seconds (log axis), one panel per truth,
  one colour and marker per estimator, one point per cell and test point.
- `estimator_study.html`: the table, with one line per estimator of what it computes and why it
  might fail (each estimator's `notes`, gathered in `ESTIMATOR_NOTES`; also in
  workflow/report/estimator_study.rst).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..estimators import registry as estimator_registry
from ..io import write_csv
from ..stats import METHODS
from ..truths.registry import TRUTHS
from .aggregate import CELL_KEYS, write_pages

# method → (what it computes, why it might fail): each estimator's own `notes` (estimators/registry.notes),
# and the LOO re-training scored against PBRF, which is a ground truth, not an estimator
ESTIMATOR_NOTES: dict[str, tuple[str, str]] = {
    **{method: estimator_registry.notes(method) for method in estimator_registry.BUILT_IN},
    "loo_retraining": ('the leave-one-out re-training itself, scored against PBRF (a ground truth, not an estimator)',
                       're-training noise; it has no fit + scoring seconds'),
}
PLUGIN_NOTE = ("an estimator class of the user's own (its docstring says what it computes)",
               "unknown to this report")
NO_SECONDS = "no seconds recorded"


def estimator_note(method: str) -> str:
    """'computes …; may fail: …' for a method name (a plugin's `file.py:Class` gets a generic line)."""
    from ..plugins import PluginError

    try:  # a class of the user's own may write its own `notes`
        own = ESTIMATOR_NOTES.get(method) or estimator_registry.notes(method)
    except PluginError:  # its file is not where this report runs
        own = None
    computes, fails = own or PLUGIN_NOTE
    return f"{computes}; may fail: {fails}"


def _finite(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def estimator_seconds(diagnostic_paths, diagnostic_cells) -> pd.DataFrame:
    """Per cell and estimator (one diagnostics JSON each, `diagnostic_cells[i]` its cell keys):
    `fit_seconds`, `scoring_seconds` (the largest `seconds_all_points` of its test points: all
    of them are scored together) and `seconds` = fit (0 where there is no fit step) + scoring,
    empty where the estimator recorded no scoring time."""
    if len(diagnostic_paths) != len(diagnostic_cells):
        raise ValueError("estimator_seconds: one cell per diagnostics file is needed")
    out = []
    for path, cell in zip(diagnostic_paths, diagnostic_cells):
        record = json.loads(Path(path).read_text())
        if "estimator" not in record:
            raise ValueError(f"{path}: the diagnostics name no estimator")
        fit = _finite(record.get("fit_seconds"))
        scoring = [_finite(p.get("seconds_all_points")) for p in record.get("test_points", [])]
        scoring = max((s for s in scoring if not math.isnan(s)), default=math.nan)
        out.append({**{k: cell[k] for k in CELL_KEYS}, "estimator": record["estimator"],
                    "method": str(record.get("method", record["estimator"])), "fit_seconds": fit,
                    "scoring_seconds": scoring, "seconds": scoring + (0.0 if math.isnan(fit) else fit)})
    return pd.DataFrame(out, columns=CELL_KEYS + ["estimator", "method", "fit_seconds", "scoring_seconds", "seconds"])


COST_COLUMNS = CELL_KEYS + ["estimator", "method", "test_point", "truth", "n", "score", "correlation", "correlation_lo",
                            "correlation_hi", "flag", "pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo",
                            "spearman_hi", "fit_seconds", "scoring_seconds", "seconds"]


def cost_table(correlations: pd.DataFrame, seconds: pd.DataFrame) -> pd.DataFrame:
    """Every estimator × every ground truth of the study's correlations (subset `all`, loss
    change; truth `loo` where the column is missing or empty), one row per cell and test point (a
    truth scored over all test points: its `mean` row only), with the estimator's seconds in the
    cell. `score`/`correlation`: Pearson, or Spearman for such a truth (LDS)."""
    if correlations.empty:
        return pd.DataFrame(columns=COST_COLUMNS)
    part = correlations[(correlations.subset == "all") & (correlations.quantity == "loss_change")].copy()
    part["truth"] = part["truth"].fillna("loo") if "truth" in part else "loo"
    whole = {name for name, truth in TRUTHS.items() if truth.mean_over_points}
    part = part[~part.truth.isin(whole) | (part.test_point == "mean")]
    part["flag"] = part["flag"].fillna("").astype(str)
    part["score"] = np.where(part.truth.isin(whole), "spearman", "pearson")
    for end in ("", "_lo", "_hi"):
        for method in METHODS:
            if f"{method}{end}" not in part:
                part[f"{method}{end}"] = math.nan
        part[f"correlation{end}"] = np.where(part.score == "pearson", part[f"pearson{end}"], part[f"spearman{end}"])
    part["n"] = part.get("n", math.nan)
    # the cell keys as the correlations hold them (a config's `decays: [0]` is an int there)
    timing = seconds.drop_duplicates(CELL_KEYS + ["estimator"]).astype({k: part[k].dtype for k in CELL_KEYS})
    part = part.merge(timing, on=CELL_KEYS + ["estimator"], how="left")
    part["method"] = part["method"].fillna(part["estimator"])
    order = {t: k for k, t in enumerate(TRUTHS)}
    part["_truth"] = part.truth.map(order).fillna(len(order))
    part["_estimator"] = part.estimator.map({e: k for k, e in enumerate(dict.fromkeys(part.estimator))})
    part = part.sort_values(["_truth"] + CELL_KEYS + ["test_point", "_estimator"], kind="stable")
    return part[COST_COLUMNS].reset_index(drop=True)


def write_cost_table(correlations_path, diagnostic_paths, diagnostic_cells, out) -> pd.DataFrame:
    """Read the study's correlations (truths_correlations.parquet or correlations.parquet) and
    the estimators' diagnostics, write estimator_cost.csv."""
    table = cost_table(pd.read_parquet(correlations_path), estimator_seconds(diagnostic_paths, diagnostic_cells))
    write_csv(table, out)
    return table


MARKERS = "osD^v<>PXph*"


def cost_vs_accuracy(table: pd.DataFrame, outdir, name: str = "cost_vs_accuracy") -> None:
    """Correlation with each truth (y; Pearson, LDS: its mean Spearman) against seconds of fit +
    scoring (x, log), one panel per truth, one colour and marker per estimator, one point per
    cell and test point, with its bootstrap interval. A flagged or undefined correlation is a
    cross at 0 in the estimator's colour, named beside it; a row without seconds is named under
    the panel, never drawn."""
    from . import figures  # pyplot with the Agg backend, save and the note figure

    plt = figures.plt
    from matplotlib import ticker
    if table.empty:
        return figures._note_figure(outdir, name, "nothing to draw: no estimator has a correlation with a ground truth")
    table = table.assign(flag=table["flag"].fillna("").astype(str))
    truths = list(dict.fromkeys(table.truth))
    estimators = list(dict.fromkeys(table.estimator))
    style = {e: (f"C{k % 10}", MARKERS[k % len(MARKERS)]) for k, e in enumerate(estimators)}
    methods = dict(zip(table.estimator, table.method.fillna(table.estimator))) if "method" in table else {}
    label = {e: e if methods.get(e, e) == e else f"{e} ({methods[e]})" for e in estimators}
    fig, axes = plt.subplots(1, len(truths), figsize=(4.6 * len(truths), 4.4), squeeze=False)
    for ax, truth in zip(axes[0], truths):
        here = table[table.truth == truth]
        seconds = here.seconds.astype(float)
        timed = np.isfinite(seconds) & (seconds > 0)
        ok = timed & (here.flag == "") & np.isfinite(here.correlation.astype(float))
        for estimator in estimators:
            colour, marker = style[estimator]
            rows = here[ok & (here.estimator == estimator)]
            if len(rows):
                yerr = np.vstack([(rows.correlation - rows.correlation_lo).clip(lower=0).fillna(0),
                                  (rows.correlation_hi - rows.correlation).clip(lower=0).fillna(0)])
                ax.errorbar(rows.seconds, rows.correlation, yerr=yerr, fmt=marker, color=colour, capsize=2,
                            alpha=0.85, label=label[estimator])
            bad = here[timed & ~ok & (here.estimator == estimator)]
            for x, flag in zip(bad.seconds, bad.flag):
                ax.plot(x, 0, marker="x", color=colour, markersize=8)
                ax.annotate((flag or "undefined").replace(";", "\n"), (x, 0), fontsize=5, rotation=60, color=colour,
                            xytext=(2, 2), textcoords="offset points")
        untimed = sorted(set(here.estimator[~timed]))
        if untimed:
            ax.annotate(f"{NO_SECONDS} (not drawn): {', '.join(untimed)}", (0, 0), xycoords="axes fraction",
                        xytext=(0, -34), textcoords="offset points", fontsize=6, va="top")
        if timed.any():
            ax.set_xscale("log")
            # plain numbers, at 1, 2, 5 × 10^k over a short range (minor labels there overlap)
            span = float(seconds[timed].max() / seconds[timed].min())
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 1e3 else (1.0,)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            ax.text(0.5, 0.5, NO_SECONDS, ha="center", va="center", transform=ax.transAxes)
        title = TRUTHS[truth].title if truth in TRUTHS else truth
        score = "Spearman" if (here.score == "spearman").all() else "Pearson"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"{score}(Δ̂, {TRUTHS[truth].label if truth in TRUTHS else truth})")
        ax.set_xlabel("seconds of fit + scoring per cell")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.grid(alpha=0.3, which="both")
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    if handles:
        axes[0, 0].legend(handles.values(), handles.keys(), fontsize=7, ncol=min(3, len(handles)))
    fig.tight_layout()
    figures.save(fig, outdir, name)


def estimator_study_page(table: pd.DataFrame, methods: dict, path, selection: dict | None = None) -> None:
    """The estimator study's HTML page: one line per estimator (`methods`: name → method) of what
    it computes and why it might fail, then every estimator × truth row with its seconds."""
    from ..stats import format_interval

    names = list(dict.fromkeys(list(methods) + list(table.estimator.unique() if len(table) else [])))
    notes = pd.DataFrame([{"estimator": e, "method": methods.get(e, e), "what it computes; why it might fail":
                           estimator_note(methods.get(e, e))} for e in names],
                         columns=["estimator", "method", "what it computes; why it might fail"])
    view = table.copy()
    if len(view):
        view["correlation_text"] = [format_interval(v, a, b, f) for v, a, b, f in
                                    zip(view.correlation, view.correlation_lo, view.correlation_hi, view.flag.fillna(""))]
    keep = [c for c in CELL_KEYS + ["estimator", "test_point", "truth", "score", "correlation_text", "n", "fit_seconds",
                                    "scoring_seconds", "seconds"] if c in view.columns]
    chosen = "; ".join(f"{arch}: select.by {text}" for arch, text in (selection or {}).items())
    note = ("Seconds: fit + scoring of all the cell's test points, as each estimator measured them (model and data "
            "loading not counted; the device and other jobs sharing it change them). Correlation: Pearson of Δ̂ "
            "with the truth per test point (LDS: the mean over test points of a Spearman), 95 % bootstrap interval "
            "or the flag. LOO and PBRF score the re-trained points chosen by the selection"
            + (f" ({chosen})" if chosen else "") + ", and where the select.by estimator failed a test point a "
            "random sample of as many (selected.json: fallback); the verdict's `selection` column "
            "counts each label (a `random` sample favours no estimator, `union` none). Groups' tails are drawn "
            "from the same estimator, or under union or random from every estimator's; LDS and random groups favour no "
            "estimator.")
    write_pages([(notes, "Estimators: what each computes and why it might fail", ""),
                 (view[keep], "Every estimator against every ground truth, with its cost", note)], path,
                "Estimator study")


def estimator_study(correlations_path, diagnostic_paths, diagnostic_cells, methods: dict, table_out, figure_dir,
                    page_out, selection: dict | None = None) -> pd.DataFrame:
    """estimator_cost.csv, the cost_vs_accuracy figure (PNG and PDF in `figure_dir`) and the page."""
    table = write_cost_table(correlations_path, diagnostic_paths, diagnostic_cells, table_out)
    cost_vs_accuracy(table, figure_dir)
    estimator_study_page(table, methods, page_out, selection)
    return table
