"""`report/index.html`: one self-contained page per study that leads with the verdict (verdict.csv,
verdict_best.csv: study/verdict.py), then the figures that carry it, embedded as base64 PNG, then
links to the study's other pages and tables. No network access is needed to view it."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import pandas as pd

from ..io import atomic_path
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
LINKS = [("summary.html", "every correlation with its interval and p-values"),
         ("summary_by_seed.html", "the spread over seeds"), ("noise.html", "the ground truth's drift and repeat noise"),
         ("estimators.html", "every estimator against the same ground truth"), ("benchmarks.html", "run time and memory"),
         ("config.html", "the configuration used")]
STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 16px 24px; color: #222; max-width: 1500px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table#verdict { border-collapse: collapse; font-size: 13px; }
#verdict th, #verdict td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
#verdict th { background: #f0f0f0; position: sticky; top: 0; }
td.word { font-weight: 700; white-space: nowrap; }
#verdict td:nth-child(-n+10) { white-space: nowrap; }
ul.best li { margin: 2px 0; }
p.legend span { display: inline-block; padding: 1px 6px; margin: 2px; border-radius: 3px; font-weight: 600; }
figure { margin: 12px 0 24px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { max-width: 60em; color: #444; }
.small { color: #555; font-size: 12px; }
"""


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


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


def _verdict_rows(table: pd.DataFrame) -> str:
    head = ["dataset", "model", "decay", "seed", "test point", "estimator", "ground truth", "verdict",
            "correlation", "value [interval]", "re-trained points", "noise of the ground truth", "seeds", "why"]
    out = ["<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in table.itertuples(index=False):
        background, colour = COLOURS.get(r.verdict, ("#ffffff", "#000000"))
        noise = _text(r.noise_source)
        if _number(r.ceiling):
            noise += f"; ceiling {float(r.ceiling):.2f}"
        if _number(r.sigma_repeat) and float(r.sigma_repeat) > 0:
            noise += f" (σ_repeat {_number(r.sigma_repeat)}, σ_effect {_number(r.sigma_effect)})"
        seeds = f"{int(r.seeds_behind_row)} of {int(r.study_seeds)}"
        if int(r.study_seeds) > 1:
            seeds += f": {_text(r.over_seeds)}; {_text(r.verdicts_over_seeds)}"
        cells = [r.dataset, r.arch, f"{float(r.decay):g}", r.seed, r.test_point, r.estimator, r.truth]
        out.append("<tr>" + "".join(f"<td>{html.escape(_text(c))}</td>" for c in cells)
                   + f'<td class="word" style="background:{background};color:{colour}">{html.escape(r.verdict)}</td>'
                   + "".join(f"<td>{html.escape(_text(c))}</td>" for c in
                             (r.correlation, r.interval, f"{int(r.n)}: {_text(r.selection)}", noise, seeds, r.reason))
                   + "</tr>")
    return "".join(out) + "</tbody>"


def _counts(verdict: pd.DataFrame) -> str:
    """`44 rows: 12 reliable, 20 partly reliable, ...`, each word in its colour."""
    counts = verdict.verdict.value_counts()
    words = ", ".join(f'<b style="color:{COLOURS.get(w, ("", "#000"))[1]}">{int(c)} {html.escape(w)}</b>'
                      for w, c in counts.items())
    cells = verdict[["dataset", "arch", "decay", "seed"]].drop_duplicates()
    return f"{len(verdict)} rows over {len(cells)} cells: {words}."


def index_page(study: str, verdict: pd.DataFrame, best: pd.DataFrame, figures: list[tuple[str, str]],
               options: dict | None = None, confidence: float | None = None, links: list[tuple[str, str]] = ()) -> str:
    """The page's HTML. `figures`: (PNG path, caption) of the study's figures that carry the verdict;
    `links`: (path relative to the page, description) of the study's pages beyond LINKS."""
    options = settings(options)
    study_lines = best[best.seed.astype(str) == "all"] if len(best) else best
    items = "".join(f"<li><b>{html.escape(_text(r.truth))}</b>: {html.escape(_text(r.line))}</li>"
                    for r in study_lines.itertuples(index=False))
    legend = "".join(f'<span style="background:{b};color:{c}">{html.escape(w)}</span>' for w, (b, c) in COLOURS.items())
    level = f"{confidence:.0%} " if confidence else ""
    explain = (
        f"Each row scores one estimator's predicted loss changes Δ̂ against one ground truth re-trained in one cell. "
        f"The word reads the <b>lower</b> end of the correlation's {level}bootstrap interval: <b>reliable</b> when it is "
        f"≥ {float(options['reliable']):g}, <b>partly reliable</b> when ≥ {float(options['partly_reliable']):g}, else "
        f"<b>unreliable</b> (correlation: {html.escape(str(options['correlation']))}; 'weaker' is the lower of Pearson "
        f"and Spearman; LDS for the linear datamodeling score). Before that, the ground truth's own noise: the ceiling "
        f"√max(0, 1 − σ²_repeat/σ²_effect) is the most any estimator can expect to correlate with it; below "
        f"{float(options['min_ceiling']):g} the row reads <b>ground truth too noisy to judge</b>. Without repeat "
        f"re-trainings (loo.repeats.count) the noise is <b>not measured</b>, and only 'reliable' can be said. "
        f"Flags are named, never shown as numbers.")
    figure_html = []
    judged = verdict.reset_index(drop=True)
    figure_html.append(f"<figure>{_img(verdict_figure(judged, options), 'verdict intervals')}<figcaption>Every row of the "
                       "table: the correlation (dot) and its bootstrap interval (bar), coloured by the verdict; dashed "
                       "lines: the thresholds; black tick: the noise ceiling where it is below 1.</figcaption></figure>")
    for path, caption in figures:
        if Path(path).exists():
            figure_html.append(f"<figure>{_img(Path(path).read_bytes(), Path(path).stem)}<figcaption>"
                               f"{html.escape(caption)}</figcaption></figure>")
    links = "".join(f'<li><a href="{html.escape(name)}">{html.escape(name)}</a>: {html.escape(text)}</li>'
                    for name, text in list(links) + LINKS)
    links += ('<li><a href="../verdict.csv">verdict.csv</a> and <a href="../verdict_best.csv">verdict_best.csv</a>: '
              "this page's table, with every number</li>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Verdict: {html.escape(study)}</title>"
            f"<style>{STYLE}</style></head><body>"
            f"<h1>Can the influence estimates be trusted? Study {html.escape(study)}</h1>"
            f"<h2>Best estimator per ground truth</h2><ul class='best'>{items}</ul>"
            f"<h2>Verdict per cell, test point, estimator and ground truth</h2><p>{_counts(verdict)}</p><p>{explain}</p>"
            f"<p class='legend'>{legend}</p><table id='verdict'>{_verdict_rows(verdict)}</table>"
            f"<h2>Figures</h2>{''.join(figure_html)}"
            f"<h2>More</h2><ul>{links}</ul></body></html>")


def write_index(study: str, verdict_csv, best_csv, out_path, figures: list[tuple[str, str]] = (),
                options: dict | None = None, links: list[tuple[str, str]] = ()) -> None:
    """Write `report/index.html` from verdict.csv, verdict_best.csv and the figure PNGs."""
    read = lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""])  # noqa: E731
    verdict, best = read(verdict_csv), read(best_csv)
    confidence = float(verdict.confidence.dropna().iloc[0]) if "confidence" in verdict and verdict.confidence.notna().any() else None
    with atomic_path(out_path) as tmp:
        tmp.write_text(index_page(study, verdict, best, list(figures), options, confidence, list(links)), encoding="utf-8")
