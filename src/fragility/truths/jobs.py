"""The workflow's steps of the ground truths as plain functions (called by workflow/scripts and
the `run:` rules): draw a cell's plan, re-train one chunk of any truth, score a cell against every
enabled truth, and stack a study's tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..io import read_json, write_json, write_parquet
from ..stats import CORRELATION_DEFAULTS, METHODS, stream_seed
from .base import Scoring, chunk_of
from .registry import TRUTHS, get


# --------------------------------------------------------------------------- plans
def make_plan(influence, labels: np.ndarray, settings: dict, seed_keys: tuple) -> dict:
    """The sets of every planned truth named in `settings` (name → its settings), each drawn from
    a generator seeded by its `seed` setting, its name and `seed_keys` (the cell). `influence`:
    the `select.by` estimator's table, or {estimator: table} (several under `select.by: union`)."""
    if isinstance(influence, pd.DataFrame):
        influence = {"": influence}
    plan = {"n_train": int(len(labels))}
    for name, truth in TRUTHS.items():
        if truth.planned and name in settings:
            rng = np.random.default_rng(stream_seed(int(settings[name]["seed"]), name, *seed_keys))
            plan[name] = truth.draw(influence, np.asarray(labels), settings[name], rng)
    return plan


def plan_truths(data_path, influence_paths, settings: dict, seed_keys, out_path) -> dict:
    """Draw and write the sets of one cell's planned truths (`truths/plan.json`);
    `influence_paths`: one table's path, or {estimator: path} (`make_plan`)."""
    from ..data.split import Split

    split = Split.load(data_path)
    paths = influence_paths if isinstance(influence_paths, dict) else {"": influence_paths}
    tables = {name: pd.read_parquet(path) for name, path in paths.items()}
    plan = make_plan(tables, split.y_train.numpy(), dict(settings), tuple(seed_keys))
    write_json(plan, out_path)
    return plan


# --------------------------------------------------------------------------- re-training
def read_inputs(truth, paths: dict) -> dict:
    """The parsed JSON inputs of a truth's chunk job (selected.json, plan.json)."""
    return {key: read_json(paths[key]) for key, name in truth.inputs.items() if name.endswith(".json")}


def run_chunk(name: str, paths: dict, chunk: int, settings: dict, loo_cfg: dict, train_cfg: dict, out_path,
              **options) -> tuple[float, int]:
    """Re-train chunk `chunk` of truth `name`'s sets (grid.chunk of `sets` by its chunk size) and
    write its table. `paths`: model, data, test_points and the truth's `inputs`; `settings` its
    block over its defaults (for loo: loo's); `options`: retrain's (device_name, order_seed,
    checkpoint_path, log, and `extra_params`). Returns (seconds, copies)."""
    truth = get(name)
    sets = truth.sets(read_inputs(truth, paths), settings)
    size = truth.chunk_size({name: settings, "loo": loo_cfg})
    source = " and ".join(str(paths[key]) for key in truth.inputs if key in paths and str(paths[key]).endswith(".json"))
    part = chunk_of(truth, sets, size, int(chunk), source)
    return truth.retrain_chunk(paths, part, settings, loo_cfg, train_cfg, out_path, **options), len(part)


# --------------------------------------------------------------------------- scores
def correlate_truths(cell: dict, influence_paths: dict, test_points_path, metrics_path, correlations_out,
                     chunk_paths: dict, selection_path=None, plan_path=None, inputs: dict | None = None,
                     options: dict | None = None) -> pd.DataFrame:
    """One correlation row per (test point, estimator, truth, subset) for every truth with chunk
    tables in `chunk_paths` (name → paths) and a scorer (LOO's rows are study/correlate.py's), in
    registry order; `inputs`: the truths' `scored_inputs` (e.g. LOO's `rows.parquet` for PBRF)."""
    selection = read_json(selection_path)["per_test_point"] if selection_path else {}
    scoring = Scoring(dict(cell), read_json(test_points_path)["test_points"],
                      {name: pd.read_parquet(path) for name, path in influence_paths.items()},
                      read_json(metrics_path), read_json(plan_path) if plan_path else {}, selection,
                      dict(inputs or {}), {**CORRELATION_DEFAULTS, **(options or {})})
    for name, truth in TRUTHS.items():
        paths = list(chunk_paths.get(name, []))
        if paths and truth.score is not None:
            truth.score(scoring, pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True))
    frame = pd.DataFrame(scoring.rows)
    write_parquet(frame, correlations_out)
    return frame


def truths_table(correlations: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Wide view per cell and estimator: Pearson/Spearman against each ground truth (subset `all`,
    loss change; a truth scored over all test points at once, LDS: its mean row, Spearman only),
    `value [lo, hi]` or the flag's name."""
    from ..stats import format_interval

    part = correlations[(correlations.subset == "all") & (correlations.quantity == "loss_change")].copy()
    part["truth"] = part.get("truth", pd.Series("loo", index=part.index)).fillna("loo")
    whole = {name for name, truth in TRUTHS.items() if truth.mean_over_points}
    part = part[~part.truth.isin(whole) | (part.test_point == "mean")]
    keys = [k for k in ("study", "dataset", "arch", "decay", "seed") if k in part.columns]
    out = {}
    for record in part.to_dict("records"):
        over_points = record["truth"] in whole
        point = "all test points" if over_points else record["test_point"]
        key = tuple(record[k] for k in keys) + (record["estimator"],)
        row = out.setdefault(key, dict(zip(keys + ["estimator"], key)))
        for method in METHODS:
            if over_points and method == "pearson":
                continue
            text = format_interval(record[method], record[f"{method}_lo"], record[f"{method}_hi"], record["flag"] or "", digits)
            column = TRUTHS[record["truth"]].label if over_points else f"{record['truth']} {method} ({point})"
            row[column] = text
    return pd.DataFrame(list(out.values()))


def study_truths(cell_paths, loo_path, long_out, table_out) -> pd.DataFrame:
    """Stack a study's LOO correlations (truth `loo`) and every cell's other ground truths into one
    long table (`truths_correlations.parquet`) and write the wide view (`truths.csv`)."""
    from ..io import write_csv

    loo = pd.read_parquet(loo_path)
    loo = loo.assign(truth=loo["truth"].fillna("loo") if "truth" in loo else "loo")
    frames = [loo] + [pd.read_parquet(p) for p in cell_paths]
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
    write_parquet(frame, long_out)
    write_csv(truths_table(frame), table_out)
    return frame
