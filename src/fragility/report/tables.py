"""Table 1 of the paper from a study's correlations, and ours next to the paper's values.

Table 1's wide layout has one row per (dataset, model) and six value columns, Pearson (P) and
Spearman (S) of Δ̂ against Δ for

    A, decay      test point A (`max`: highest test loss), the study's weight decay
    B, decay      test point B (`median`: 50th percentile of test loss), same decay
    A, no decay   test point A, decay 0

Each value comes from the estimator that selected the re-trained points (`select.by` of the
architecture), on all selected points (`subset == "all"`), for the paper's ground truth
Δ = ℓ(θ₋z) − ℓ(θ*) (`quantity`; Δ against the no-removal drift control differs from it by one
constant per test point, so its correlations are the same numbers). With several seeds the value
is their mean; a cell is shown by its flag's name when any seed is flagged, or `not_run` when the
grid has no such cell. Every cell is written by `metrics.format_interval` as `value [lo, hi]`:
the bootstrap percentile interval of the correlation over the re-trained points (`correlation:` in
the config); with several seeds, [lowest lo, highest hi] over the seeds, which covers every seed's
interval (the spread across seeds is in summary_by_seed.csv).
"""

from __future__ import annotations

import math

import pandas as pd

from ..io import write_csv
from ..stats import METHODS, format_interval
from ..truths.registry import TRUTHS

TEST_POINTS = {"A": "max", "B": "median"}
# (label, test point, with decay?) in the paper's column order
COLUMNS = [("A, decay", "max", True), ("B, decay", "median", True), ("A, no decay", "max", False)]
METRICS = {"P": "pearson", "S": "spearman"}
NOT_RUN = "not_run"


def column_names() -> list[str]:
    return [f"{label} {short}" for label, _, _ in COLUMNS for short in METRICS]


def paper_column(label: str, metric: str) -> str:
    """The paper CSV's column for a wide-table column, e.g. ("B, decay", "pearson") → median_decay_pearson."""
    test_point = {lab: tp for lab, tp, _ in COLUMNS}[label]
    decay = "nodecay" if label.endswith("no decay") else "decay"
    return f"{test_point}_{decay}_{metric}"


def table_decay(decays: list[float], chosen: float | None = None) -> float:
    """The decay of the 'decay' columns: `chosen`, or the study's only non-zero decay."""
    nonzero = sorted({float(d) for d in decays if float(d) > 0})
    if chosen is not None:
        if float(chosen) not in nonzero:
            raise ValueError(f"figures.table_decay: {chosen} is not one of the study's non-zero decays {nonzero}")
        return float(chosen)
    if len(nonzero) != 1:
        raise ValueError(f"the study has non-zero decays {nonzero}; name the one for Table 1 in figures.table_decay")
    return nonzero[0]


def table1_long(correlations: pd.DataFrame, estimator_of: dict, decay: float, quantity: str = "loss_change") -> pd.DataFrame:
    """One row per (dataset, arch, column, metric): value (mean over seeds), lo/hi (the seeds'
    bootstrap intervals' lowest and highest bound), flag, n, seeds.

    `estimator_of` maps an architecture to the estimator whose values are reported."""
    frame = correlations[(correlations.quantity == quantity) & (correlations.subset == "all")].copy()
    frame["flag"] = frame["flag"].fillna("")
    frame = frame[frame.estimator == frame.arch.map(estimator_of)]
    out = []
    for (dataset, arch), cell in frame.groupby(["dataset", "arch"], sort=False):
        for label, test_point, with_decay in COLUMNS:
            want = decay if with_decay else 0.0
            part = cell[(cell.test_point == test_point) & ((cell.decay.astype(float) - want).abs() <= 1e-12 * max(1.0, want))]
            for short, metric in METRICS.items():
                flags = sorted({f for f in part.flag if f})
                lo = hi = math.nan
                if part.empty:
                    value, flag = math.nan, NOT_RUN
                elif flags:
                    value, flag = math.nan, ";".join(flags)
                else:
                    value, flag = float(part[metric].mean()), ""
                    if f"{metric}_lo" in part:
                        lo, hi = float(part[f"{metric}_lo"].min()), float(part[f"{metric}_hi"].max())
                out.append({"dataset": dataset, "arch": arch, "column": f"{label} {short}", "metric": metric,
                            "test_point": test_point, "decay": want, "estimator": estimator_of.get(arch),
                            "quantity": quantity, "value": value, "lo": lo, "hi": hi, "flag": flag,
                            "n": int(part["n"].iloc[0]) if len(part) else 0, "seeds": int(part["seed"].nunique()) if len(part) else 0})
    return pd.DataFrame(out, columns=["dataset", "arch", "column", "metric", "test_point", "decay", "estimator", "quantity",
                                      "value", "lo", "hi", "flag", "n", "seeds"])


def table1_wide(long: pd.DataFrame, model_names: dict, row_order: list[tuple[str, str]] | None = None,
                method_of: dict | None = None) -> pd.DataFrame:
    """The paper's layout: dataset, model, estimator (its method when `method_of` names one), six
    P/S columns as text (`format_interval`: `0.87 [0.71, 0.95]`, or the flag's name). No cell: the
    header alone."""
    if long.empty:
        return pd.DataFrame(columns=["dataset", "model", "estimator", *column_names()])
    long = long.assign(text=[format_interval(v, lo, hi, f) for v, lo, hi, f in zip(long.value, long.lo, long.hi, long.flag)])
    wide = long.pivot(index=["dataset", "arch"], columns="column", values="text")
    keys = row_order or list(dict.fromkeys(zip(long.dataset, long.arch)))
    wide = wide.reindex([k for k in keys if k in wide.index])[column_names()].reset_index()
    wide.insert(2, "model", wide.arch.map(lambda a: model_names.get(a, a)))
    estimators = long.drop_duplicates(["dataset", "arch"]).set_index(["dataset", "arch"])["estimator"]
    method_of = method_of or {}
    wide.insert(3, "estimator", [method_of.get(a, estimators.get((d, a))) for d, a in zip(wide.dataset, wide.arch)])
    return wide.drop(columns="arch").rename_axis(columns=None)


def studies_of_kind(config: dict, kind: str) -> list[str]:
    return [s for s, block in config["studies"].items() if block.get("kind") == kind]


def reported_estimator(config: dict, study: str, arch: str) -> str:
    """The estimator an architecture's tables report: `select.by`, or under `select.by: union`
    or `random` (which favour none) `figures.estimator`, else the first estimator of influence.methods."""
    from ..study.grid import arch_config

    merged = arch_config(config, study, arch)
    by = merged["select"]["by"]
    if by not in ("union", "random"):
        return by
    named = [k for k, v in merged["influence"]["methods"].items() if v is not None]
    return merged.get("figures", {}).get("estimator", named[0])


def table1_options(config: dict, study: str) -> dict:
    """What `write_table1` needs to know of a study's config: each dataset's paper family, each
    architecture's reported estimator (`select.by`) and its method, decays, row order."""
    from ..study.grid import estimators, study_block
    from ..data.files import DATASET_FAMILY

    block = study_block(config, study)
    chosen = {arch: reported_estimator(config, study, arch) for arch in block["architectures"]}
    return {
        "family_of": {key: DATASET_FAMILY.get(cfg.get("loader", key), key) for key, cfg in block["datasets"].items()},
        "estimator_of": chosen,
        "method_of": {arch: estimators(config, study, arch)[by].get("method", by) for arch, by in chosen.items()},
        "decays": block["decays"],
        "chosen_decay": block.get("figures", {}).get("table_decay"),
        "row_order": [(d, a) for d in block["datasets"] for a in block["architectures"]],
    }


def mnist_small_options(config: dict, study: str) -> dict:
    """The small-MNIST figures' options: the 'with decay' value (`figures.decay`), the estimator
    (`figures.estimator`, else `select.by` of the first architecture) and its method."""
    from ..study.grid import estimators, study_block

    block = study_block(config, study)
    figures = block.get("figures", {})
    first = block["architectures"][0]
    estimator = figures.get("estimator", reported_estimator(config, study, first))
    return {"decay": table_decay(block["decays"], figures.get("decay")), "estimator": estimator,
            "method": estimators(config, study, first)[estimator].get("method", estimator)}


def read_paper(path) -> pd.DataFrame:
    paper = pd.read_csv(path)
    needed = ["dataset", "arch", "model"] + [paper_column(label, m) for label, _, _ in COLUMNS for m in METRICS.values()]
    missing = [c for c in needed if c not in paper.columns]
    if missing:
        raise ValueError(f"{path}: the paper's Table 1 lacks columns {missing}")
    return paper


def versus_paper(long: pd.DataFrame, paper: pd.DataFrame, family_of: dict) -> pd.DataFrame:
    """Ours and the paper's value per (dataset, model, column); `family_of` maps our dataset key to
    the paper's dataset (`mnist_offline` → `mnist`). Rows the paper lacks have no paper value."""
    lookup = paper.set_index(["dataset", "arch"])
    models = dict(zip(paper.arch, paper.model))
    rows = []
    for r in long.itertuples(index=False):
        family = family_of.get(r.dataset, r.dataset)
        label = r.column.rsplit(" ", 1)[0]
        key = (family, r.arch)
        theirs = float(lookup.loc[key, paper_column(label, r.metric)]) if key in lookup.index else math.nan
        rows.append({"dataset": r.dataset, "paper_dataset": family, "model": models.get(r.arch, r.arch), "arch": r.arch,
                     "column": r.column, "metric": r.metric, "ours": format_interval(r.value, r.lo, r.hi, r.flag),
                     "ours_value": r.value, "ours_lo": r.lo, "ours_hi": r.hi,
                     "paper_in_interval": bool(r.lo <= theirs <= r.hi) if math.isfinite(theirs) and math.isfinite(r.lo) else None,
                     "flag": r.flag, "paper": theirs, "difference": r.value - theirs, "n": r.n, "seeds": r.seeds,
                     "estimator": r.estimator})
    return pd.DataFrame(rows, columns=["dataset", "paper_dataset", "model", "arch", "column", "metric", "ours", "ours_value",
                                       "ours_lo", "ours_hi", "paper_in_interval", "flag", "paper", "difference", "n",
                                       "seeds", "estimator"])


def write_table1(correlations_path, paper_path, family_of: dict, estimator_of: dict, decays: list[float],
                 table_out, versus_out, chosen_decay: float | None = None,
                 row_order: list[tuple[str, str]] | None = None, method_of: dict | None = None) -> pd.DataFrame:
    """Table 1 (wide, as text) and ours-vs-paper (long, with numbers)."""
    correlations = pd.read_parquet(correlations_path)
    paper = read_paper(paper_path)
    decay = table_decay(decays, chosen_decay)
    names = dict(zip(paper.arch, paper.model))
    long = table1_long(correlations, estimator_of, decay, "loss_change")
    write_csv(table1_wide(long, names, row_order, method_of), table_out)
    versus = versus_paper(long, paper, family_of)
    write_csv(versus, versus_out)
    return versus


def table1_truths(correlations: pd.DataFrame, estimator_of: dict, decays: list[float],
                   row_order: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Table 1 by ground truth: per dataset, architecture, decay and test point, the Table 1
    estimator's Pearson and Spearman against LOO, PBRF and group removal, and its LDS (the mean over
    test points), each `value [lo, hi]` or the flag's name."""
    frame = correlations[(correlations.quantity == "loss_change") & (correlations.subset == "all")].copy()
    frame["truth"] = frame["truth"].fillna("loo") if "truth" in frame else "loo"
    frame = frame[pd.Series([estimator_of.get(a) == e for a, e in zip(frame.arch, frame.estimator)], index=frame.index,
                            dtype=bool)]  # a list would pick columns when empty
    whole = [t for t, truth in TRUTHS.items() if truth.mean_over_points]  # LDS: one row over all test points
    lds = frame[frame.truth.isin(whole) & (frame.test_point == "mean")]
    frame = frame[~frame.truth.isin(whole)]
    order = {key: i for i, key in enumerate(row_order or [])}
    rows = []
    for (dataset, arch, decay, point), part in frame.groupby(["dataset", "arch", "decay", "test_point"], sort=False):
        row = {"dataset": dataset, "arch": arch, "decay": decay, "test_point": point}
        for record in part.to_dict("records"):
            for method in METHODS:
                row[f"{TRUTHS[record['truth']].label} {method}"] = format_interval(
                    record[method], record[f"{method}_lo"], record[f"{method}_hi"], record["flag"] or "")
        for truth in whole:
            match = lds[(lds.truth == truth) & (lds.dataset == dataset) & (lds.arch == arch) & (lds.decay == decay)]
            if len(match):
                r = match.iloc[0]
                row[TRUTHS[truth].label] = format_interval(r.spearman, r.spearman_lo, r.spearman_hi, r.flag or "")
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out["_order"] = [order.get((d, a), len(order)) for d, a in zip(out.dataset, out.arch)]
        out = out.sort_values(["_order", "decay", "test_point"], ascending=[True, False, True], kind="stable")
        out = out.drop(columns="_order").reset_index(drop=True)
    return out


def write_table1_truths(truths_path, out_path, estimator_of: dict, decays: list[float],
                         row_order: list[tuple[str, str]] | None = None, **_) -> pd.DataFrame:
    """`table1_truths.csv` from a study's `truths_correlations.parquet`."""
    table = table1_truths(pd.read_parquet(truths_path), estimator_of, decays, row_order)
    write_csv(table, out_path)
    return table
