"""`report/index.html`: one self-contained page per study that leads with the verdict (verdict.csv,
verdict_best.csv: study/verdict.py) as one matrix per ground truth (a row per cell and test point, a
column per estimator, a coloured word in each) with its best-estimator line and a legend; then the
figures that carry it, embedded as base64 PNG; then every verdict's evidence in a collapsed
<details>; then links to the study's other pages and tables. No network access is needed to view it."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import pandas as pd

from ..io import atomic_path
from .aggregate import _text
from ..study.verdict import (FAILED, NO_INTERVAL, NO_SPREAD, NO_TRUTH, NOT_MEASURED, NOT_TRAINED, PARTLY, RELIABLE,
                             TOO_NOISY, UNRELIABLE, settings)

COLOURS = {  # word: (background, text)
    RELIABLE: ("#c8e6c9", "#1b5e20"), PARTLY: ("#fff3b0", "#6d5400"), UNRELIABLE: ("#ffcdd2", "#b71c1c"),
    TOO_NOISY: ("#e1d5f0", "#4a2a7a"), NOT_MEASURED: ("#e3e8ef", "#37474f"), NO_INTERVAL: ("#e3e8ef", "#37474f"),
    NOT_TRAINED: ("#b71c1c", "#ffffff"), FAILED: ("#b71c1c", "#ffffff"), NO_TRUTH: ("#9e9e9e", "#ffffff"),
    NO_SPREAD: ("#9e9e9e", "#ffffff"),
}
LINE_COLOURS = {RELIABLE: "#2e7d32", PARTLY: "#b58900", UNRELIABLE: "#c62828", TOO_NOISY: "#6a3d9a",
                NOT_MEASURED: "#607d8b", NO_INTERVAL: "#607d8b"}
SHORT = {PARTLY: "partly", TOO_NOISY: "too noisy", NOT_MEASURED: "not measured", NOT_TRAINED: "did not train",
         FAILED: "failed", NO_TRUTH: "no truth", NO_SPREAD: "no spread"}  # the matrix's words; others as they are
TRUTHS = {"loo": "leave-one-out re-training (LOO)", "pbrf": "the proximal Bregman response function (PBRF)",
          "groups": "removal of groups of points", "lds": "re-training on random subsets (LDS)"}
CELL_KEYS = ["dataset", "arch", "decay", "seed"]
LINKS = [("summary.html", "every correlation with its interval and p-values"),
         ("summary_by_seed.html", "the spread over seeds"), ("noise.html", "the ground truth's drift and repeat noise"),
         ("estimators.html", "every estimator against the same ground truth"), ("benchmarks.html", "run time and memory"),
         ("config.html", "the configuration used")]
STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 16px 24px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
h3 { font-size: 15px; margin: 14px 0 2px 0; } p.best { margin: 0 0 4px 0; color: #444; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
table.matrix td.v { line-height: 1.15; cursor: help; padding: 2px 5px; }
table.matrix td.v b { display: block; } table.matrix small { font-size: 11px; opacity: 0.85; white-space: nowrap; }
table.matrix th { white-space: nowrap; font-weight: 600; }
table.matrix td.none { color: #999; text-align: center; }
#verdict th { position: sticky; top: 0; }
td.word { font-weight: 700; white-space: nowrap; }
#verdict td:nth-child(-n+10) { white-space: nowrap; }
p.legend { max-width: 75em; color: #333; }
p.legend span { display: inline-block; padding: 0 5px; margin: 1px; border-radius: 3px; font-weight: 600; }
details { margin: 20px 0; } summary { cursor: pointer; font-weight: 600; font-size: 15px; }
figure { margin: 12px 0 24px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { max-width: 60em; color: #444; }
"""


def _number(value, digits=2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(value) else f"{value:.{digits}g}"


def verdict_figure(table: pd.DataFrame, options: dict) -> bytes:
    """PNG: every judged correlation's interval (one line per row, coloured by its word), the point
    value, the noise ceiling (a black bar) and the two thresholds; rows without a number are named
    at the left by their word, never drawn as a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.24 * max(len(rows), 1)))
    labels = []
    for y, r in rows.iterrows():
        labels.append(f"{r.arch} · decay {float(r.decay):g} · seed {r.seed} · {r.test_point} · {r.estimator} vs {r.truth}")
        value = float(r.value) if _number(r.value) else math.nan
        if math.isfinite(value):
            colour = LINE_COLOURS.get(r.verdict, "#333333")
            lo, hi = float(r.lo), float(r.hi)
            if math.isfinite(lo):
                ax.plot([lo, hi], [y, y], color=colour, lw=3, solid_capstyle="butt")
            ax.plot([value], [y], "o", color=colour, ms=5, mec="black", mew=0.5)
            ceiling = float(r.ceiling) if _number(r.ceiling) else math.nan
            if math.isfinite(ceiling) and ceiling < 1:
                ax.plot([ceiling], [y], marker="|", color="black", ms=12, mew=2)
            ax.text(1.03, y, r.verdict, va="center", fontsize=7, color=colour)
        else:
            ax.plot([-1], [y], "x", color="grey")
            ax.text(-0.97, y, r.verdict + (f" ({r.flag})" if _text(r.flag) else ""), va="center", fontsize=7, color="#555")
    for x, name in ((float(options["reliable"]), "reliable"), (float(options["partly_reliable"]), "partly reliable")):
        ax.axvline(x, color="#555", ls="--", lw=0.8)
        ax.text(x, -0.9, f" {name} ≥ {x:g}", fontsize=7, color="#555", va="bottom")
    ax.axvline(0, color="#bbb", lw=0.6)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -1.2)
    ax.set_xlim(-1.02, 1.3)
    ax.set_xticks([-1, -0.5, 0, 0.5, 1])
    ax.set_xlabel("correlation of Δ̂ with the re-trained Δ: point and bootstrap interval; the verdict reads the lower end")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _noise(r) -> str:
    noise = _text(r.noise_source)
    if _number(r.ceiling):
        noise += f"; ceiling {float(r.ceiling):.2f}"
    if _number(r.sigma_repeat) and float(r.sigma_repeat) > 0:
        noise += f" (σ_repeat {_number(r.sigma_repeat)}, σ_effect {_number(r.sigma_effect)})"
    return noise


def _seeds(r) -> str:
    seeds = f"{int(r.seeds_behind_row)} of {int(r.study_seeds)}"
    if int(r.study_seeds) > 1:
        seeds += f": {_text(r.over_seeds)}; {_text(r.verdicts_over_seeds)}"
    return seeds


def _word_style(word: str) -> str:
    background, colour = COLOURS.get(word, ("#ffffff", "#000000"))
    return f"background:{background};color:{colour}"


def _verdict_rows(table: pd.DataFrame) -> str:
    """The evidence table: one row per cell, test point, estimator and ground truth, every column."""
    head = ["dataset", "model", "decay", "seed", "test point", "estimator", "ground truth", "verdict",
            "correlation", "value [interval]", "re-trained points", "noise of the ground truth", "seeds", "why"]
    out = ["<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in table.itertuples(index=False):
        cells = [r.dataset, r.arch, f"{float(r.decay):g}", r.seed, r.test_point, r.estimator, r.truth]
        out.append("<tr>" + "".join(f"<td>{html.escape(_text(c))}</td>" for c in cells)
                   + f'<td class="word" style="{_word_style(r.verdict)}">{html.escape(r.verdict)}</td>'
                   + "".join(f"<td>{html.escape(_text(c))}</td>" for c in
                             (r.correlation, r.interval, f"{int(r.n)}: {_text(r.selection)}", _noise(r), _seeds(r),
                              r.reason))
                   + "</tr>")
    return "".join(out) + "</tbody>"


def _matrix_cell(r) -> str:
    """One verdict: its short word, the correlation's initial (P, S, LDS) with value and interval, or
    the flag's name; the whole evidence in the tooltip. Where the noise is not measured, the left
    edge takes the colour of what the interval alone reads."""
    shown = _number(r.value) != ""
    name = ("LDS" if r.correlation == "LDS" else str(r.correlation)[:1]) + " " if shown else ""
    style = _word_style(r.verdict)
    if r.verdict == NOT_MEASURED and _text(r.grade):
        style += f";border-left:5px solid {LINE_COLOURS.get(r.grade, '#333')}"
    tip = "\n".join([f"{r.estimator} against {r.truth}: {r.verdict}", f"{r.correlation} {_text(r.interval)}",
                     f"why: {_text(r.reason)}", f"re-trained points: {int(r.n)}: {_text(r.selection)}",
                     f"noise of the ground truth: {_noise(r)}", f"seeds: {_seeds(r)}"])
    return (f'<td class="v" style="{style}" title="{html.escape(tip)}">'
            f"<b>{html.escape(SHORT.get(r.verdict, r.verdict))}</b><small>{html.escape(name + _text(r.interval))}"
            "</small></td>")


def _matrix(part: pd.DataFrame) -> str:
    """One ground truth's verdicts: a row per cell (dataset, model, decay, seed) and test point, a
    column per estimator, in the order of verdict.csv."""
    estimators = list(dict.fromkeys(part.estimator))
    out = ["<table class='matrix'><thead><tr><th>cell</th><th>test point</th>"
           + "".join(f"<th>{html.escape(e)}</th>" for e in estimators) + "</tr></thead><tbody>"]
    for _, rows in part.groupby(CELL_KEYS, sort=False):
        points = list(dict.fromkeys(rows.test_point))
        r = rows.iloc[0]
        seeds = int(r.study_seeds)
        label = (f"<th rowspan='{len(points)}'>{html.escape(_text(r.dataset))}<br>{html.escape(_text(r.arch))} · decay "
                 f"{float(r.decay):g}<br>seed {html.escape(_text(r.seed))} <small>(of {seeds} "
                 f"seed{'s' if seeds > 1 else ''})</small></th>")
        for i, point in enumerate(points):
            here = {r.estimator: r for r in rows[rows.test_point == point].itertuples(index=False)}
            out.append("<tr>" + (label if i == 0 else "") + f"<th>{html.escape(_text(point))}</th>"
                       + "".join(_matrix_cell(here[e]) if e in here else "<td class='none'>–</td>" for e in estimators)
                       + "</tr>")
    return "".join(out) + "</tbody></table>"


def _counts(verdict: pd.DataFrame) -> str:
    """`44 verdicts over 8 cells: 12 reliable, 20 partly reliable, ...`, each word in its colour."""
    counts = verdict.verdict.value_counts()
    words = ", ".join(f'<b style="color:{COLOURS.get(w, ("", "#000"))[1]}">{int(c)} {html.escape(w)}</b>'
                      for w, c in counts.items())
    cells = verdict[CELL_KEYS].drop_duplicates()
    return f"{len(verdict)} verdicts over {len(cells)} cells: {words}."


def _legend(options: dict, confidence: float | None) -> str:
    """The words, the thresholds they read and the correlation they rest on."""
    chips = " ".join(f'<span style="{_word_style(w)}">{html.escape(SHORT.get(w, w))}</span>'
                     + (f" ({html.escape(w)})" if w in SHORT else "") for w in COLOURS)
    level = f"{confidence:.0%} " if confidence else ""
    return (
        f"<p class='legend'>Each coloured word scores one estimator's predicted loss changes Δ̂ against one ground "
        f"truth re-trained in one cell and test point; the small text gives the correlation it rests on (P: Pearson, "
        f"S: Spearman, LDS: the linear datamodeling score), its value and {level}bootstrap interval, or the flag's "
        f"name; hover for the evidence. The word reads the <b>lower</b> end of the interval: <b>reliable</b> when it "
        f"is ≥ {float(options['reliable']):g}, <b>partly</b> reliable when ≥ {float(options['partly_reliable']):g}, "
        f"else <b>unreliable</b> (verdict.correlation: {html.escape(str(options['correlation']))}; 'weaker' takes the "
        f"lower of Pearson and Spearman). Before that, the ground truth's own noise: the ceiling √max(0, 1 − "
        f"σ²_repeat/σ²_effect) is the most any estimator can expect to correlate with it; below "
        f"{float(options['min_ceiling']):g} the verdict is <b>too noisy</b> to judge. Without repeat re-trainings "
        f"(loo.repeats.count) the noise is <b>not measured</b> and only 'reliable' can be said; the cell's left edge "
        f"then takes the colour of what the interval alone reads. Flags (did not train, failed, no truth, no spread) "
        f"are named, never shown as numbers. Words: {chips}.</p>")


def index_page(study: str, verdict: pd.DataFrame, best: pd.DataFrame, figures: list[tuple[str, str]],
               options: dict | None = None, confidence: float | None = None, links: list[tuple[str, str]] = ()) -> str:
    """The page's HTML: the verdict matrix per ground truth with the best-estimator line, the legend,
    the figures, then every row's evidence in a collapsed <details>. `figures`: (PNG path, caption)
    of the study's figures that carry the verdict; `links`: (path relative to the page, description)
    of the study's pages beyond LINKS."""
    options = settings(options)
    study_lines = best[best.seed.astype(str) == "all"] if len(best) else best
    best_line = {r.truth: _text(r.line) for r in study_lines.itertuples(index=False)}
    matrices = []
    for truth, part in verdict.groupby("truth", sort=False):
        matrices.append(f"<h3>Against {html.escape(TRUTHS.get(truth, truth))}</h3>"
                        + (f"<p class='best'>Best estimator: {html.escape(best_line[truth])}</p>" if truth in best_line
                           else "") + _matrix(part))
    figure_html = []
    for path, caption in figures:
        if Path(path).exists():
            figure_html.append(f"<figure>{_img(Path(path).read_bytes(), Path(path).stem)}<figcaption>"
                               f"{html.escape(caption)}</figcaption></figure>")
    intervals = (f"<figure>{_img(verdict_figure(verdict.reset_index(drop=True), options), 'verdict intervals')}"
                 "<figcaption>Every row of the table: the correlation (dot) and its bootstrap interval (bar), coloured "
                 "by the verdict; dashed lines: the thresholds; black tick: the noise ceiling where it is below 1."
                 "</figcaption></figure>")
    links = "".join(f'<li><a href="{html.escape(name)}">{html.escape(name)}</a>: {html.escape(text)}</li>'
                    for name, text in list(links) + LINKS)
    links += ('<li><a href="../verdict.csv">verdict.csv</a> and <a href="../verdict_best.csv">verdict_best.csv</a>: '
              "this page's verdicts, with every number</li>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Verdict: {html.escape(study)}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>Can the influence estimates be trusted? Study {html.escape(study)}</h1><p>{_counts(verdict)}</p>"
            f"<div id='matrices'>{''.join(matrices) or '<p>No verdicts.</p>'}</div>{_legend(options, confidence)}"
            f"<h2>Figures</h2>{''.join(figure_html)}"
            f"<details id='evidence'><summary>Every verdict with its evidence ({len(verdict)} rows): the "
            f"correlation's interval, the re-trained points, the ground truth's noise, the seeds, why</summary>"
            f"{intervals}<table id='verdict'>{_verdict_rows(verdict)}</table></details>"
            f"<h2>More</h2><ul>{links}</ul></body></html>")


def write_index(study: str, verdict_csv, best_csv, out_path, figures: list[tuple[str, str]] = (),
                options: dict | None = None, links: list[tuple[str, str]] = ()) -> None:
    """Write `report/index.html` from verdict.csv, verdict_best.csv and the figure PNGs."""
    read = lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""])  # noqa: E731
    verdict, best = read(verdict_csv), read(best_csv)
    confidence = float(verdict.confidence.dropna().iloc[0]) if "confidence" in verdict and verdict.confidence.notna().any() else None
    with atomic_path(out_path) as tmp:
        tmp.write_text(index_page(study, verdict, best, list(figures), options, confidence, list(links)), encoding="utf-8")
