"""Ground truths beyond warm-start leave-one-out, and how each estimator is scored against them.

Every estimator's Δ̂(i) = +(1/n) ∇ℓ(z_t)ᵀ(H + δI)⁻¹∇ℓ(z_i) (the predicted change in test loss
when z_i is removed) is compared, cell by cell, with each `targets` entry of the study:

- `loo`: Δ(z) = ℓ(z_t; θ₋z) − ℓ(z_t; θ*), re-trained from θ* without z (study/correlate.py).
- `pbrf`: Δ_PBRF(z) = (ℓ(z_t; θ_PBRF,−z) − ℓ(z_t; θ*)) / s, with θ_PBRF,−z the optimum of the
  proximal Bregman response objective of removing z with ε = −s/n (engine/pbrf.py). What
  influence functions estimate in a non-convex net (Bae et al., 2022): the response of a
  proximal, linearised-in-output-space problem, not of re-training. For s → 0 it is the
  Gauss-Newton influence estimate with the same damping.
- `groups`: groups U of `size` training points removed together (Koh, Ang, Teo & Liang, 2019),
  predicted Σ_{i∈U} Δ̂(i) against ℓ(z_t; θ₋U) − ℓ(z_t; θ*): random groups and same-class groups
  (shared by every test point) and, per test point, groups drawn from the `tail_pool` points of
  most positive and of most negative Δ̂ (of the `select.by` estimator).
- `lds`: the linear datamodeling score (Park et al., 2023). M subsets S_m keep a fraction α of
  the training set; each is re-trained; per test point LDS = Spearman over m between the
  predicted change Σ_{i∉S_m} Δ̂(i) (the points the subset leaves out) and the measured change
  ℓ(z_t; θ_{S_m}) − ℓ(z_t; θ*). Both sides are changes of the test loss on removing the left-out
  points, so a correct estimator scores +1. Reported: the mean over test points, with a
  bootstrap interval resampling subsets (the same resamples for every test point).

Subsets and groups are drawn from seeded generators and written to `targets/plan.json`
(indices included), so a rerun, or a rerun of one chunk, re-trains exactly the same sets. This
module is torch-free (the DAG is built from it); the re-trainings are in study/pipeline.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..io import read_json, write_parquet
from ..stats import CORRELATION_DEFAULTS, METHODS, correlate, spearman_rows, stream_seed, without_values

TRUTHS = ("loo", "pbrf", "groups", "lds")
DEFAULTS = {
    # solver: `train` runs the batched trainer for `steps` (default loo.steps) with loo's optimiser
    # settings; `lbfgs` solves each copy to convergence (full batch, small nets)
    "pbrf": {"epsilon_scale": 1.0, "solver": "train", "lbfgs_iterations": 500, "tolerance": 1e-10},
    "groups": {"size": 5, "random": 10, "tails": 5, "same_class": 10, "tail_pool": 0.1, "seed": 0, "chunk_size": 30},
    # start: theta_star (warm start for `steps`, default loo.steps, loo's settings) or scratch
    # (the original training settings from the cell's seeded initialisation: the published protocol)
    "lds": {"subsets": 100, "fraction": 0.5, "seed": 0, "chunk_size": 25, "start": "theta_star"},
}
GROUP_KINDS = ("random", "same_class", "tails_positive", "tails_negative")


def enabled_targets(block: dict) -> list[str]:
    """The study's `targets` (default [loo]); ValueError naming the key for an unknown one."""
    targets = list(block.get("targets", ["loo"]))
    for name in targets:
        if name not in TRUTHS:
            raise ValueError(f"targets: unknown ground truth '{name}'; known: {list(TRUTHS)}")
    return targets


def study_targets_enabled(config: dict, study: str) -> list[str]:
    """The union of `targets` over a study's architectures, in order of first appearance (a
    per-architecture `overrides.<arch>.targets` may add some)."""
    from .grid import arch_config, study_block

    found = []
    for arch in study_block(config, study)["architectures"]:
        found += [name for name in enabled_targets(arch_config(config, study, arch)) if name not in found]
    return found


def settings(block: dict, name: str) -> dict:
    """The `name` block (pbrf, groups, lds) of a cell's merged config over its defaults."""
    merged = {**DEFAULTS[name], **block.get(name, {})}
    if name == "lds" and not 0 < float(merged["fraction"]) < 1:
        raise ValueError(f"lds.fraction must be in (0, 1), got {merged['fraction']}")
    if name == "lds" and merged["start"] not in ("theta_star", "scratch"):
        raise ValueError(f"lds.start must be theta_star or scratch, got '{merged['start']}'")
    if name == "pbrf" and merged["solver"] not in ("train", "lbfgs"):
        raise ValueError(f"pbrf.solver must be train or lbfgs, got '{merged['solver']}'")
    return merged


def loo_only(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a correlation table scored against leave-one-out (all rows of a table without
    a `truth` column): what the paper's tables and figures show."""
    if "truth" not in frame.columns:
        return frame
    return frame[frame["truth"].fillna("loo") == "loo"]


# --------------------------------------------------------------------------- plans
def draw_groups(scores: dict[str, np.ndarray], labels: np.ndarray, cfg: dict, rng: np.random.Generator) -> list[dict]:
    """Groups of `size` training indices: `random` and `same_class` ones shared by every test point,
    and per test point (`scores`: name → Δ̂ of every training point, NaN when its estimator failed)
    `tails` groups drawn without replacement from each of the `tail_pool` fraction of points with the
    most positive and the most negative Δ̂."""
    n, size = len(labels), int(cfg["size"])
    if not 1 <= size < n:
        raise ValueError(f"groups.size must be in [1, n) with n = {n} training points, got {size}")
    groups = [{"kind": "random", "test_point": None, "indices": sorted(rng.choice(n, size, replace=False).tolist())}
              for _ in range(int(cfg["random"]))]
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= size]
    for g in range(int(cfg["same_class"]) if classes else 0):
        members = np.flatnonzero(labels == classes[g % len(classes)])
        groups.append({"kind": "same_class", "test_point": None,
                       "indices": sorted(rng.choice(members, size, replace=False).tolist())})
    pool = min(n, max(size, int(round(float(cfg["tail_pool"]) * n))))
    for name, score in scores.items():
        if np.isnan(score).any():
            continue
        order = np.argsort(-score, kind="stable")
        for kind, candidates in (("tails_positive", order[:pool]), ("tails_negative", order[::-1][:pool])):
            for _ in range(int(cfg["tails"])):
                groups.append({"kind": kind, "test_point": name,
                               "indices": sorted(int(i) for i in rng.choice(candidates, size, replace=False))})
    return [{"id": g, **group} for g, group in enumerate(groups)]


def draw_subsets(n: int, cfg: dict, rng: np.random.Generator) -> list[list[int]]:
    """M subsets keeping round(α n) training points each; returned as the indices each leaves out."""
    keep = int(round(float(cfg["fraction"]) * n))
    if not 1 <= keep < n:
        raise ValueError(f"lds.fraction {cfg['fraction']} keeps {keep} of {n} training points")
    return [sorted(rng.permutation(n)[keep:].tolist()) for _ in range(int(cfg["subsets"]))]


def make_plan(influence: pd.DataFrame, labels: np.ndarray, targets: list[str], groups_cfg: dict, lds_cfg: dict,
              seed_keys: tuple) -> dict:
    """The groups and subsets a cell re-trains (only for the enabled targets), seeded by the config's
    seeds and `seed_keys` (the cell)."""
    plan = {"n_train": int(len(labels))}
    if "groups" in targets:
        scores = {name: rows.sort_values("train_index").predicted_loss_change.to_numpy(float)
                  for name, rows in influence.groupby("test_point", sort=False)}
        rng = np.random.default_rng(stream_seed(int(groups_cfg["seed"]), "groups", *seed_keys))
        plan["groups"] = draw_groups(scores, np.asarray(labels), groups_cfg, rng)
    if "lds" in targets:
        rng = np.random.default_rng(stream_seed(int(lds_cfg["seed"]), "lds", *seed_keys))
        plan["lds"] = {"fraction": float(lds_cfg["fraction"]), "left_out": draw_subsets(len(labels), lds_cfg, rng)}
    return plan


def plan_sets(plan: dict, kind: str) -> list[list[int]]:
    """The removed index sets of `kind` (groups, lds) in plan order."""
    if kind == "groups":
        return [g["indices"] for g in plan.get("groups", [])]
    if kind == "lds":
        return list(plan.get("lds", {}).get("left_out", []))
    raise ValueError(f"unknown re-training kind '{kind}'")


def chunk_count(total: int, chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    return (int(total) + int(chunk_size) - 1) // int(chunk_size)


# --------------------------------------------------------------------------- scores
def lds_score(predicted: np.ndarray, actual: np.ndarray, resamples: int = 2000, confidence: float = 0.95,
              seed=0) -> dict:
    """LDS of predicted vs actual changes, both [T, M] (test points × subsets): per test point
    Spearman over subsets, their mean, and a percentile bootstrap interval of the mean that
    resamples the M subsets with replacement (one draw shared by the T test points)."""
    predicted, actual = np.atleast_2d(np.asarray(predicted, float)), np.atleast_2d(np.asarray(actual, float))
    per_point = spearman_rows(predicted, actual)
    mean = float(np.nanmean(per_point)) if np.isfinite(per_point).any() else math.nan
    out = {"per_point": per_point, "lds": mean, "lds_lo": math.nan, "lds_hi": math.nan, "n_subsets": predicted.shape[1]}
    if resamples > 0 and math.isfinite(mean):
        rng = np.random.default_rng(seed)
        m = predicted.shape[1]
        values = np.empty(resamples)
        for start in range(0, resamples, 200):  # [T, b, M] at a time
            idx = rng.integers(0, m, size=(min(200, resamples - start), m))
            r = spearman_rows(predicted[:, idx], actual[:, idx])  # [T, b]
            values[start : start + len(idx)] = np.nanmean(r, axis=0)
        alpha = 1 - confidence
        out["lds_lo"], out["lds_hi"] = (float(v) for v in np.nanquantile(values, [alpha / 2, 1 - alpha / 2]))
    return out


def _row(cell, tp, estimator, truth, subset, stats_, model_flags, metrics):
    flag = ";".join(filter(None, model_flags + [stats_["flag"]]))
    if model_flags:
        stats_ = without_values(stats_)
    return {**cell, "test_point": tp["name"], "test_index": tp["index"], "test_loss": tp["loss"], "estimator": estimator,
            "target": "loss_change", "subset": subset, "truth": truth, **stats_, "flag": flag,
            "train_accuracy": metrics.get("train_accuracy", math.nan), "test_accuracy": metrics.get("test_accuracy", math.nan)}


def _tables(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) if paths else pd.DataFrame()


def changes(table: pd.DataFrame, key: str, test_index: int, loss_at_optimum: float, scale: float = 1.0) -> pd.Series:
    """(ℓ(z_t; θ_re-trained) − ℓ(z_t; θ*)) / scale at one test point, indexed by `key`."""
    part = table[table.test_index == test_index]
    return ((part.test_loss - loss_at_optimum) / scale).set_axis(part[key].to_numpy())


def correlate_targets(cell: dict, influence_paths: dict, test_points_path, metrics_path, correlations_out,
                      selection_path=None, pbrf_paths=(), plan_path=None, group_paths=(), lds_paths=(),
                      loo_rows_path=None, options: dict | None = None) -> pd.DataFrame:
    """One correlation row per (test point, estimator, truth, subset) for the PBRF, group and LDS
    targets of a cell (the `truth` column; LOO's rows are correlate.py's). With LOO's `rows.parquet`
    the LOO change itself is scored against PBRF as estimator `loo_retraining`. For LDS the
    `spearman` column is the LDS of one test point, or their mean (`test_point` `mean`), with
    intervals from resampling subsets."""
    options = {**CORRELATION_DEFAULTS, **(options or {})}
    points = read_json(test_points_path)["test_points"]
    metrics = read_json(metrics_path)
    model_flags = [f"model_not_trained:{f}" for f in metrics.get("flags", [])]
    tables = {name: pd.read_parquet(path) for name, path in influence_paths.items()}
    plan = read_json(plan_path) if plan_path else {}
    out = []

    def scored(estimator, truth, subset, tp, predicted, actual):
        stats_ = correlate(predicted, actual, resamples=options["resamples"], permutations=options["permutations"],
                           confidence=options["confidence"],
                           seed=stream_seed(options["seed"], *cell.values(), tp["name"], truth, subset))
        out.append(_row(cell, tp, estimator, truth, subset, stats_, model_flags, metrics))

    if pbrf_paths:
        pbrf = _tables(pbrf_paths)
        selection = read_json(selection_path)["per_test_point"] if selection_path else {}
        scale = float(pbrf.epsilon_scale.iloc[0]) if len(pbrf) else 1.0
        loo = pd.read_parquet(loo_rows_path) if loo_rows_path else None
        for tp in points:
            chosen = selection.get(tp["name"], {})
            truth = changes(pbrf[pbrf.removed_index >= 0], "removed_index", tp["index"], tp["loss"], scale)
            predictors = {name: t[t.test_point == tp["name"]].set_index("train_index").predicted_loss_change
                          for name, t in tables.items()}
            if loo is not None:
                part = loo[(loo.test_point == tp["name"])].drop_duplicates("train_index").set_index("train_index")
                predictors["loo_retraining"] = part.actual_loss_change
            # a copy L-BFGS could not solve has NaN parameters: left out, so `n` counts the solved ones
            indices = [int(i) for i in chosen if int(i) in truth.index and np.isfinite(truth[int(i)])]
            labels = sorted({chosen[str(i)] for i in indices})
            for name, predictor in predictors.items():
                subsets = [("all", indices)] + ([(lab, [i for i in indices if chosen[str(i)] == lab]) for lab in labels]
                                                if len(labels) > 1 else [])
                for subset, part in subsets:
                    scored(name, "pbrf", subset, tp, predictor.reindex(part).to_numpy(), truth.reindex(part).to_numpy())

    if group_paths:
        groups = pd.DataFrame(plan["groups"])
        table = _tables(group_paths)
        for tp in points:
            mine = groups[groups.test_point.isna() | (groups.test_point == tp["name"])]
            truth = changes(table, "set_id", tp["index"], tp["loss"]).reindex(mine.id.to_numpy()).to_numpy()
            kinds = mine.kind.str.replace("_positive", "").str.replace("_negative", "").to_numpy()
            for name, t in tables.items():
                score = t[t.test_point == tp["name"]].sort_values("train_index").predicted_loss_change.to_numpy(float)
                predicted = np.array([score[idx].sum() for idx in mine.indices])
                scored(name, "groups", "all", tp, predicted, truth)
                for kind in ("random", "same_class", "tails"):
                    if (kinds == kind).sum() >= 3:
                        scored(name, "groups", kind, tp, predicted[kinds == kind], truth[kinds == kind])

    if lds_paths:
        left_out = plan["lds"]["left_out"]
        table = _tables(lds_paths)
        actual = np.stack([changes(table, "set_id", tp["index"], tp["loss"]).reindex(range(len(left_out))).to_numpy()
                           for tp in points])
        for name, t in tables.items():
            scores = np.stack([t[t.test_point == tp["name"]].sort_values("train_index").predicted_loss_change.to_numpy(float)
                               for tp in points])
            predicted = np.stack([scores[:, idx].sum(axis=1) for idx in left_out], axis=1)  # [T, M]
            for t_, tp in enumerate(points):
                scored(name, "lds", "all", tp, predicted[t_], actual[t_])
            failed = np.isnan(predicted).any(axis=1) | np.isnan(actual).any(axis=1)
            result = lds_score(predicted[~failed], actual[~failed], resamples=options["resamples"],
                               confidence=options["confidence"], seed=stream_seed(options["seed"], *cell.values(), "lds"))
            stats_ = {"n": int(len(left_out)), "pearson": math.nan, "spearman": result["lds"],
                      "spearman_lo": result["lds_lo"], "spearman_hi": result["lds_hi"],
                      "pearson_lo": math.nan, "pearson_hi": math.nan, "pearson_p": math.nan, "spearman_p": math.nan,
                      "resamples": int(options["resamples"]), "permutations": 0,
                      "confidence": float(options["confidence"]), "bootstrap_degenerate_fraction": math.nan,
                      "flag": "" if math.isfinite(result["lds"]) else ("estimator_failed" if failed.all() else
                                                                        "constant_actual"),
                      "test_points_used": int((~failed).sum())}
            mean_point = {"name": "mean", "index": -1, "loss": math.nan}
            out.append(_row(cell, mean_point, name, "lds", "all", stats_, model_flags, metrics))
    frame = pd.DataFrame(out)
    write_parquet(frame, correlations_out)
    return frame


def targets_table(correlations: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Wide view per cell and estimator: Pearson/Spearman against each ground truth (subset `all`,
    loss change; LDS: the mean over test points), `value [lo, hi]` or the flag's name."""
    from ..stats import format_interval

    part = correlations[(correlations.subset == "all") & (correlations.target == "loss_change")].copy()
    part["truth"] = part.get("truth", pd.Series("loo", index=part.index)).fillna("loo")
    part = part[(part.truth != "lds") | (part.test_point == "mean")]
    keys = [k for k in ("study", "dataset", "arch", "decay", "seed") if k in part.columns]
    out = {}
    for record in part.to_dict("records"):
        point = "all test points" if record["truth"] == "lds" else record["test_point"]
        key = tuple(record[k] for k in keys) + (record["estimator"],)
        row = out.setdefault(key, dict(zip(keys + ["estimator"], key)))
        for method in METHODS:
            if record["truth"] == "lds" and method == "pearson":
                continue
            text = format_interval(record[method], record[f"{method}_lo"], record[f"{method}_hi"], record["flag"] or "", digits)
            label = "LDS" if record["truth"] == "lds" else f"{record['truth']} {method}"
            column = label if record["truth"] == "lds" else f"{label} ({point})"
            row[column] = text
    return pd.DataFrame(list(out.values()))


def study_targets(cell_paths, loo_path, long_out, table_out) -> pd.DataFrame:
    """Stack a study's LOO correlations (truth `loo`) and every cell's other ground truths into one
    long table (`targets_correlations.parquet`) and write the wide view (`targets.csv`)."""
    from ..io import write_csv

    loo = pd.read_parquet(loo_path)
    loo = loo.assign(truth=loo["truth"].fillna("loo") if "truth" in loo else "loo")
    frames = [loo] + [pd.read_parquet(p) for p in cell_paths]
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
    write_parquet(frame, long_out)
    write_csv(targets_table(frame), table_out)
    return frame
