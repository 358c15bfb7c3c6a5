"""Group removal (Koh, Ang, Teo & Liang, 2019): groups U of `size` training points removed
together, predicted Σ_{i∈U} Δ̂(i) against ℓ(z_t; θ₋U) − ℓ(z_t; θ*): random groups and same-class
groups (shared by every test point; they favour no estimator) and, per test point, groups drawn
from the `tail_pool` points of most positive and of most negative Δ̂: of the `select.by`
estimator, or under `select.by: union` (or `random`) of a round-robin over every estimator's
ranking (`tail_pools`), which favours none. Drawn from a seeded generator into `truths/plan.json`
(indices included), so a rerun re-trains the same groups."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..study.selection import round_robin_orders
from .base import Truth, changes


def tail_pools(scores: dict[str, np.ndarray], pool: int) -> tuple[np.ndarray, np.ndarray]:
    """The `pool` candidates of the positive and of the negative tail of one test point from
    `scores` (estimator → Δ̂ of every training point): a round-robin (selection.round_robin_orders,
    estimators in the dict's order) over the rankings by signed Δ̂, descending (ties by index) for
    the positive tail and that ranking reversed for the negative one. One estimator: its `pool`
    most positive and `pool` most negative points, in its order."""
    descending = {name: np.argsort(-np.asarray(score, dtype=float), kind="stable") for name, score in scores.items()}
    positive = round_robin_orders(descending, pool)
    negative = round_robin_orders({name: order[::-1] for name, order in descending.items()}, pool)
    return np.array(list(positive), dtype=np.int64), np.array(list(negative), dtype=np.int64)


def draw_groups(scores: dict, labels: np.ndarray, cfg: dict, rng: np.random.Generator) -> list[dict]:
    """Groups of `size` training indices: `random` and `same_class` ones shared by every test point,
    and per test point `tails` groups drawn without replacement from each of the `tail_pool`
    fraction of points with the most positive and the most negative Δ̂ (`tail_pools`). `scores`:
    test point → Δ̂ of every training point, or → {estimator: Δ̂} for the union of their tails; an
    estimator with NaN (it failed the point) is left out, a test point with none left gets no tails."""
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
        by_estimator = score if isinstance(score, dict) else {"": score}
        usable = {e: np.asarray(s, dtype=float) for e, s in by_estimator.items() if not np.isnan(s).any()}
        if not usable:
            continue
        positive, negative = tail_pools(usable, pool)
        for kind, candidates in (("tails_positive", positive), ("tails_negative", negative)):
            for _ in range(int(cfg["tails"])):
                groups.append({"kind": kind, "test_point": name,
                               "indices": sorted(int(i) for i in rng.choice(candidates, size, replace=False))})
    return [{"id": g, **group} for g, group in enumerate(groups)]


class Groups(Truth):
    name = "groups"
    label = "groups"
    title = "group removal"
    planned = True
    defaults = {"size": 5, "random": 10, "tails": 5, "same_class": 10, "tail_pool": 0.1, "seed": 0, "chunk_size": 30}
    draw_keys = ("size", "random", "tails", "same_class", "tail_pool", "seed")
    inputs = {"plan": "truths/plan.json"}

    def draw(self, influence: dict, labels: np.ndarray, settings: dict, rng: np.random.Generator):
        """`influence`: estimator → table; the tails of each test point are drawn from the union
        of the estimators whose status for it is ok (one estimator: its own tails)."""
        scores: dict[str, dict] = {}
        for estimator, table in influence.items():
            for name, rows in table.groupby("test_point", sort=False):
                delta = rows.sort_values("train_index").predicted_loss_change.to_numpy(float)
                ok = "status" not in rows or (rows.status == "ok").all()
                scores.setdefault(name, {})[estimator] = delta if ok else delta * np.nan
        return draw_groups(scores, np.asarray(labels), settings, rng)

    def sets(self, inputs: dict, settings: dict) -> list[tuple[int, list[int]]]:
        return list(enumerate(g["indices"] for g in inputs["plan"].get(self.name, [])))

    def score(self, scoring, table: pd.DataFrame) -> None:
        groups = pd.DataFrame(scoring.plan[self.name])
        for tp in scoring.points:
            mine = groups[groups.test_point.isna() | (groups.test_point == tp["name"])]
            truth = changes(table, "set_id", tp["index"], tp["loss"]).reindex(mine.id.to_numpy()).to_numpy()
            kinds = mine.kind.str.replace("_positive", "").str.replace("_negative", "").to_numpy()
            for name, t in scoring.estimators.items():
                score = t[t.test_point == tp["name"]].sort_values("train_index").predicted_loss_change.to_numpy(float)
                predicted = np.array([score[idx].sum() for idx in mine.indices])
                scoring.scored(name, self.name, "all", tp, predicted, truth)
                for kind in ("random", "same_class", "tails"):
                    if (kinds == kind).sum() >= 3:
                        scoring.scored(name, self.name, kind, tp, predicted[kinds == kind], truth[kinds == kind])
