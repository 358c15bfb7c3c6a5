"""The text example (examples/my_text.py): its loader reads (text, label) rows from JSON Lines or
CSV in data_dir, builds the vocabulary from the training split only, and its TransformerEncoder
classifier ignores the padding; trained and audited through the pipeline's functions."""

import csv
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch

from fragility.io import read_json
from fragility.study import pipeline
from fragility.truths.registry import get
from workflow_files import REPO

EXAMPLE = str(REPO / "examples" / "my_text.py")
QUIET = dict(log=lambda *a: None)
PAD, UNKNOWN = 0, 1
ESTIMATORS = {"exact": {}, "cg": {"hessian": "gauss_newton"}, "lissa": {"depth": 50, "power_iterations": 10},
              "arnoldi": {"iterations": 20, "rank": 10}, "kfac": {}, "ekfac": {}, "identity": {}, "grad_cosine": {},
              "representer": {}, "tracin": {}, "trak": {"projection_dim": 16}}
EXPECTED_STATUSES = dict.fromkeys(ESTIMATORS, ["ok"])
GOOD = ["good", "great", "fine", "nice", "lovely"]
BAD = ["bad", "awful", "poor", "dull", "grim"]


def text_module():
    spec = importlib.util.spec_from_file_location("my_text", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus(n=32, seed=0):
    """Short texts of 2–6 words; label 'pos' when most of their words are from GOOD."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(2, 7, (1,), generator=gen))
        positive = bool(torch.rand(1, generator=gen) < 0.5)
        words = [(GOOD if (torch.rand(1, generator=gen) < 0.8) == positive else BAD)[int(torch.randint(0, 5, (1,),
                 generator=gen))] for _ in range(length)]
        rows.append({"text": " ".join(words).capitalize() + ".", "label": "pos" if positive else "neg"})
    return rows


def write(root, rows, name):
    path = root / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
    return path


def load(root, name, **options):
    from fragility.data.registry import load_split

    return load_split("reviews", {"loader": f"{EXAMPLE}:load_text", "file": name, **options}, data_dir=str(root))


def test_jsonl_and_csv_give_the_same_split(tmp_path):
    rows = corpus()
    write(tmp_path, rows, "r.jsonl"), write(tmp_path, rows, "r.csv")
    a, b = load(tmp_path, "r.jsonl", max_length=8), load(tmp_path, "r.csv", max_length=8)
    for part in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, part), getattr(b, part))
    assert a.x_train.dtype == torch.int64 and a.x_train.shape[1] == 8 and a.meta["classes"] == ["neg", "pos"]


def test_a_bad_row_is_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl, line 2: expected an object with keys 'text' and 'label'"):
        load(tmp_path, "bad.jsonl")


def test_the_vocabulary_comes_from_the_training_split_only(tmp_path):
    """A word in test rows only is the unknown id, and rewriting the test texts changes no
    training ids (the vocabulary and its order come from the training texts)."""
    from fragility.data.split import stratified_split

    rows = corpus()
    labels = np.array([row["label"] == "pos" for row in rows], dtype=np.int64)
    _, test = stratified_split(labels, 0.25, 0)  # the loader's split (test_fraction, split_seed defaults)
    changed = [dict(row) for row in rows]
    for i in test:
        changed[i]["text"] = "zebra zebra " + " ".join(["grim"] * 5)  # "grim" most frequent if test counted
    plain = load(tmp_path, write(tmp_path, rows, "plain.jsonl").name)
    other = load(tmp_path, write(tmp_path, changed, "other.jsonl").name)
    assert torch.equal(plain.x_train, other.x_train) and torch.equal(plain.y_test, other.y_test)
    assert (other.x_test[:, :2] == UNKNOWN).all()
    assert plain.meta["words_in_vocabulary"] == len(set(GOOD + BAD))


def test_the_model_ignores_padding(tmp_path):
    """A text's scores do not depend on what sits at its padding positions (the embedding of the
    padding id, the position parameters there), and a batch gives each text its own scores."""
    split = load(tmp_path, write(tmp_path, corpus(), "r.jsonl").name, max_length=8)
    torch.manual_seed(0)
    model = text_module().build((8,), 2).double().eval()
    x = split.x_train[:6]
    lengths = (x != PAD).sum(1)
    assert (lengths < 8).all() and lengths.min() >= 2
    before = model(x)
    with torch.no_grad():
        model.embed.weight[PAD] = torch.randn(model.embed.weight.shape[1])
        model.position[int(lengths.max()):] = torch.randn_like(model.position[int(lengths.max()):])
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    one_by_one = torch.cat([model(row[None]) for row in x])
    torch.testing.assert_close(one_by_one, before, rtol=0, atol=1e-12)
    assert torch.isfinite(model(torch.zeros(1, 8, dtype=torch.int64))).all()  # an empty text


def test_the_text_classifier_through_the_pipeline(tmp_path):
    """Prepare, train, pick test points, every estimator, a LOO chunk and PBRF, as the jobs do."""
    write(tmp_path, corpus(40), "reviews.jsonl")
    data = str(tmp_path / "split.pt")
    info = pipeline.prepare_data("reviews", {"loader": f"{EXAMPLE}:load_text", "file": "reviews.jsonl",
                                             "vocab_size": 16, "max_length": 6}, str(tmp_path), data)
    assert info["n_train"] == 30 and info["input_shape"] == (6,)
    models_cfg = {"textnet": {"factory": f"{EXAMPLE}:build", "options": {"vocab_size": 16, "dim": 4,
                                                                        "feedforward": 8}}}
    model, metrics, points = (str(tmp_path / name) for name in ("model.pt", "metrics.json", "tp.json"))
    train_cfg = {"optimizer": "adam", "lr": 0.05, "steps": 60, "batch_size": 10, "check_every": 1000,
                 "keep_checkpoints": 2}
    pipeline.train(data, "textnet", 0.01, 0, train_cfg, "float64", "cpu", model, metrics, models_cfg=models_cfg,
                   **QUIET)
    assert read_json(metrics)["train_accuracy"] > 0.8
    pipeline.pick_test_points(model, data, ["max", "median"], points, "cpu")
    statuses = {}
    for method in ESTIMATORS:
        table = str(tmp_path / f"{method}.parquet")
        pipeline.compute_influence(model, data, points, method, ESTIMATORS[method], 0.01, table, table + ".json",
                                   device_name="cpu", **QUIET)
        scores = pd.read_parquet(table)
        statuses[method] = sorted(set(scores.status))
        assert scores.predicted_loss_change.notna().all() == (statuses[method] == ["ok"]), method
    assert statuses == EXPECTED_STATUSES
    cell = {"model": model, "data": data, "test_points": points}
    loo_cfg = {"steps": 20}
    for truth, sets, options in [("loo", [(-1, []), (0, [0])], loo_cfg),
                                 ("pbrf", [(-1, []), (0, [0])], get("pbrf").defaults)]:
        out = str(tmp_path / f"{truth}.parquet")
        get(truth).retrain_chunk(cell, sets, options, loo_cfg, train_cfg, out, device_name="cpu",
                                 **({"damping": 0.01} if truth == "pbrf" else {}), **QUIET)
        assert pd.read_parquet(out).test_loss.notna().all(), truth


@pytest.mark.slow
def test_the_text_example_runs_through_snakemake(tmp_path):
    """examples/text.yaml on a corpus of 40 texts in data_dir: every estimator's correlations with
    LOO are numbers or a named flag, and PBRF is a ground truth of truths.csv."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from workflow_files import copy_workflow

    work = copy_workflow(tmp_path / "work")
    shutil.copytree(REPO / "examples", work / "examples")
    (work / "data").mkdir()
    write(work / "data", corpus(40), "reviews.jsonl")
    cmd = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", "--configfile", "examples/text.yaml"]
    proc = subprocess.run(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not (work / "results" / "iris").exists()  # only the example's study

    study = work / "results" / "reviews"
    summary = pd.read_csv(study / "summary.csv")
    loo = summary[(summary.quantity == "loss_change") & (summary.subset == "all") & (summary.truth == "loo")]
    assert set(loo.estimator) == set(ESTIMATORS) | {"gauss_newton"}
    assert set(loo.test_point) == {"max", "median"} and (loo.n >= 3).all()
    for row in loo.itertuples():
        named = isinstance(row.flag, str) and row.flag != ""
        number = isinstance(row.pearson, str) and row.pearson[:1] in "-0123456789"
        assert named or number, (row.estimator, row.test_point, row.pearson, row.flag)
    statuses = pd.read_csv(study / "influence_diagnostics.csv")
    assert (statuses.statuses == "ok").all(), statuses[["estimator", "statuses"]]  # as EXPECTED_STATUSES
    truths = pd.read_csv(study / "truths.csv")
    assert {"pbrf pearson (max)", "pbrf spearman (median)"} <= set(truths.columns)
    assert truths.loc[truths.estimator == "exact", "pbrf pearson (max)"].notna().all()
    assert (study / "report" / "index.html").stat().st_size > 0
