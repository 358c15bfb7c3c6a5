"""Table 1's layout, ours-vs-paper, the paper's values file, and the small-MNIST selection rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fragility.study import selection
from fragility.report import tables
from fragility.data.files import DATASET_FAMILY
from fragility.models.registry import known_architecture
from fragility.study.selection import select_training_points

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "workflow" / "resources" / "paper_table1.csv"
HEADER = ["dataset", "model", "estimator", "A, decay P", "A, decay S", "B, decay P", "B, decay S", "A, no decay P", "A, no decay S"]


def correlations(seeds=(0,), flagged=None, skip=None) -> pd.DataFrame:
    """Synthetic study correlations for 2 datasets × 2 architectures × decays {0.001, 0} × test
    points {max, median}, two estimators and two quantities. The reported value encodes the cell:
    pearson = 0.1·(dataset no.) + 0.01·(arch no.) + (0.5 with decay) + 0.001·seed, spearman = −pearson;
    the other estimator and quantity get 9 (they must never appear)."""
    rows = []
    for d, dataset in enumerate(["mnist_offline", "cifar10"]):
        for a, arch in enumerate(["smallcnn", "lenet"]):
            for decay in (0.001, 0.0):
                for tp in ("max", "median"):
                    for seed in seeds:
                        for est in ("primary", "other"):
                            for quantity in ("loss_change", "loss_change_vs_drift"):
                                value = 0.1 * d + 0.01 * a + (0.5 if decay else 0) + 0.001 * seed + (0.2 if tp == "median" else 0)
                                if est == "other":
                                    value = 9.0
                                if quantity == "loss_change_vs_drift":
                                    value = -0.25
                                flag = flagged if (flagged and arch == "lenet" and dataset == "cifar10" and decay == 0 and seed == seeds[-1]) else ""
                                rows.append({"study": "table1", "dataset": dataset, "arch": arch, "decay": decay, "seed": seed,
                                             "test_point": tp, "estimator": est, "quantity": quantity, "subset": "all", "n": 40,
                                             "pearson": np.nan if flag else value, "spearman": np.nan if flag else -value,
                                             "flag": flag})
    frame = pd.DataFrame(rows)
    if skip:
        frame = frame[~((frame.dataset == skip[0]) & (frame.arch == skip[1]))]
    return frame


ESTIMATOR = {"smallcnn": "primary", "lenet": "primary"}


def number(cell: str) -> str:
    """The value of a table cell, without the interval the formatter may append."""
    return cell.split(" ")[0]
NAMES = {"smallcnn": "Small CNN", "lenet": "LeNet"}


def test_wide_layout_matches_the_paper():
    long = tables.table1_long(correlations(), ESTIMATOR, decay=0.001)
    wide = tables.table1_wide(long, NAMES, method_of={"smallcnn": "exact", "lenet": "lissa"})
    assert list(wide.columns) == HEADER
    assert list(zip(wide.dataset, wide.model)) == [("mnist_offline", "Small CNN"), ("mnist_offline", "LeNet"),
                                                   ("cifar10", "Small CNN"), ("cifar10", "LeNet")]
    assert list(wide.estimator) == ["exact", "lissa", "exact", "lissa"]
    row = wide.iloc[3]  # cifar10, lenet: dataset no. 1, arch no. 1
    assert number(row["A, decay P"]) == "0.61" and number(row["A, decay S"]) == "-0.61"
    assert number(row["B, decay P"]) == "0.81"  # median test point
    assert number(row["A, no decay P"]) == "0.11"


def test_seeds_are_averaged_and_a_flag_replaces_the_value():
    long = tables.table1_long(correlations(seeds=(0, 1)), ESTIMATOR, decay=0.001)
    cell = long[(long.dataset == "mnist_offline") & (long.arch == "smallcnn") & (long.column == "A, decay P")].iloc[0]
    assert cell.value == pytest.approx(0.5005) and cell.seeds == 2 and cell.flag == ""
    flagged = tables.table1_long(correlations(seeds=(0, 1), flagged="constant_actual"), ESTIMATOR, decay=0.001)
    wide = tables.table1_wide(flagged, NAMES)
    lenet = wide[(wide.dataset == "cifar10") & (wide.model == "LeNet")].iloc[0]
    assert lenet["A, no decay P"] == "constant_actual" and number(lenet["A, decay P"]) == "0.61"


def test_missing_cells_are_named_and_rows_follow_the_grid():
    long = tables.table1_long(correlations(skip=("cifar10", "smallcnn")), ESTIMATOR, decay=0.001)
    wide = tables.table1_wide(long, NAMES, row_order=[("cifar10", "lenet"), ("mnist_offline", "smallcnn"), ("mnist_offline", "lenet")])
    assert list(zip(wide.dataset, wide.model)) == [("cifar10", "LeNet"), ("mnist_offline", "Small CNN"), ("mnist_offline", "LeNet")]
    no_decay = correlations()
    no_decay = no_decay[no_decay.decay > 0]
    wide = tables.table1_wide(tables.table1_long(no_decay, ESTIMATOR, decay=0.001), NAMES)
    assert set(wide["A, no decay P"]) == {tables.NOT_RUN}


def test_target_selects_the_ground_truth():
    long = tables.table1_long(correlations(), ESTIMATOR, decay=0.001, quantity="loss_change_vs_drift")
    assert set(long[long.metric == "pearson"].value) == {-0.25}


def test_versus_paper_maps_offline_mnist_to_mnist():
    paper = tables.read_paper(PAPER)
    long = tables.table1_long(correlations(), ESTIMATOR, decay=0.001)
    versus = tables.versus_paper(long, paper, {"mnist_offline": "mnist", "cifar10": "cifar10"})
    small = versus[(versus.dataset == "mnist_offline") & (versus.arch == "smallcnn") & (versus.column == "A, decay P")].iloc[0]
    assert small.paper == 0.95 and number(small.ours) == "0.50" and small.difference == pytest.approx(0.5 - 0.95)
    nodecay_s = versus[(versus.dataset == "cifar10") & (versus.arch == "lenet") & (versus.column == "A, no decay S")].iloc[0]
    assert nodecay_s.paper == 0.09
    assert versus[(versus.dataset == "cifar10") & (versus.arch == "smallcnn")].paper.isna().all()  # not in the paper


def test_write_table1_files(tmp_path):
    path = tmp_path / "correlations.parquet"
    correlations().to_parquet(path)
    outs = [tmp_path / f for f in ("t.csv", "v.csv")]
    tables.write_table1(path, PAPER, {"mnist_offline": "mnist"}, ESTIMATOR, [0.001, 0.0], *outs)
    wide = pd.read_csv(outs[0], dtype=str)
    assert list(wide.columns) == HEADER and len(wide) == 4
    assert len(pd.read_csv(outs[1])) == 4 * 6


def test_table_decay_is_the_single_nonzero_one_or_named():
    assert tables.table_decay([0.001, 0.0]) == 0.001
    assert tables.table_decay([0.0, 1e-4, 1e-3], chosen=1e-3) == 1e-3
    with pytest.raises(ValueError, match="table_decay"):
        tables.table_decay([0.0, 1e-4, 1e-3])
    with pytest.raises(ValueError, match="not one of"):
        tables.table_decay([0.001, 0.0], chosen=0.01)


def test_paper_values_file_names_known_datasets_and_architectures():
    paper = tables.read_paper(PAPER)
    assert len(paper) == 11 and not paper.duplicated(["dataset", "arch"]).any()
    assert set(paper.dataset) == {"mnist", "cifar10"} <= set(DATASET_FAMILY.values())
    assert all(known_architecture(a) for a in paper.arch)
    values = paper.drop(columns=["dataset", "arch", "model"])
    assert ((values >= -1) & (values <= 1)).all().all()
    assert ("cifar10", "smallcnn") not in set(zip(paper.dataset, paper.arch))


# --------------------------------------------------------------------------- small-MNIST selection
SMALL_MNIST_RULES = [{"top_k": 100}, {"around_percentile": 30, "k": 100}]


def test_small_mnist_selection_top_100_and_100_around_30th_percentile():
    rng = np.random.default_rng(0)
    scores = rng.permutation(np.arange(1, 1001, dtype=float))  # |Δ̂| = 1..1000, distinct
    picked = select_training_points(scores, SMALL_MNIST_RULES)
    top = sorted(i for i, lab in picked.items() if lab == "top")
    around = sorted(i for i, lab in picked.items() if lab == "p30")
    assert len(top) == 100 and len(around) == 100 and len(picked) == 200
    assert sorted(scores[top]) == list(np.arange(901, 1001, dtype=float))
    # 30th percentile of 1000 ranks is rank round(0.3 · 999) = 300 (0-based); 100 ranks centred there
    assert sorted(scores[around]) == list(np.arange(251, 351, dtype=float))


def test_small_mnist_selection_overlap_keeps_top_label():
    scores = np.arange(150, dtype=float)
    picked = select_training_points(scores, SMALL_MNIST_RULES)
    assert len(picked) == 150  # top 100 = ranks 50..149; around p30 = ranks 0..99 overlap at 50..99
    assert sum(lab == "top" for lab in picked.values()) == 100


def test_a_failed_estimate_falls_back_to_a_random_sample_for_its_test_point_and_says_so(tmp_path):
    """A diverged solve for one test point must not stop the study: that point gets K = 5 points
    drawn at random from the cell's seed (the fallback, recorded with its status); the other test
    points are selected as usual."""
    n = 60
    rng = np.random.default_rng(2)
    frames = [pd.DataFrame({"test_point": "good", "test_index": 0, "train_index": range(n),
                            "predicted_loss_change": rng.normal(size=n), "status": "ok"}),
              pd.DataFrame({"test_point": "bad", "test_index": 1, "train_index": range(n),
                            "predicted_loss_change": np.nan, "status": "diverged"})]
    path = tmp_path / "influence.parquet"
    pd.concat(frames).to_parquet(path)
    messages = []
    selection.select(path, [{"top_k": 5}], tmp_path / "selected.json", log=messages.append)
    selected = pd.read_json(tmp_path / "selected.json", typ="series")
    assert selected["not_selected"] == {} and selected["fallback"]["bad"]["status"] == "diverged"
    assert set(selected["per_test_point"]["bad"].values()) == {"random"} and len(selected["per_test_point"]["bad"]) == 5
    assert len(selected["per_test_point"]["good"]) == 5
    assert sorted(selected["indices"]) == sorted({int(i) for p in ("good", "bad") for i in selected["per_test_point"][p]})
    assert any("'bad'" in m and "diverged" in m for m in messages)


def test_select_step_unions_test_points(tmp_path):
    n = 400
    rng = np.random.default_rng(1)
    frames = [pd.DataFrame({"test_point": tp, "test_index": t, "train_index": range(n), "predicted_loss_change": rng.normal(size=n),
                            "status": "ok"}) for t, tp in enumerate(["top1", "top2"])]
    path = tmp_path / "influence.parquet"
    pd.concat(frames).to_parquet(path)
    selection.select(path, SMALL_MNIST_RULES, tmp_path / "selected.json")
    selected = pd.read_json(tmp_path / "selected.json", typ="series")
    per_point = selected["per_test_point"]
    assert all(len(v) == 200 for v in per_point.values())
    assert set(selected["indices"]) == {int(i) for v in per_point.values() for i in v}
