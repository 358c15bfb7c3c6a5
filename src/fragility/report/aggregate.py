"""Study-level tables: stack every cell's outputs and write the human-readable summaries.

- `summary.csv`: one row per correlation, each Pearson/Spearman as `0.87 [0.71, 0.95]` (bootstrap
  percentile interval; metrics.format_interval) or the flag's name, with permutation p-values and
  the ground truth's signal-to-noise (noise.py).
- `summary_by_seed.csv`: the same correlations aggregated over seeds: mean ± standard deviation and
  the number of seeds, over unflagged seeds only; flagged seeds are counted and named, never averaged.
- `noise.csv`: per cell, test point and quantity, the effect, drift and repeat noise, their ratio and
  the `noise_exceeds_effect` flag.
- `estimators.csv`: the estimator study: every estimator's correlation against the same ground truth,
  in every cell, with its agreement with exact influence where the exact Hessian was computed.
- `benchmarks.csv`: Snakemake's `benchmark:` files (run time, peak resident memory) gathered into one
  table, with the peak GPU memory a job logged as `peak_gpu_memory_mb=<value>`.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, write_csv, write_parquet
from ..stats import CORRELATION_DEFAULTS, METHODS, correlate, format_interval, format_mean_spread, stream_seed

CELL_KEYS = ["study", "dataset", "arch", "decay", "seed"]
CORRELATION_KEYS = ["test_point", "estimator", "quantity", "subset"]
NOISE_COLUMNS = ["effect", "drift_noise", "repeat_noise", "repeat_n", "noise", "noise_source", "signal_to_noise",
                 "noise_flag"]


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def format_pvalue(p: float) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def ground_truth_note(row) -> str:
    """`SNR 3.1 (drift)`, or `noise_exceeds_effect (drift, SNR 0.4)`, or '' without a noise estimate."""
    snr = row.get("signal_to_noise", math.nan)
    if snr is None or (isinstance(snr, float) and math.isnan(snr)):
        return ""
    ratio = "∞" if math.isinf(snr) else f"{snr:.2g}"
    if row.get("noise_flag"):
        return f"{row['noise_flag']} ({row['noise_source']}, SNR {ratio})"
    return f"SNR {ratio} ({row['noise_source']})"


def summary_table(correlations: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Correlations as strings: `value [lo, hi]`, or the flag's name instead of it."""
    out = correlations.copy()
    flags = out["flag"].fillna("")
    for col in METHODS:
        lo, hi = (out.get(f"{col}_{end}", pd.Series(np.nan, index=out.index)) for end in ("lo", "hi"))
        out[col] = [format_interval(v, a, b, f, digits) for v, a, b, f in zip(out[col], lo, hi, flags)]
        if f"{col}_p" in out:
            out[f"{col}_p"] = [format_pvalue(p) if not f else "" for p, f in zip(out[f"{col}_p"], flags)]
    if "signal_to_noise" in out:
        out["ground_truth"] = [ground_truth_note(r) for r in out.to_dict("records")]
    keep = CELL_KEYS + CORRELATION_KEYS + ["truth", "n", "pearson", "spearman", "pearson_p", "spearman_p", "flag", "ground_truth",
                                           "drift_loss_change", "actual_std", "drift_noise", "repeat_noise", "repeat_n",
                                           "signal_to_noise", "noise_flag", "resamples", "confidence",
                                           "train_accuracy", "test_accuracy"]
    return out[[c for c in keep if c in out.columns]]


def seed_summary(correlations: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Mean ± std over seeds per (cell without seed, test point, estimator, quantity, subset), over
    unflagged seeds; flagged seeds counted and named (`seed1:constant_actual`), never averaged in."""
    frame = correlations.assign(flag=correlations["flag"].fillna(""))
    if "noise_flag" not in frame:
        frame["noise_flag"] = ""
    keys = [k for k in CELL_KEYS if k != "seed"] + CORRELATION_KEYS
    out = []
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        good = part[part.flag == ""]
        bad = part[part.flag != ""]
        row = dict(zip(keys, key))
        row.update(seeds=" ".join(str(s) for s in sorted(part.seed)), n_seeds=int(len(part)), n_used=int(len(good)),
                   n_flagged=int(len(bad)),
                   flagged_seeds=" ".join(f"seed{s}:{f}" for s, f in zip(bad.seed, bad.flag)),
                   noisy_seeds=" ".join(f"seed{s}" for s in part.seed[part.noise_flag.fillna("") != ""]))
        for col in METHODS:
            values = good[col].astype(float)
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{col}_mean"], row[f"{col}_std"] = mean, std
            row[col] = format_mean_spread(mean, std, len(values), digits) if len(values) else (
                "all seeds flagged" if len(bad) else "n/a")
        out.append(row)
    columns = keys + ["pearson", "spearman", "n_seeds", "n_used", "n_flagged", "flagged_seeds", "noisy_seeds", "seeds",
                      "pearson_mean", "pearson_std", "spearman_mean", "spearman_std"]
    return pd.DataFrame(out, columns=columns)


def noise_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """Signal-to-noise of the ground truth per cell, test point and quantity (subset `all`); the
    ground truth does not depend on the estimator, so one estimator's row stands for all."""
    if "signal_to_noise" not in correlations:
        return pd.DataFrame(columns=CELL_KEYS + ["test_point", "quantity"] + NOISE_COLUMNS)
    # the flags of the cell and its ground truth (model_not_trained, selection_failed, constant_actual,
    # ...); those of one estimator's predictions do not apply to the ground truth. A failed or
    # constant estimator hides `constant_actual` (correlate checks the predictions first), so the
    # row kept for each test point is one whose estimator had neither, where there is one.
    estimator_only = ("estimator_failed", "constant_predicted")
    part = correlations[correlations.subset == "all"]
    hides = part.flag.fillna("").str.contains("|".join(estimator_only))
    part = part.assign(_hides=hides).sort_values("_hides", kind="stable").drop_duplicates(CELL_KEYS + ["test_point", "quantity"])
    part = part.sort_index()
    out = part[CELL_KEYS + ["test_point", "test_index", "quantity", "n"] + NOISE_COLUMNS + ["drift_loss_change"]].copy()
    out["ground_truth"] = [ground_truth_note(r) for r in out.to_dict("records")]
    out["flag"] = [";".join(f for f in flag.split(";") if f and f.split(":")[0] not in estimator_only)
                   for flag in part.flag.fillna("")]
    return out.reset_index(drop=True)


NO_EXACT = "no exact Hessian in this cell"


def estimator_table(correlations: pd.DataFrame, rows: pd.DataFrame, reference="exact", digits: int = 2,
                    correlation: dict | None = None) -> pd.DataFrame:
    """Every estimator's correlation with the same ground truth, in every cell and test point;
    `agreement_with_exact` is the Pearson correlation of the estimator's Δ̂ with the exact Δ̂ over
    the re-trained points, with its bootstrap interval and permutation p-value (`correlation`:
    resamples, permutations, confidence, seed), or a flag (the model's `model_not_trained:...`, or
    why the correlation is undefined) instead of a number. Where no exact-Hessian estimator ran
    without failure, `reference` is empty and the agreement reads `no exact Hessian in this cell`.

    `reference` names the exact estimator: one name for every architecture, or a collection of
    (arch, estimator name) pairs (the config may call it anything, e.g. `primary: {method: exact}`).
    """
    is_reference = ((lambda arch, name: name == reference) if isinstance(reference, str)
                    else (lambda arch, name, pairs={tuple(p) for p in reference}: (arch, name) in pairs))
    corr = correlations[(correlations.subset == "all") & correlations.quantity.isin(["loss_change", "loss_change_vs_drift"])]
    ok = ~corr.flag.fillna("").str.contains("estimator_failed")
    chosen = corr[ok & np.array([is_reference(a, e) for a, e in zip(corr.arch, corr.estimator)], dtype=bool)]
    keys = CELL_KEYS + ["test_point"]
    refs = chosen[keys + ["estimator"]].drop_duplicates(keys).rename(columns={"estimator": "reference"})
    corr = corr.merge(refs, on=keys, how="left")
    corr["reference"] = corr["reference"].fillna("")
    ref_rows = rows.merge(refs, on=keys)
    ref_rows = ref_rows[ref_rows.estimator == ref_rows.reference][keys + ["train_index", "predicted_loss_change"]]
    joined = rows.merge(ref_rows, on=keys + ["train_index"], suffixes=("", "_ref"))
    options = {**CORRELATION_DEFAULTS, **(correlation or {})}
    model_flag = {tuple(r[k] for k in keys): ";".join(f for f in str(r["flag"] or "").split(";") if f.startswith("model_not_trained"))
                  for r in corr.to_dict("records")}
    agreement = {}
    for key, part in joined.groupby(keys + ["estimator"], sort=False):
        stats = correlate(part.predicted_loss_change.to_numpy(float), part.predicted_loss_change_ref.to_numpy(float),
                          resamples=options["resamples"], permutations=options["permutations"],
                          confidence=options["confidence"], seed=stream_seed(options["seed"], *key))
        flag = model_flag.get(key[:-1]) or stats["flag"]
        agreement[key] = {"agreement_with_exact": math.nan if flag else stats["pearson"],
                          "agreement_with_exact_text": format_interval(stats["pearson"], stats["pearson_lo"], stats["pearson_hi"], flag, digits),
                          "agreement_with_exact_p": math.nan if flag else stats["pearson_p"],
                          "agreement_with_exact_lo": math.nan if flag else stats["pearson_lo"],
                          "agreement_with_exact_hi": math.nan if flag else stats["pearson_hi"]}
    out = corr.copy()
    missing = {"agreement_with_exact": math.nan, "agreement_with_exact_text": "not computed", "agreement_with_exact_p": math.nan,
               "agreement_with_exact_lo": math.nan, "agreement_with_exact_hi": math.nan}
    no_reference = {**missing, "agreement_with_exact_text": NO_EXACT}
    found = [agreement.get(tuple(r[k] for k in keys + ["estimator"]), missing if r["reference"] else no_reference)
             for r in out.to_dict("records")]
    for column in missing:
        out[column] = [f[column] for f in found]
    flags = out.flag.fillna("")
    for col in METHODS:
        out[f"{col}_text"] = [format_interval(v, a, b, f, digits) for v, a, b, f in
                              zip(out[col], out[f"{col}_lo"], out[f"{col}_hi"], flags)]
    keep = keys + ["quantity", "estimator", "reference", "n", "pearson_text", "spearman_text", "agreement_with_exact_text",
                   "agreement_with_exact", "agreement_with_exact_lo", "agreement_with_exact_hi", "agreement_with_exact_p", "pearson", "pearson_lo", "pearson_hi", "spearman",
                   "spearman_lo", "spearman_hi", "flag"]
    return out[keep].sort_values(keys + ["quantity", "estimator"]).reset_index(drop=True)


# --------------------------------------------------------------------------- benchmarks
GPU_LINE = re.compile(r"peak_gpu_memory_mb=([0-9.eE+-]+)")
BENCH_COLUMNS = {"s": "seconds", "max_rss": "max_rss_mb", "max_uss": "max_uss_mb", "cpu_time": "cpu_seconds",
                 "mean_load": "mean_load"}


def benchmark_table(benchmark_dir: str | Path, log_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per benchmarked job under `benchmark_dir` ({rule}.tsv, mirrored cell folders), with the
    job's step (rule name, chunk number dropped), cell folder, run time, peak memory and, when its log (same relative path, `.log`) holds a
    `peak_gpu_memory_mb=` line, the peak GPU memory."""
    benchmark_dir = Path(benchmark_dir)
    out = []
    for path in sorted(benchmark_dir.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        if table.empty:
            continue
        record = table.iloc[-1]  # the last repeat when `benchmark: repeat(...)` is used
        relative = path.relative_to(benchmark_dir)
        job = relative.stem
        row = {"step": re.sub(r"\d+$", "", job).rstrip("_") or job, "job": job, "folder": str(relative.parent)}
        row.update({new: float(record[old]) if old in record and str(record[old]) not in ("NA", "-") else math.nan
                    for old, new in BENCH_COLUMNS.items()})
        row["peak_gpu_memory_mb"] = math.nan
        if log_dir is not None:
            log = Path(log_dir) / relative.with_suffix(".log")
            if log.exists():
                found = GPU_LINE.findall(log.read_text(errors="replace"))
                if found:
                    row["peak_gpu_memory_mb"] = max(float(v) for v in found)
        out.append(row)
    columns = ["step", "job", "folder", *BENCH_COLUMNS.values(), "peak_gpu_memory_mb"]
    return pd.DataFrame(out, columns=columns)


def benchmark_summary(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per step (rule, with the estimator for influence jobs): number of jobs, total, mean and longest run time, and the largest peak memory."""
    if jobs.empty:
        return pd.DataFrame(columns=["step", "jobs", "total_seconds", "mean_seconds", "max_seconds", "max_rss_mb",
                                     "peak_gpu_memory_mb"])
    grouped = jobs.groupby("step")
    return pd.DataFrame({
        "jobs": grouped.size(), "total_seconds": grouped.seconds.sum(), "mean_seconds": grouped.seconds.mean(),
        "max_seconds": grouped.seconds.max(), "max_rss_mb": grouped.max_rss_mb.max(),
        "peak_gpu_memory_mb": grouped.peak_gpu_memory_mb.max(),
    }).reset_index().sort_values("total_seconds", ascending=False)


def gather_benchmarks(benchmark_dir, log_dir, jobs_out, summary_out, page_out=None) -> pd.DataFrame:
    """benchmarks.csv (every job), benchmarks_by_rule.csv (per step) and, optionally, their HTML page."""
    jobs = benchmark_table(benchmark_dir, log_dir)
    write_csv(jobs, jobs_out)
    write_csv(benchmark_summary(jobs), summary_out)
    if page_out:
        write_benchmark_page(jobs, page_out)
    return jobs


# --------------------------------------------------------------------------- study aggregation
def aggregate_study(correlation_paths, row_paths, metric_paths, diagnostic_paths,
                    correlations_out, summary_out, rows_out, training_out, diagnostics_out,
                    by_seed_out=None, noise_out=None, estimators_out=None, reference="exact",
                    correlation: dict | None = None, metric_cells=(), diagnostic_cells=()) -> pd.DataFrame:
    """Stack a study's per-cell tables and write its summaries. `metric_cells[i]` and
    `diagnostic_cells[i]` are the cell keys (study, dataset, arch, decay, seed) of `metric_paths[i]`
    and `diagnostic_paths[i]`, given by the caller (paths are never parsed)."""
    if len(metric_cells) != len(metric_paths) or len(diagnostic_cells) != len(diagnostic_paths):
        raise ValueError("aggregate_study: one cell per metrics file and per diagnostics file is needed")
    correlations = pd.concat([pd.read_parquet(p) for p in correlation_paths], ignore_index=True)
    write_parquet(correlations, correlations_out)
    write_csv(summary_table(correlations), summary_out)
    rows = pd.concat([pd.read_parquet(p) for p in row_paths], ignore_index=True)
    write_parquet(rows, rows_out)
    if by_seed_out:
        write_csv(seed_summary(correlations), by_seed_out)
    if noise_out:
        write_csv(noise_table(correlations), noise_out)
    if estimators_out:
        write_csv(estimator_table(correlations, rows, reference, correlation=correlation), estimators_out)
    training, model_flags = [], {}
    for path, cell in zip(metric_paths, metric_cells):
        metrics = json.loads(Path(path).read_text())
        metrics.pop("history", None)
        cell = {key: cell[key] for key in CELL_KEYS}
        model_flags[tuple(cell.values())] = ";".join(f"model_not_trained:{f}" for f in metrics.get("flags", []))
        metrics["flags"] = ";".join(metrics.get("flags", []))
        training.append({**cell, **metrics})
    write_csv(pd.DataFrame(training), training_out)
    diagnostics = []
    for path, cell in zip(diagnostic_paths, diagnostic_cells):
        record = json.loads(Path(path).read_text())
        points = record.pop("test_points", [])
        statuses = ";".join(sorted({p["status"] for p in points}))
        cell = {key: cell[key] for key in CELL_KEYS}
        diagnostics.append({**cell, **{k: v for k, v in record.items() if not isinstance(v, (list, dict))},
                            "statuses": statuses, "flag": model_flags.get(tuple(cell.values()), "")})
    write_csv(pd.DataFrame(diagnostics), diagnostics_out)
    return correlations


# --------------------------------------------------------------------------- HTML for the report
STYLE = """
body { font-family: system-ui, sans-serif; font-size: 13px; margin: 12px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.flag { color: #a00; font-weight: 600; }
td.noisy { background: #fff3cd; }
p.note { max-width: 60em; }
"""
FLAG_WORDS = ("constant_", "too_few_points", "estimator_failed", "ground_truth_missing", "model_not_trained",
              "selection_failed", "all seeds flagged")


def html_table(frame: pd.DataFrame, title: str, note: str = "", float_digits: int = 4) -> str:
    """A self-contained HTML page for one table: flagged cells in red, noisy ground truth shaded."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for record in frame.to_dict("records"):
        cells = []
        for column, value in record.items():
            if isinstance(value, float):
                text = "" if math.isnan(value) else (f"{value:.{float_digits}g}")
            else:
                text = _text(value)
            css = ""
            if any(word in text for word in FLAG_WORDS):
                css = ' class="flag"'
            elif "noise_exceeds_effect" in text:
                css = ' class="noisy"'
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"</head><body><h3>{html.escape(title)}</h3>{note_html}<table><thead><tr>{head}</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></body></html>")


def write_html(frame: pd.DataFrame, path, title: str, note: str = "") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(html_table(frame, title, note), encoding="utf-8")


def write_text_html(text: str, path, title: str) -> None:
    """A preformatted text file (e.g. the configuration used) as an HTML page."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                       f"<style>{STYLE}</style></head><body><h3>{html.escape(title)}</h3><pre>{html.escape(text)}</pre>"
                       "</body></html>", encoding="utf-8")


REPORT_VIEWS = {  # page name: (CSV under results/{study}, title)
    "summary": ("summary.csv", "Correlations of predicted and actual change, with bootstrap intervals"),
    "summary_by_seed": ("summary_by_seed.csv", "Correlations across seeds: mean ± std (number of seeds used)"),
    "noise": ("noise.csv", "Ground-truth signal-to-noise per cell"),
    "estimators": ("estimators.csv", "Estimator study: every estimator against the same ground truth"),
}


def write_benchmark_page(jobs: pd.DataFrame, path) -> None:
    """Per-rule totals, then every job, as one HTML page."""
    summary = html_table(benchmark_summary(jobs), "Run time and peak memory per rule")
    detail = html_table(jobs, "Every benchmarked job")
    body = summary.split("<body>")[1].split("</body>")[0] + detail.split("<body>")[1].split("</body>")[0]
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmarks</title><style>{STYLE}</style>"
                       f"</head><body>{body}</body></html>", encoding="utf-8")


def write_pages(sections: list[tuple[pd.DataFrame, str, str]], path, title: str) -> None:
    """Several (table, heading, note) sections on one HTML page."""
    body = "".join(html_table(frame, heading, note).split("<body>")[1].split("</body>")[0] for frame, heading, note in sections)
    with atomic_path(path) as tmp:
        tmp.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                       f"<style>{STYLE}</style></head><body>{body}</body></html>", encoding="utf-8")


def table1_page(table_csv, versus_csv, path) -> None:
    """Table 1 as we measured it (values with bootstrap intervals, or flags) and, per cell, ours next
    to the paper's value, with whether the paper's value lies inside our interval."""
    read = lambda p: pd.read_csv(p, keep_default_na=False, na_values=[""])  # noqa: E731
    versus = read(versus_csv)
    keep = [c for c in ["dataset", "model", "column", "ours", "paper", "paper_in_interval", "difference", "n", "seeds",
                        "estimator", "flag"] if c in versus.columns]
    inside = versus.get("paper_in_interval", pd.Series(dtype=object)).dropna()
    note = (f"The paper's value lies inside our interval in {int((inside.astype(str) == 'True').sum())} of "
            f"{len(inside)} cells that both have." if len(inside) else "")
    write_pages([(read(table_csv), "Table 1 (ours): Pearson P and Spearman S of Δ̂ vs Δ, value [bootstrap interval]", ""),
                 (versus[keep], "Ours next to the paper's Table 1", note)], path, "Table 1")


def study_report_pages(study_dir, out_dir, config_text: str, main_quantities=("loss_change", "loss_change_vs_drift")) -> list[str]:
    """HTML views of a study's tables for `snakemake --report` (the CSVs stay the data of record).
    The summary view keeps the subset `all` and the loss quantities; the CSV holds every row."""
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    written = []
    for name, (csv, title) in REPORT_VIEWS.items():
        path = study_dir / csv
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.exists() else pd.DataFrame()
        note = ""
        if name in ("summary", "summary_by_seed") and not frame.empty:
            frame = frame[(frame.subset == "all") & frame.quantity.isin(main_quantities)]
            note = (f"Rows for subset 'all' and quantities {', '.join(main_quantities)}; {csv} holds every subset and quantity.")
        if name == "estimators" and frame.empty:
            note = "No cell computed the exact Hessian, so there is no reference to compare estimators with."
        write_html(frame, out_dir / f"{name}.html", title, note)
        written.append(str(out_dir / f"{name}.html"))
    write_text_html(config_text, out_dir / "config.html", "Configuration used (after defaults and the --configfile merge)")
    written.append(str(out_dir / "config.html"))
    return written
