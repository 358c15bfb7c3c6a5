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
"""

from __future__ import annotations

import re

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


def select(influence_path, rules, out_path, log=print):
    """Union over test points of the training points the rules pick from |Δ̂|. A test point whose
    estimator failed (status not ok: diverged, negative_curvature in CG, ...) gets no points:
    it is listed under `not_selected` with the status, its correlations carry the flag
    `selection_failed:<status>`, and the rest of the cell and study go on."""
    table = pd.read_parquet(influence_path)
    per_point, union, not_selected = {}, {}, {}
    for name, rows in table.groupby("test_point", sort=False):
        status = rows["status"].iloc[0]
        if status != "ok":
            per_point[name], not_selected[name] = {}, str(status)
            log(f"test point '{name}': the estimator in {influence_path} reported '{status}'; no training points "
                "selected for it (flagged selection_failed; select.by names another estimator)")
            continue
        picked = select_training_points(rows["predicted_loss_change"].abs().to_numpy(), rules)
        per_point[name] = {str(i): label for i, label in sorted(picked.items())}
        union.update({i: True for i in picked})
    write_json({"indices": sorted(int(i) for i in union), "per_test_point": per_point, "not_selected": not_selected,
                "rules": rules}, out_path)


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


def round_robin(abs_scores: dict[str, np.ndarray], k: int) -> dict[int, str]:
    """{train index: estimator} of the k distinct points that a round-robin over the estimators'
    rankings by |Δ̂| (descending, ties by index; estimators in the dict's order) picks."""
    orders = {name: np.argsort(-np.asarray(v, dtype=float), kind="stable") for name, v in abs_scores.items()}
    if any(np.isnan(np.asarray(v, dtype=float)).any() for v in abs_scores.values()):
        raise ValueError("cannot select training points: the influence estimates contain NaN")
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


def select_union(influence_paths: dict[str, str], rules, out_path, log=print):
    """`select.by: union`: per test point the round-robin over every estimator's |Δ̂| ranking
    (`round_robin`) until `rules_total` distinct points; the cell's points are the union over test
    points, each labelled "union" (`contributed_by` says which estimator's turn took it). An
    estimator whose status for a test point is not "ok" is left out of that test point's
    round-robin (listed under `left_out`); a test point no estimator scored gets no points."""
    tables = {name: pd.read_parquet(path) for name, path in influence_paths.items()}
    per_point, union, not_selected, left_out, contributed = {}, {}, {}, {}, {}
    names = list(next(iter(tables.values())).drop_duplicates("test_point")["test_point"])
    for point in names:
        scores = {}
        for name, table in tables.items():
            rows = table[table.test_point == point].sort_values("train_index")
            if rows["status"].iloc[0] == "ok":
                scores[name] = rows["predicted_loss_change"].abs().to_numpy()
            else:
                left_out.setdefault(point, {})[name] = str(rows["status"].iloc[0])
        if not scores:
            per_point[point], not_selected[point] = {}, "no_estimator_ok"
            log(f"test point '{point}': no estimator scored it; no training points selected for it")
            continue
        n = len(next(iter(scores.values())))
        picked = round_robin(scores, rules_total(rules, n))
        per_point[point] = {str(i): "union" for i in sorted(picked)}  # one label: the correlations' one subset
        contributed[point] = {str(i): name for i, name in sorted(picked.items())}
        union.update({i: True for i in picked})
    write_json({"indices": sorted(int(i) for i in union), "per_test_point": per_point, "not_selected": not_selected,
                "rules": rules, "by": "union", "estimators": list(tables), "left_out": left_out, "contributed_by": contributed}, out_path)


def select_by(influence_paths: dict[str, str], by: str, rules, out_path, log=print):
    """The cell's selection by `select.by`: one estimator's (`select`, its table in
    `influence_paths`) or `union` (`select_union` over all of them)."""
    if by == "union":
        return select_union(influence_paths, rules, out_path, log=log)
    return select(influence_paths[by], rules, out_path, log=log)
