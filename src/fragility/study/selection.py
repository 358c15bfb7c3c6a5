"""Which test points to explain and which training points to re-train.

Test-point specs (strings): `max` (highest test loss), `median` (the 50th percentile of test
loss), `p<q>` (q-th percentile), `top<k>` (the k highest-loss points, named top1..topk),
`random<k>` (k distinct test points drawn uniformly without replacement, named random1..randomk,
seeded by the cell's seed alone: the same points for every architecture and decay of that seed,
whatever the losses; the paper's ImageNet cells use two random test points).

Selection rules (per test point, on |Δ̂|): `{top_fraction: f}`, `{top_k: k}` and
`{around_percentile: q, k: m}` (the m points whose |Δ̂| rank is nearest the q-th percentile).

`select.by: union` (`select_union`) favours no estimator: per test point, a round-robin over the
estimators' rankings by |Δ̂| (in the order of `influence.methods`), each in turn adding its
highest-ranked point not yet taken, until K distinct points, K = the rules' total (the sum of
their sizes, at most n).

Fallback: where the `select.by` estimator's status for a test point is not ok (diverged,
`unsupported: derivative of ...`, failed), that test point takes K = the rules' total training
points drawn uniformly at random from the cell's seed (`random_training_points`, the stream of
`select.random`), labelled "random" and recorded under `fallback` in selected.json: a selection
that favours no estimator and needs no other estimator's table, so that the `select` job waits
for `select.by`'s table alone and adding an estimator to a study re-runs no re-training. (Given
other estimators' tables, as the library's `select_by` may be, it takes the round-robin over
those that scored the point ok instead, labelled "union".)

`select.random: k` (default 0) adds k training points drawn uniformly without replacement from
default_rng([seed, RANDOM_STREAM]), the cell's seed alone: one sample shared by every test point
(LOO re-trains each once), independent of every score, labelled "random" even where a rule or the
union also picked the point, so that the correlations' "random" subset is an unbiased sample of
the training set. `select.by: random` selects only that sample. selected.json records
`random: {k, seed}`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import write_json


def _percentile_index(losses: np.ndarray, q: float) -> int:
    order = np.argsort(losses, kind="stable")
    rank = int(round(q / 100.0 * (len(losses) - 1)))
    return int(order[rank])


def random_test_points(n: int, k: int, seed: int) -> list[int]:
    """k distinct indices of n test points, uniform without replacement, from `seed` only."""
    return [int(i) for i in np.random.default_rng([int(seed), 7_211]).choice(n, size=k, replace=False)]


def choose_test_points(losses, specs: list[str], seed: int = 0) -> list[dict]:
    """Resolve specs against per-test-point losses at θ*; returns [{name, index, loss}].
    `seed` (the cell's seed) draws the `random<k>` points."""
    losses = np.asarray(losses, dtype=float)
    if len(losses) == 0:
        raise ValueError("the test set is empty")
    chosen = []
    for spec in specs:
        if spec == "max":
            chosen.append(("max", int(np.argmax(losses))))
        elif spec == "median":
            chosen.append(("median", _percentile_index(losses, 50)))
        elif m := re.fullmatch(r"p(\d+(?:\.\d+)?)", spec):
            if float(m.group(1)) > 100:
                raise ValueError(f"test_points: '{spec}' is not a percentile (use p0 to p100)")
            chosen.append((spec, _percentile_index(losses, float(m.group(1)))))
        elif m := re.fullmatch(r"top(\d+)", spec):
            order = np.argsort(-losses, kind="stable")
            k = int(m.group(1))
            if k < 1:
                raise ValueError(f"test_points: '{spec}' asks for no test points (top<k> needs k ≥ 1)")
            if k > len(losses):
                raise ValueError(f"test_points: '{spec}' asks for {k} points but the test set has {len(losses)}")
            chosen.extend((f"top{r + 1}", int(order[r])) for r in range(k))
        elif m := re.fullmatch(r"random(\d+)", spec):
            k = int(m.group(1))
            if not 1 <= k <= len(losses):
                raise ValueError(f"test_points: '{spec}' asks for {k} points but the test set has {len(losses)}")
            chosen.extend((f"random{r + 1}", i) for r, i in enumerate(random_test_points(len(losses), k, seed)))
        else:
            raise ValueError(f"test_points: unknown spec '{spec}' (use max, median, p<q>, top<k> or random<k>)")
    seen, out = set(), []
    for name, index in chosen:
        if name not in seen:
            seen.add(name)
            out.append({"name": name, "index": index, "loss": float(losses[index])})
    return out


def select_training_points(abs_scores: np.ndarray, rules: list[dict]) -> dict[int, str]:
    """Apply the selection rules to |Δ̂| of one test point; returns {train index: rule label}."""
    abs_scores = np.asarray(abs_scores, dtype=float)
    if np.isnan(abs_scores).any():
        raise ValueError("cannot select training points: the influence estimates contain NaN (did the estimator diverge?)")
    n = len(abs_scores)
    order = np.argsort(-abs_scores, kind="stable")  # descending |Δ̂|
    picked: dict[int, str] = {}
    for rule in rules:
        if "top_fraction" in rule:
            k = max(1, int(round(float(rule["top_fraction"]) * n)))
            label, indices = "top", order[:k]
        elif "top_k" in rule:
            k = _rule_size(rule, "top_k", n)
            label, indices = "top", order[:k]
        elif "around_percentile" in rule:
            q, k = float(rule["around_percentile"]), _rule_size(rule, "k", n)
            ascending = order[::-1]
            centre = int(round(q / 100.0 * (n - 1)))
            lo = min(max(0, centre - k // 2), n - k)
            label, indices = f"p{rule['around_percentile']:g}", ascending[lo : lo + k]
        else:
            raise ValueError(f"select.rules: unknown rule {rule}")
        for i in indices:
            picked.setdefault(int(i), label)
    return picked


def _rule_size(rule: dict, key: str, n: int) -> int:
    k = int(rule[key])
    if not 1 <= k <= n:
        raise ValueError(f"select.rules: {rule} asks for {k} training points, but there are {n}")
    return k


def rules_total(rules: list[dict], n: int) -> int:
    """K of `select.by: union`: the sum of the rules' sizes (top_fraction: round(f·n), at least 1;
    top_k: k; around_percentile: k), at most n."""
    total = 0
    for rule in rules:
        if "top_fraction" in rule:
            total += max(1, int(round(float(rule["top_fraction"]) * n)))
        elif "top_k" in rule:
            total += _rule_size(rule, "top_k", n)
        elif "around_percentile" in rule:
            total += _rule_size(rule, "k", n)
        else:
            raise ValueError(f"select.rules: unknown rule {rule}")
    return min(total, n)



RANDOM_STREAM = 7_219  # the random sample's generator is default_rng([seed, RANDOM_STREAM]); test points use 7_211


def random_training_points(n: int, k: int, seed: int) -> list[int]:
    """`select.random`: k distinct indices of n training points, uniform without replacement, from
    the cell's seed alone: the same sample for every test point, whatever the scores."""
    if not 0 <= k <= n:
        raise ValueError(f"select.random: {k} training points asked for, but there are {n}")
    return sorted(int(i) for i in np.random.default_rng([int(seed), RANDOM_STREAM]).choice(n, size=k, replace=False))


def round_robin_orders(orders: dict[str, np.ndarray], k: int) -> dict[int, str]:
    """{index: ranking} of the k distinct indices that a round-robin over `orders` (name → a ranking
    of indices, best first; in the dict's order) picks, each ranking in turn adding its best index
    not yet taken; in the order picked. With one ranking: its first k."""
    n = min((len(o) for o in orders.values()), default=0)
    k = min(k, n)
    picked: dict[int, str] = {}
    position = dict.fromkeys(orders, 0)
    while len(picked) < k:
        for name, order in orders.items():
            while position[name] < n and int(order[position[name]]) in picked:
                position[name] += 1
            if position[name] < n and len(picked) < k:
                picked[int(order[position[name]])] = name
    return picked


def round_robin(abs_scores: dict[str, np.ndarray], k: int) -> dict[int, str]:
    """{train index: estimator} of the k distinct points that a round-robin over the estimators'
    rankings by |Δ̂| (descending, ties by index; estimators in the dict's order) picks."""
    if any(np.isnan(np.asarray(v, dtype=float)).any() for v in abs_scores.values()):
        raise ValueError("cannot select training points: the influence estimates contain NaN")
    return round_robin_orders({name: np.argsort(-np.asarray(v, dtype=float), kind="stable")
                               for name, v in abs_scores.items()}, k)


def _scored(tables: dict[str, pd.DataFrame], point: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """|Δ̂| of every training point (by train_index) per estimator whose status for test point
    `point` is ok, and the status of each other estimator."""
    scores, failed = {}, {}
    for name, table in tables.items():
        rows = table[table.test_point == point].sort_values("train_index", kind="stable")
        status = str(rows["status"].iloc[0])
        if status == "ok":
            scores[name] = rows["predicted_loss_change"].abs().to_numpy()
        else:
            failed[name] = status
    return scores, failed


def selection_record(tables: dict[str, pd.DataFrame], by: str, rules, random: int = 0, seed: int = 0,
                     log=print) -> dict:
    """The record of `selected.json` from every estimator's influence table (name → table).

    Per test point: `by` an estimator: `select_training_points` on its |Δ̂|; where its status is not
    ok, the round-robin over the estimators that scored the point ok (`round_robin`, K =
    `rules_total`), labelled "union" and listed under `fallback`; where none did (the workflow gives
    `select.by`'s table alone), K points at random from `seed`, labelled "random", also under
    `fallback`; only an empty table leaves a point unselected (`not_selected`, flagged
    `selection_failed:<status>` in the correlations).
    `by: union`: that round-robin over every estimator ok for the point (`left_out`: the others).
    `by: random`: only the random sample. Then the `random` points (`random_training_points`,
    drawn once for the cell from `seed`) join every test point's selection labelled "random",
    overriding another label, so the "random" subset is a sample that no score chose."""
    if by not in ("union", "random") and by not in tables:
        raise ValueError(f"select.by: '{by}' has no influence table here (tables of {list(tables)})")
    if by == "random" and random < 1:
        raise ValueError("select.by: 'random' needs select.random ≥ 1 (the number of points to draw)")
    first = next(iter(tables.values()))
    names = list(first.drop_duplicates("test_point")["test_point"])
    n = int((first.test_point == names[0]).sum()) if names else 0
    sample = random_training_points(n, int(random), seed)
    per_point, union, not_selected, left_out, contributed, fallback = {}, {}, {}, {}, {}, {}
    for point in names:
        scores, failed = _scored(tables, point)
        picked: dict[int, str] = {}
        if by == "union":
            if failed:
                left_out[point] = failed
            if scores:
                turns = round_robin(scores, rules_total(rules, len(next(iter(scores.values())))))
                picked, contributed[point] = dict.fromkeys(turns, "union"), {str(i): e for i, e in sorted(turns.items())}
            else:
                picked = _random_fallback(point, "union", "no_estimator_ok", rules, n, seed, fallback, log)
        elif by in scores:
            picked = select_training_points(scores[by], rules)
        elif by != "random" and scores:
            turns = round_robin(scores, rules_total(rules, len(next(iter(scores.values())))))
            picked, contributed[point] = dict.fromkeys(turns, "union"), {str(i): e for i, e in sorted(turns.items())}
            fallback[point] = {"from": by, "status": failed[by], "to": "union", "estimators": list(scores)}
            log(f"test point '{point}': select.by estimator '{by}' reported '{failed[by]}'; its training points are "
                f"the union (round-robin) of {list(scores)}, labelled 'union' (selected.json: fallback)")
        elif by != "random":
            picked = _random_fallback(point, by, failed[by], rules, n, seed, fallback, log)
        picked.update(dict.fromkeys(sample, "random"))  # "random" wins: its subset stays a uniform sample
        per_point[point] = {str(i): label for i, label in sorted(picked.items())}
        union.update(dict.fromkeys(picked, True))
    record = {"indices": sorted(int(i) for i in union), "per_test_point": per_point, "not_selected": not_selected,
              "rules": rules}
    if by == "union":
        record.update(by="union", estimators=list(tables), left_out=left_out, contributed_by=contributed)
    if fallback:
        record.update(fallback=fallback, contributed_by=contributed)
    if random or by == "random":
        record.update(by=by, random={"k": int(random), "seed": int(seed)})
    return record


def _random_fallback(point: str, by: str, status: str, rules, n: int, seed: int, fallback: dict, log) -> dict:
    """A test point that `by` (an estimator, or union: every estimator) failed to score: K = the
    rules' total points drawn at random from `seed`, labelled "random", recorded in `fallback`."""
    k = rules_total(rules, n)
    fallback[point] = {"from": by, "status": status, "to": "random", "k": k, "seed": int(seed)}
    log(f"test point '{point}': select.by '{by}' reported '{status}' and no other estimator's table scored it; its "
        f"training points are {k} drawn at random (seed {seed}), labelled 'random' (selected.json: fallback)")
    return dict.fromkeys(random_training_points(n, k, seed), "random")


def tables_read(by: str, estimators: list[str], plan: bool = False) -> list[str]:
    """The estimators whose influence tables a cell's selection reads: `select.by`'s alone (its
    fallback, a random sample, needs no other table, so adding an estimator re-runs no
    re-training), every estimator's for `union`, and for `random` the first one's (the training
    and test points; the sample reads no score). With `plan`, the truths plan's: under `union` and
    `random` every estimator's (groups' tails from the union of their tails)."""
    if by == "union" or (plan and by == "random"):
        return list(estimators)
    return list(estimators[:1]) if by == "random" else [by]


def select_by(influence_paths: dict[str, str], by: str, rules, out_path, log=print, random: int = 0, seed: int = 0):
    """The cell's `selected.json` from every estimator's table (`influence_paths`: name → path) by
    `select.by` (an estimator, `union` or `random`) and `select.random` (`selection_record`)."""
    tables = {name: pd.read_parquet(path) for name, path in influence_paths.items()}
    write_json(selection_record(tables, by, rules, random, seed, log=log), out_path)


def select(influence_path, rules, out_path, log=print, random: int = 0, seed: int = 0):
    """`select_by` with one estimator's table: a test point it failed takes the random fallback
    (`_random_fallback`)."""
    name = Path(influence_path).stem
    select_by({name: influence_path}, name, rules, out_path, log=log, random=random, seed=seed)


def select_union(influence_paths: dict[str, str], rules, out_path, log=print, random: int = 0, seed: int = 0):
    """`select_by` with `select.by: union`."""
    select_by(influence_paths, "union", rules, out_path, log=log, random=random, seed=seed)


def describe(select_cfg: dict) -> str:
    """A `select` block's choice in words for captions: `exact`, `union + random 3`, `random 3`."""
    k, by = int(select_cfg.get("random", 0)), select_cfg["by"]
    return f"random {k}" if by == "random" else f"{by} + random {k}" if k else by
