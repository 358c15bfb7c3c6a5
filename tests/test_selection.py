"""Which training points are re-trained (study/selection.py) and which groups are drawn
(truths/groups.py), made fair and robust:

- `select.random: k`: one seeded sample shared by every test point, independent of the scores,
  labelled `random` even where a rule also picked the point;
- tail groups from the union of the estimators' rankings; with one estimator, exactly the groups
  drawn before (frozen indices);
- where the `select.by` estimator fails a test point, the union of the others where their tables
  are given, else (the workflow's case) a random sample of as many points, recorded.
"""

import copy

import numpy as np
import pandas as pd
import pytest

from fragility.io import read_json
from fragility.study import selection
from fragility.truths import jobs
from fragility.truths.groups import draw_groups, tail_pools


def _table(values: dict, status: dict | None = None) -> pd.DataFrame:
    """An influence table: test point → Δ̂ of every training point, rows in reverse index order."""
    status = status or {}
    return pd.concat([pd.DataFrame({"test_point": tp, "test_index": j, "train_index": np.arange(len(v))[::-1],
                                    "predicted_loss_change": np.asarray(v, dtype=float)[::-1],
                                    "status": status.get(tp, "ok")}) for j, (tp, v) in enumerate(values.items())],
                     ignore_index=True)


def _write(tmp_path, tables: dict) -> dict:
    paths = {}
    for name, table in tables.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        table.to_parquet(paths[name])
    return paths


def _labelled(record, point, label):
    return sorted(int(i) for i, lab in record["per_test_point"][point].items() if lab == label)


# --------------------------------------------------------------------------- select.random
def test_random_sample_is_seeded_shared_and_blind_to_the_scores(tmp_path):
    n, rng = 50, np.random.default_rng(0)
    scores = {"max": rng.normal(size=n), "p50": rng.normal(size=n)}
    paths = _write(tmp_path, {"a": _table(scores), "b": _table({k: -v[::-1] for k, v in scores.items()})})
    expected = sorted(int(i) for i in np.random.default_rng([3, 7219]).choice(n, 6, replace=False))
    records = {}
    for by in ("a", "b", "union"):
        selection.select_by(paths, by, [{"top_k": 4}], tmp_path / f"{by}.json", log=lambda m: None, random=6, seed=3)
        records[by] = read_json(tmp_path / f"{by}.json")
        for point in scores:  # the same sample for every test point and every ranking
            assert _labelled(records[by], point, "random") == expected
        assert records[by]["random"] == {"k": 6, "seed": 3} and records[by]["by"] == by
        assert set(expected) <= set(records[by]["indices"])
    selection.select_by(paths, "a", [{"top_k": 4}], tmp_path / "s4.json", log=lambda m: None, random=6, seed=4)
    assert _labelled(read_json(tmp_path / "s4.json"), "max", "random") != expected
    # the rules' points are the ones without the sample, the rest as before
    selection.select_by(paths, "a", [{"top_k": 4}], tmp_path / "plain.json", log=lambda m: None)
    plain = read_json(tmp_path / "plain.json")
    assert set(plain) == {"indices", "per_test_point", "not_selected", "rules"}  # random: 0 writes what it did
    for point in scores:
        top = {int(i) for i in plain["per_test_point"][point]}
        assert set(_labelled(records["a"], point, "top")) == top - set(expected)
    selection.select_by(paths, "random", [{"top_k": 4}], tmp_path / "only.json", log=lambda m: None, random=6, seed=3)
    only = read_json(tmp_path / "only.json")
    assert only["indices"] == expected and all(set(v.values()) == {"random"} for v in only["per_test_point"].values())
    with pytest.raises(ValueError, match="select.random: 51 training points asked for, but there are 50"):
        selection.select_by(paths, "a", [{"top_k": 4}], tmp_path / "x.json", random=51)
    with pytest.raises(ValueError, match="select.by: 'random' needs select.random"):
        selection.select_by(paths, "random", [{"top_k": 4}], tmp_path / "x.json")


def test_the_random_label_wins_over_a_rule(tmp_path):
    """A rule that takes every point: the sampled ones are still labelled random, so that the
    random subset is the sample itself, not the sample less what the rules took."""
    n = 20
    paths = _write(tmp_path, {"a": _table({"max": np.arange(n, dtype=float)}),
                              "b": _table({"max": -np.arange(n, dtype=float)})})
    sample = selection.random_training_points(n, 5, 1)
    for by in ("a", "union"):
        selection.select_by(paths, by, [{"top_k": n}], tmp_path / "s.json", log=lambda m: None, random=5, seed=1)
        record = read_json(tmp_path / "s.json")
        assert _labelled(record, "max", "random") == sample
        other = "top" if by == "a" else "union"
        assert _labelled(record, "max", other) == sorted(set(range(n)) - set(sample))


# --------------------------------------------------------------------------- fallback
def test_a_failed_select_by_estimator_falls_back_to_the_union_of_the_others(tmp_path):
    n, rng = 30, np.random.default_rng(1)
    a = {"max": rng.normal(size=n), "p50": np.full(n, np.nan), "p90": np.full(n, np.nan)}
    b = {"max": rng.normal(size=n), "p50": rng.normal(size=n), "p90": np.full(n, np.nan)}
    c = {"max": rng.normal(size=n), "p50": rng.normal(size=n), "p90": np.full(n, np.nan)}
    paths = _write(tmp_path, {"a": _table(a, {"p50": "unsupported: derivative of foo", "p90": "diverged"}),
                              "b": _table(b, {"p90": "diverged"}), "c": _table(c, {"p90": "non_finite"})})
    messages = []
    rules = [{"top_k": 3}, {"around_percentile": 50, "k": 2}]
    selection.select_by(paths, "a", rules, tmp_path / "s.json", log=messages.append)
    record = read_json(tmp_path / "s.json")
    # the estimator's own selection where it is ok: the same as with its table alone
    selection.select(paths["a"], rules, tmp_path / "alone.json", log=lambda m: None)
    assert record["per_test_point"]["max"] == read_json(tmp_path / "alone.json")["per_test_point"]["max"]
    expected = selection.round_robin({"b": np.abs(b["p50"]), "c": np.abs(c["p50"])}, 5)
    assert record["per_test_point"]["p50"] == {str(i): "union" for i in sorted(expected)}
    assert record["contributed_by"]["p50"] == {str(i): e for i, e in sorted(expected.items())}
    assert record["fallback"]["p50"] == {"from": "a", "status": "unsupported: derivative of foo", "to": "union",
                                         "estimators": ["b", "c"]}
    # no estimator scored p90: K = 5 points at random from the cell's seed (0 here), labelled random
    sample = selection.random_training_points(n, 5, 0)
    assert record["per_test_point"]["p90"] == {str(i): "random" for i in sample}
    assert record["fallback"]["p90"] == {"from": "a", "status": "diverged", "to": "random", "k": 5, "seed": 0}
    assert record["not_selected"] == {}
    assert sum("'p50'" in m and "union" in m for m in messages) == 1
    assert sum("'p90'" in m and "at random" in m for m in messages) == 1
    assert set(record["indices"]) == {int(i) for p in ("max", "p50", "p90") for i in record["per_test_point"][p]}


def test_with_its_table_alone_a_failed_select_by_estimator_falls_back_to_a_random_sample(tmp_path):
    """The workflow's case: `select` reads `select.by`'s table alone (adding an estimator re-runs no
    re-training), so a test point it failed takes K = the rules' total points drawn from the
    cell's seed, the same for every such test point and independent of the scores."""
    n, rng = 40, np.random.default_rng(2)
    a = {"max": rng.normal(size=n), "p50": np.full(n, np.nan), "p90": np.full(n, np.nan)}
    paths = _write(tmp_path, {"a": _table(a, {"p50": "failed: KeyError: x", "p90": "unsupported: derivative of foo"})})
    rules = [{"top_k": 4}]
    selection.select(paths["a"], rules, tmp_path / "s.json", log=lambda m: None, seed=3)
    record = read_json(tmp_path / "s.json")
    sample = selection.random_training_points(n, 4, 3)
    assert sample != selection.random_training_points(n, 4, 4)  # the seed matters (this check can fail)
    for point in ("p50", "p90"):
        assert record["per_test_point"][point] == {str(i): "random" for i in sample}
        assert record["fallback"][point]["to"] == "random" and record["fallback"][point]["seed"] == 3
    top = np.argsort(-np.abs(a["max"]), kind="stable")[:4]
    assert record["per_test_point"]["max"] == {str(i): "top" for i in sorted(top)}
    assert record["not_selected"] == {}


# --------------------------------------------------------------------------- tail groups
FROZEN = [("random", None, [8, 23, 28]), ("random", None, [4, 6, 18]), ("same_class", None, [3, 4, 7]),
          ("same_class", None, [10, 13, 16]), ("tails_positive", "max", [8, 21, 25]),
          ("tails_positive", "max", [8, 13, 21]), ("tails_negative", "max", [11, 17, 26]),
          ("tails_negative", "max", [1, 26, 28]), ("tails_positive", "p50", [10, 20, 28]),
          ("tails_positive", "p50", [20, 22, 28]), ("tails_negative", "p50", [0, 17, 23]),
          ("tails_negative", "p50", [0, 7, 23])]  # make_plan before tails came from a union (commit eaf891e)
CFG = {"size": 3, "random": 2, "same_class": 2, "tails": 2, "tail_pool": 0.2, "seed": 0}
KEYS = ("s", "iris", "mlp", "0.01", 0)


def _frozen_scores():
    rng, n = np.random.default_rng(5), 30
    return {"max": np.round(rng.normal(size=n), 2), "bad": np.full(n, np.nan), "p50": np.round(rng.normal(size=n), 1)}


def test_one_estimator_draws_exactly_the_groups_drawn_before():
    scores, labels = _frozen_scores(), np.repeat([0, 1, 2], 10)
    table = _table(scores, {"bad": "diverged"})
    for influence in (table, {"exact": table}):
        plan = jobs.make_plan(influence, labels, {"groups": CFG}, KEYS)
        assert [(g["kind"], g["test_point"], g["indices"]) for g in plan["groups"]] == FROZEN


def test_union_tails_are_the_round_robin_pools_and_leave_failed_estimators_out():
    a, b = np.array([5, 4, 3, 2, 1, 0.]), np.array([0, 1, 2, 3, 4, 9.])
    positive, negative = tail_pools({"a": a, "b": b}, 4)
    assert positive.tolist() == [0, 5, 1, 4] and negative.tolist() == [5, 0, 4, 1]
    assert tail_pools({"a": a}, 3)[0].tolist() == [0, 1, 2] and tail_pools({"a": a}, 3)[1].tolist() == [5, 4, 3]
    scores, labels = _frozen_scores(), np.repeat([0, 1, 2], 10)
    other = {k: -v[::-1] for k, v in scores.items()}
    cfg = {**CFG, "tails": 6}
    plan = jobs.make_plan({"exact": _table(scores, {"bad": "diverged"}), "cg": _table(other, {"bad": "diverged"})},
                          labels, {"groups": cfg}, KEYS)["groups"]
    for point in ("max", "p50"):
        pos, neg = tail_pools({"exact": scores[point], "cg": other[point]}, 6)
        own = np.argsort(-scores[point], kind="stable")
        assert set(pos) >= set(own[:3].tolist()) and set(neg) >= set(own[::-1][:3].tolist())
        for g in plan:
            if g["test_point"] == point:
                assert set(g["indices"]) <= set((pos if g["kind"] == "tails_positive" else neg).tolist())
        drawn = {i for g in plan if g["test_point"] == point and g["kind"] == "tails_positive" for i in g["indices"]}
        assert drawn - set(own[:6].tolist())  # some come from the second estimator's tail
    assert not any(g["test_point"] == "bad" for g in plan)
    # an estimator that failed a test point is left out of its pools: the other's own groups
    failed = {"exact": _table(scores, {"bad": "diverged"}),
              "cg": _table({k: np.full(30, np.nan) for k in scores}, dict.fromkeys(scores, "diverged"))}
    assert jobs.make_plan(failed, labels, {"groups": CFG}, KEYS)["groups"] == \
        jobs.make_plan({"exact": failed["exact"]}, labels, {"groups": CFG}, KEYS)["groups"]
    assert draw_groups({"max": {"x": scores["max"]}}, labels, CFG, np.random.default_rng(0)) == \
        draw_groups({"max": scores["max"]}, labels, CFG, np.random.default_rng(0))


# --------------------------------------------------------------------------- configuration
def test_the_schema_takes_select_random_and_refuses_a_negative_one():
    from pathlib import Path

    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    repo = Path(__file__).resolve().parents[1]
    schema = str(repo / "workflow" / "schemas" / "config.schema.yaml")
    config = yaml.safe_load((repo / "config.yaml").read_text())
    good = copy.deepcopy(config)
    good["studies"]["iris"]["select"]["random"] = 3
    good["studies"]["iris"]["overrides"] = {"mlp-d1-w5": {"select": {"random": 0}}}
    validate(good, schema)
    assert good["studies"]["iris"]["select"]["random"] == 3
    bad = copy.deepcopy(config)
    bad["studies"]["iris"]["select"]["random"] = -1
    with pytest.raises(WorkflowError, match="random"):
        validate(bad, schema)
    validate(config, schema)
    assert "random" not in config["studies"]["iris"]["select"]  # no default filled in: 0 unless set
    assert selection.describe({"by": "exact", "rules": []}) == "exact"
    assert selection.describe({"by": "union", "random": 3}) == "union + random 3"
    assert selection.describe({"by": "random", "random": 3}) == "random 3"


def test_a_point_no_estimator_scored_under_union_takes_the_random_fallback(tmp_path):
    """`select.by: union` where every estimator failed one test point: that point gets K = the
    rules' total points at random (recorded), never an unselected point that is re-trained for
    the sample but not correlated."""
    n, rng = 30, np.random.default_rng(3)
    a = {"max": rng.normal(size=n), "p50": np.full(n, np.nan)}
    b = {"max": rng.normal(size=n), "p50": np.full(n, np.nan)}
    paths = _write(tmp_path, {"a": _table(a, {"p50": "diverged"}), "b": _table(b, {"p50": "failed: KeyError: x"})})
    selection.select_by(paths, "union", [{"top_k": 4}], tmp_path / "s.json", log=lambda m: None, random=2, seed=5)
    record = read_json(tmp_path / "s.json")
    assert record["not_selected"] == {}
    assert record["fallback"]["p50"] == {"from": "union", "status": "no_estimator_ok", "to": "random", "k": 4, "seed": 5}
    assert set(record["per_test_point"]["p50"].values()) == {"random"}
    assert {int(i) for i in record["per_test_point"]["p50"]} == (set(selection.random_training_points(n, 4, 5))
                                                                  | set(selection.random_training_points(n, 2, 5)))


def test_the_tables_report_figures_estimator_under_a_selection_by_no_estimator():
    from fragility.report.tables import reported_estimator

    config = {"studies": {"s": {"architectures": ["a"], "select": {"by": "random", "random": 3, "rules": []},
                                "influence": {"methods": {"exact": {}, "lissa": {}}}}}}
    assert reported_estimator(config, "s", "a") == "exact"
    config["studies"]["s"]["figures"] = {"estimator": "lissa"}
    assert reported_estimator(config, "s", "a") == "lissa"
    config["studies"]["s"]["select"]["by"] = "lissa"
    config["studies"]["s"]["figures"] = {"estimator": "exact"}
    assert reported_estimator(config, "s", "a") == "lissa"



def test_the_selection_reads_select_by_s_table_alone_unless_it_names_no_estimator():
    """Adding an estimator must not change what `select` reads (it would re-run every re-training)."""
    names = ["exact", "lissa", "identity"]
    assert selection.tables_read("lissa", names) == ["lissa"]
    assert selection.tables_read("union", names) == names
    assert selection.tables_read("random", names) == ["exact"]
    assert selection.tables_read("random", names, plan=True) == names  # groups' tails from the union
    assert selection.tables_read("lissa", names, plan=True) == ["lissa"]
