"""From correlations, their intervals and the ground truth's noise to one word per cell, test
point, estimator and ground truth (`verdict.csv`), and the estimator intervals separate from the
rest (`verdict_best.csv`).

The words, in the order they are decided:

- `model did not train`: the cell's model is flagged (`model_not_trained:...`);
- `estimator failed`: the estimator returned NaN or a constant (`estimator_failed`, `estimator_failed:<status>`,
  `constant_predicted`);
- `no ground truth`: nothing was re-trained or too few points (`selection_failed`, `ground_truth_missing`,
  `too_few_points`); `ground truth has no spread`: every re-trained change is the same (`constant_actual`);
- `no interval`: the bootstrap is disabled (`correlation.resamples: 0`), so there is no lower bound;
- `ground truth too noisy to judge`: the attainable-correlation ceiling is below `verdict.min_ceiling`;
- `reliable` / `partly reliable` / `unreliable`: the LOWER bound of the correlation's bootstrap
  interval is ≥ `verdict.reliable`, ≥ `verdict.partly_reliable`, or below;
- `noise not measured`: no repeat re-trainings (and a minibatch order that could change the answer),
  and the interval alone does not reach `reliable`: measurement noise only lowers a correlation, so
  `reliable` stands without a noise estimate, while a lower value could be the ground truth's fault.

The noise that matters. Write the measured change of one re-training as Δ_i = Δ*_i + c + e_i: c is
shared by every copy (the same minibatch order and start move them all alike: the drift) and
cancels in any correlation; e_i is the part that changes with the minibatch order, independent of
the estimator. With a repeat re-training of the same points under another order, d_i = Δ'_i − Δ_i
= (c' − c) + e'_i − e_i, so σ²_repeat = Var_i(d_i) / 2 (centred: the shared shift c' − c drops out).
With σ²_effect = Var_i(Δ_i) over the re-trained points, any estimator's expected correlation with
the measured Δ is at most corr(Δ*, Δ) = √(1 − σ²_repeat / σ²_effect) (Spearman's attenuation):
the ceiling, √max(0, 1 − σ²_repeat/σ²_effect). Full-batch gradient descent (and the L-BFGS PBRF
solver) has no order to vary: σ_repeat = 0 and the ceiling is 1 by construction.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..stats import format_interval, format_mean_spread
from .noise import repeat_sigma

DEFAULTS = {"correlation": "weaker", "reliable": 0.7, "partly_reliable": 0.3, "min_ceiling": 0.5, "min_repeats": 3}

RELIABLE, PARTLY, UNRELIABLE = "reliable", "partly reliable", "unreliable"
TOO_NOISY, NOT_MEASURED = "ground truth too noisy to judge", "noise not measured"
NOT_TRAINED, FAILED = "model did not train", "estimator failed"
NO_TRUTH, NO_SPREAD, NO_INTERVAL = "no ground truth", "ground truth has no spread", "no interval"
WORDS = (RELIABLE, PARTLY, UNRELIABLE, TOO_NOISY, NOT_MEASURED, NOT_TRAINED, FAILED, NO_TRUTH, NO_SPREAD, NO_INTERVAL)
NONE_DISTINGUISHABLE = "no estimator is distinguishable here"
ONE_ESTIMATOR = "only one estimator was scored"
# pseudo-estimators (a re-training scored against another ground truth) are not candidates for "best"
NOT_ESTIMATORS = ("loo_retraining",)

CELL = ["study", "dataset", "arch", "decay", "seed"]
COLUMNS = CELL + ["test_point", "estimator", "truth", "verdict", "correlation", "value", "lo", "hi", "interval",
                  "confidence", "grade", "n", "selection", "noise_source", "sigma_repeat", "sigma_effect", "repeat_n",
                  "ceiling", "seeds_behind_row", "study_seeds", "over_seeds", "verdicts_over_seeds", "flag", "reason",
                  "pearson_lo", "pearson_hi", "spearman_lo", "spearman_hi"]


def settings(block: dict | None) -> dict:
    """The study's `verdict` block over DEFAULTS, checked (ValueError naming the key)."""
    merged = {**DEFAULTS, **(block or {})}
    unknown = sorted(set(merged) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"verdict: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    if merged["correlation"] not in ("weaker", "pearson", "spearman"):
        raise ValueError(f"verdict.correlation must be weaker, pearson or spearman, got '{merged['correlation']}'")
    if not -1 <= float(merged["partly_reliable"]) <= float(merged["reliable"]) <= 1:
        raise ValueError("verdict: need -1 ≤ partly_reliable ≤ reliable ≤ 1, got "
                         f"partly_reliable {merged['partly_reliable']}, reliable {merged['reliable']}")
    if not 0 <= float(merged["min_ceiling"]) <= 1:
        raise ValueError(f"verdict.min_ceiling must be in [0, 1], got {merged['min_ceiling']}")
    if int(merged["min_repeats"]) < 2:
        raise ValueError(f"verdict.min_repeats must be at least 2, got {merged['min_repeats']}")
    return merged


# --------------------------------------------------------------------------- noise
def ceiling(sigma_repeat: float, sigma_effect: float) -> float:
    """√max(0, 1 − σ²_repeat/σ²_effect): the largest correlation any predictor can expect with a
    ground truth whose per-copy noise is σ_repeat and whose spread over the points is σ_effect;
    NaN when either is unknown or the spread is 0."""
    if not (math.isfinite(sigma_repeat) and math.isfinite(sigma_effect)) or sigma_effect <= 0:
        return math.nan
    return math.sqrt(max(0.0, 1.0 - (sigma_repeat / sigma_effect) ** 2))


def repeat_noise(rows: pd.DataFrame, repeats: list[tuple[dict, pd.DataFrame]]) -> pd.DataFrame:
    """Per cell and test point: σ_repeat (centred) of the LOO loss change and the number of repeated
    points, from each cell's `loo/repeat.parquet` (removed_index, test_index, test_loss; removed_index
    < 0 is the repeat's own drift control, not used: centring removes the shared shift) and the
    study's rows.parquet (actual_loss_change = ℓ(θ₋z) − ℓ(θ*); the constant ℓ(θ*) cancels in Var(d))."""
    out = []
    for cell, table in repeats:
        mine = rows
        for key in CELL:
            mine = mine[mine[key] == cell[key]] if key != "decay" else mine[np.isclose(mine[key].astype(float), float(cell[key]))]
        mine = mine.drop_duplicates(["test_point", "train_index"])
        for point, part in mine.groupby("test_point", sort=False):
            index = int(part.test_index.iloc[0])
            again = table[(table.test_index == index) & (table.removed_index >= 0)].set_index("removed_index").test_loss
            original = part.set_index("train_index").actual_loss_change
            common = again.index.intersection(original.index)
            out.append({**{k: cell[k] for k in CELL}, "test_point": point,
                        "sigma_repeat": repeat_sigma(original.loc[common].to_numpy(), again.loc[common].to_numpy()),
                        "repeat_n": int(len(common))})
    return pd.DataFrame(out, columns=CELL + ["test_point", "sigma_repeat", "repeat_n"])


def deterministic_truths(arch_cfg: dict) -> dict:
    """{truth: True} for the ground truths of one architecture whose re-training has no minibatch
    order to vary (full batch: no `batch_size`, or one ≥ the data; PBRF solved by L-BFGS), so that
    their repeat noise is 0 by construction. `arch_cfg` is the study block with the overrides merged."""
    train, loo = arch_cfg.get("train", {}), arch_cfg.get("loo", {})
    retrain = {**train, **{k: v for k, v in loo.items() if v is not None}}
    full = not retrain.get("batch_size")
    out = {"loo": full, "groups": full}
    lds = arch_cfg.get("lds", {})
    out["lds"] = (not train.get("batch_size")) if lds.get("start") == "scratch" else full
    pbrf = arch_cfg.get("pbrf", {})
    out["pbrf"] = pbrf.get("solver") == "lbfgs" or not {**retrain, **pbrf}.get("batch_size")
    return out


# --------------------------------------------------------------------------- one row
def grade(lo: float, options: dict) -> str:
    """The word for a lower bound: reliable / partly reliable / unreliable."""
    if lo >= float(options["reliable"]):
        return RELIABLE
    if lo >= float(options["partly_reliable"]):
        return PARTLY
    return UNRELIABLE


def chosen_correlation(record: dict, truth: str, options: dict) -> tuple[str, float, float, float]:
    """(name, value, lo, hi) of the correlation the verdict rests on: the LDS (a Spearman over
    subsets) for truth `lds`; else `verdict.correlation`, where `weaker` takes whichever of Pearson
    and Spearman has the lower lower bound (reliable must hold for magnitudes and for ranks)."""
    get = lambda m: tuple(float(record.get(f"{m}{s}", math.nan)) for s in ("", "_lo", "_hi"))  # noqa: E731
    if truth == "lds":
        return ("LDS", *get("spearman"))
    if options["correlation"] != "weaker":
        return (options["correlation"].capitalize(), *get(options["correlation"]))
    pearson, spearman = get("pearson"), get("spearman")
    if not math.isfinite(pearson[1]):
        return ("Spearman", *spearman) if math.isfinite(spearman[1]) else ("Pearson", *pearson)
    if math.isfinite(spearman[1]) and spearman[1] < pearson[1]:
        return ("Spearman", *spearman)
    return ("Pearson", *pearson)


def decide(flag: str, lo: float, ceiling_value: float, noise_known: bool, options: dict) -> tuple[str, str]:
    """(word, reason) for one correlation: flags first, then the ground truth's noise, then the
    interval's lower bound (module docstring)."""
    flags = [f for f in (flag or "").split(";") if f]
    if any(f.startswith("model_not_trained") for f in flags):
        return NOT_TRAINED, "the model is flagged: " + ";".join(flags)
    names = [f.split(":")[0] for f in flags]  # `estimator_failed:<status>` names why
    if any(f in ("estimator_failed", "constant_predicted") for f in names):
        return FAILED, "the estimator's Δ̂ is " + ("NaN" if "estimator_failed" in names else "constant")
    if "constant_actual" in flags:
        return NO_SPREAD, "every re-trained change is the same (constant_actual)"
    if flags:
        return NO_TRUTH, "no correlation: " + ";".join(flags)
    if not math.isfinite(lo):
        return NO_INTERVAL, "no bootstrap interval (correlation.resamples is 0)"
    if noise_known and math.isfinite(ceiling_value) and ceiling_value < float(options["min_ceiling"]):
        return TOO_NOISY, (f"ceiling {ceiling_value:.2f} < min_ceiling {float(options['min_ceiling']):g}: "
                           "a perfect estimator could not show more")
    word = grade(lo, options)
    if not noise_known and word != RELIABLE:
        return NOT_MEASURED, (f"lower bound {lo:.2f} reads {word}, but without repeat re-trainings the ground "
                              "truth's noise may be the cause")
    bound = {RELIABLE: f"≥ reliable {float(options['reliable']):g}",
             PARTLY: f"≥ partly_reliable {float(options['partly_reliable']):g}",
             UNRELIABLE: f"< partly_reliable {float(options['partly_reliable']):g}"}[word]
    return word, f"lower bound {lo:.2f} {bound}"


# --------------------------------------------------------------------------- the table
def _selection(rows: pd.DataFrame) -> dict:
    """(cell..., test_point) → `top 20 + p30 20`: the selection rules' labels and counts of LOO's points."""
    if rows.empty or "selection" not in rows:
        return {}
    first = rows.drop_duplicates(CELL + ["test_point", "train_index"])
    out = {}
    for key, part in first.groupby(CELL + ["test_point"], sort=False):
        counts = part.selection.astype(str).value_counts(sort=False)
        out[key] = " + ".join(f"{label} {count}" for label, count in counts.items())
    return out


def verdict_table(correlations: pd.DataFrame, rows: pd.DataFrame | None = None, noise: pd.DataFrame | None = None,
                  deterministic: dict | None = None, options: dict | None = None) -> pd.DataFrame:
    """One row per cell, test point, estimator and ground truth (quantity `loss_change`, subset `all`;
    for LDS also the mean over test points, `test_point` `mean`): the word and its evidence.

    `correlations`: correlations.parquet or truths_correlations.parquet (a `truth` column, `loo`
    where missing); `rows`: rows.parquet (LOO's selection labels); `noise`: `repeat_noise`'s table;
    `deterministic`: {(arch, truth): True} where the re-training has no order to vary."""
    options = settings(options)
    deterministic = deterministic or {}
    frame = correlations[(correlations.subset == "all") & (correlations.quantity == "loss_change")].copy()
    frame["truth"] = frame["truth"].fillna("loo") if "truth" in frame else "loo"
    frame["flag"] = frame["flag"].fillna("")
    frame["decay"] = frame["decay"].astype(float)
    selection = _selection(rows if rows is not None else pd.DataFrame())
    measured = {}
    if noise is not None and len(noise):
        for r in noise.to_dict("records"):
            measured[tuple(r[k] for k in CELL) + (r["test_point"],)] = (float(r["sigma_repeat"]), int(r["repeat_n"]))
    seeds_of = frame.groupby(["dataset", "arch", "decay"]).seed.nunique().to_dict()
    out = []
    for r in frame.to_dict("records"):
        truth = r["truth"]
        key = tuple(r[k] for k in CELL) + (r["test_point"],)
        name, value, lo, hi = chosen_correlation(r, truth, options)
        sigma_effect = float(r.get("actual_std", math.nan)) if truth == "loo" else math.nan
        sigma_rep, repeat_n = measured.get(key, (math.nan, 0)) if truth == "loo" else (math.nan, 0)
        if deterministic.get((r["arch"], truth)):
            source, sigma_rep, ceil, known = "full batch: no order to vary", 0.0, 1.0, True
        elif repeat_n >= int(options["min_repeats"]) and math.isfinite(sigma_rep):
            source, ceil, known = f"repeats ({repeat_n} points, another minibatch order)", ceiling(sigma_rep, sigma_effect), True
            known = math.isfinite(ceil)
        else:
            source, ceil, known = ("not measured" if repeat_n == 0 else f"not measured ({repeat_n} repeats < "
                                   f"min_repeats {int(options['min_repeats'])})"), math.nan, False
        word, reason = decide(r["flag"], lo, ceil, known, options)
        shown = word in (RELIABLE, PARTLY, UNRELIABLE, TOO_NOISY, NOT_MEASURED, NO_INTERVAL)
        if truth == "loo":
            chosen = selection.get(key, "")
        elif truth == "pbrf":
            chosen = selection.get(key, "") or "LOO's points"
        elif truth == "groups":
            chosen = f"{int(r['n'])} groups"
        else:
            chosen = f"{int(r['n'])} random subsets" + (" (mean over test points)" if r["test_point"] == "mean" else "")
        out.append({
            **{k: r[k] for k in CELL}, "test_point": r["test_point"], "estimator": r["estimator"], "truth": truth,
            "verdict": word, "correlation": name,
            "value": value if shown else math.nan, "lo": lo if shown else math.nan, "hi": hi if shown else math.nan,
            "interval": format_interval(value, lo, hi, "" if shown else r["flag"], 2),
            "confidence": float(r.get("confidence", math.nan)),
            "grade": grade(lo, options) if shown and math.isfinite(lo) else "",
            "n": int(r["n"]) if r.get("n") is not None and not pd.isna(r.get("n")) else 0, "selection": chosen,
            "noise_source": source, "sigma_repeat": sigma_rep, "sigma_effect": sigma_effect, "repeat_n": repeat_n,
            "ceiling": ceil, "seeds_behind_row": 1, "study_seeds": int(seeds_of.get((r["dataset"], r["arch"], r["decay"]), 1)),
            "flag": r["flag"], "reason": reason,
            **{f"{m}_{e}": float(r.get(f"{m}_{e}", math.nan)) if shown else math.nan
               for m in ("pearson", "spearman") for e in ("lo", "hi")}})
    table = pd.DataFrame(out, columns=COLUMNS)
    if len(table):  # LOO first, then PBRF, groups, LDS; within each, the cells in the tables' (grid) order
        order = {name: i for i, name in enumerate(("loo", "pbrf", "groups", "lds"))}
        table = table.assign(_truth=table.truth.map(order).fillna(len(order)))
        table = table.sort_values("_truth", kind="stable").drop(columns="_truth").reset_index(drop=True)
    return _over_seeds(table)


def _over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Fill `over_seeds` (mean ± std of the named correlation over the unflagged seeds, flagged
    seeds named) and `verdicts_over_seeds` (`reliable 2, unreliable 1`), or `one seed`."""
    if table.empty:
        return table
    keys = ["study", "dataset", "arch", "decay", "test_point", "estimator", "truth"]
    spread, words = {}, {}
    for key, part in table.groupby(keys, sort=False):
        if len(part) == 1:
            spread[key] = words[key] = "one seed"
            continue
        good = part[np.isfinite(part.value.astype(float))]
        text = format_mean_spread(float(good.value.mean()), float(good.value.std(ddof=1)) if len(good) > 1 else math.nan,
                                  len(good)) if len(good) else "no seed has a value"
        bad = part[~np.isfinite(part.value.astype(float))]
        if len(bad):
            text += "; " + " ".join(f"seed{s}: {w}" for s, w in zip(bad.seed, bad.verdict))
        spread[key] = f"{part.correlation.iloc[0]} {text}"
        counts = part.verdict.value_counts()
        words[key] = ", ".join(f"{w} {c}" for w, c in counts.items())
    index = [tuple(r) for r in table[keys].itertuples(index=False)]
    return table.assign(over_seeds=[spread[k] for k in index], verdicts_over_seeds=[words[k] for k in index])


def _separated(mine, others: pd.DataFrame, options: dict) -> bool:
    """Whether `mine`'s interval lies above every other's: its lower bound above their upper bounds,
    for each correlation the verdict rests on (both Pearson and Spearman for `weaker`; the LDS's
    Spearman for truth `lds`)."""
    if mine.truth == "lds":
        methods = ["spearman"]
    else:
        methods = ["pearson", "spearman"] if options["correlation"] == "weaker" else [options["correlation"]]
    return all(math.isfinite(getattr(mine, f"{m}_lo")) and (getattr(mine, f"{m}_lo") > others[f"{m}_hi"]).all()
               for m in methods)


def best_estimators(table: pd.DataFrame, options: dict | None = None) -> pd.DataFrame:
    """Per cell, test point and ground truth: the estimator whose interval lies wholly above every
    other estimator's (`_separated`), else `no estimator is distinguishable here`; then one study
    line (`seed` `all`) per ground truth."""
    options = settings(options)
    judged = table[table.grade.astype(str) != ""]
    judged = judged[~judged.estimator.isin(NOT_ESTIMATORS)]
    scored = table[~table.estimator.isin(NOT_ESTIMATORS)]
    out = []
    keys = CELL + ["test_point", "truth"]
    for key, part in scored.groupby(keys, sort=False):
        ok = judged.merge(pd.DataFrame([dict(zip(keys, key))]), on=keys)
        row = dict(zip(keys, key))
        if part.estimator.nunique() < 2:
            row.update(best="", line=ONE_ESTIMATOR, estimators=" ".join(sorted(part.estimator)))
        else:
            best = ""
            for r in ok.itertuples():
                others = ok[ok.estimator != r.estimator]
                if len(others) == part.estimator.nunique() - 1 and _separated(r, others, options):
                    best = r.estimator
            row.update(best=best, line=f"{best} ({_evidence(ok, best)})" if best else NONE_DISTINGUISHABLE,
                       estimators=" ".join(sorted(part.estimator)))
        out.append(row)
    cells = pd.DataFrame(out, columns=keys + ["best", "line", "estimators"])
    study_rows = []
    for (study, truth), part in cells.groupby(["study", "truth"], sort=False):
        compared = part[part.line != ONE_ESTIMATOR]
        winners = compared.best[compared.best != ""].value_counts()
        if compared.empty:
            line = ONE_ESTIMATOR
        elif winners.empty:
            line = NONE_DISTINGUISHABLE
        elif len(winners) == 1:
            line = (f"{winners.index[0]} (its interval lies above every other estimator's in {int(winners.iloc[0])} of "
                    f"{len(compared)} cells and test points; in the rest none is distinguishable)")
        else:
            line = "it depends on the cell: " + ", ".join(f"{e} best in {int(c)}" for e, c in winners.items()) + \
                   f" of {len(compared)} cells and test points"
        study_rows.append({"study": study, "dataset": "all", "arch": "all", "decay": math.nan, "seed": "all",
                           "test_point": "all", "truth": truth, "best": winners.index[0] if len(winners) == 1 else "",
                           "line": line, "estimators": " ".join(sorted(set(" ".join(part.estimators).split())))})
    return pd.concat([pd.DataFrame(study_rows, columns=cells.columns), cells.astype({"seed": object})], ignore_index=True)


def _evidence(part: pd.DataFrame, best: str) -> str:
    mine = part[part.estimator == best].iloc[0]
    rest = part[part.estimator != best]
    return (f"{mine.correlation} {mine.interval}; the others' intervals lie below: "
            + ", ".join(f"{e} {i}" for e, i in zip(rest.estimator, rest.interval)))


def write_verdict(correlations_path, rows_path, verdict_out, best_out, options: dict | None = None,
                  repeat_paths=(), repeat_cells=(), deterministic: dict | None = None) -> pd.DataFrame:
    """verdict.csv and verdict_best.csv of a study. `correlations_path`: truths_correlations.parquet
    when the study scores other ground truths, else correlations.parquet; `repeat_paths[i]` is the
    repeat table of the cell `repeat_cells[i]` (cell keys as the tables hold them)."""
    from ..io import write_csv

    if len(repeat_paths) != len(repeat_cells):
        raise ValueError("write_verdict: one cell per repeat table is needed")
    correlations = pd.read_parquet(correlations_path)
    rows = pd.read_parquet(rows_path)
    noise = repeat_noise(rows, [(cell, pd.read_parquet(p)) for cell, p in zip(repeat_cells, repeat_paths)])
    table = verdict_table(correlations, rows, noise, deterministic, options)
    write_csv(table, verdict_out)
    write_csv(best_estimators(table, options), best_out)
    return table
