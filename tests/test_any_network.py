"""Networks a user brings, through the pipeline's functions: token inputs (nn.Embedding on integer
ids, kept integers end to end) and dropout (re-trained with shared masks, influence in eval mode)."""

import textwrap

import pandas as pd
import pytest
import torch

from fragility.data.split import Split, model_inputs
from fragility.io import read_json
from fragility.study import pipeline
from fragility.truths.registry import get

QUIET = dict(log=lambda *a: None)
VOCAB, LENGTH = 12, 5

FACTORIES = textwrap.dedent('''
    import torch
    from torch import nn


    class Bag(nn.Module):
        """Mean of token embeddings, then a linear layer: an embedding bag on integer token ids."""

        def __init__(self, input_shape, n_classes, vocab=12, dim=4):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.out = nn.Linear(dim, n_classes)

        def forward(self, tokens):
            assert not tokens.is_floating_point(), tokens.dtype  # ids arrive as integers
            return self.out(self.embed(tokens).mean(1))


    def bag(input_shape, n_classes, vocab=12):
        return Bag(input_shape, n_classes, vocab)


    class RealBag(nn.Module):
        """nn.EmbeddingBag (mean): PyTorch has neither its second nor its forward-mode derivative."""

        def __init__(self, n_classes, vocab=12, dim=4):
            super().__init__()
            self.embed = nn.EmbeddingBag(vocab, dim, mode="mean")
            self.out = nn.Linear(dim, n_classes)

        def forward(self, tokens):
            return self.out(self.embed(tokens))


    def real_bag(input_shape, n_classes):
        return RealBag(n_classes)


    def dropout_mlp(input_shape, n_classes, p=0.5, hidden=6):
        return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.Tanh(), nn.Dropout(p), nn.Linear(hidden, n_classes))
''')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("anynet")
    (root / "mine.py").write_text(FACTORIES)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (40, LENGTH), generator=gen)
    labels = (tokens < VOCAB // 2).sum(1).gt(LENGTH // 2).long()  # class 1: mostly low ids
    Split(tokens[:30], labels[:30], tokens[30:], labels[30:], n_classes=2).save(root / "tokens.pt")
    features = torch.randn(40, 3, generator=gen)
    Split(features[:30], (features[:30, 0] > 0).long(), features[30:], (features[30:, 0] > 0).long(),
          n_classes=2).save(root / "features.pt")
    return root


def models_cfg(root):
    return {"bag": {"factory": f"{root}/mine.py:bag"}, "realbag": {"factory": f"{root}/mine.py:real_bag"},
            "drop": {"factory": f"{root}/mine.py:dropout_mlp"},
            "nodrop": {"factory": f"{root}/mine.py:dropout_mlp", "options": {"p": 0.0}}}


TRAIN = {"optimizer": "sgd", "lr": 0.5, "steps": 60, "batch_size": 10, "check_every": 1000}
LOO = {"steps": 20}


def run_loo(paths, data, removed, out, drift_theta=None, theta_out=None, **options):
    """LOO re-training of `removed` (−1: nothing removed) through the LOO truth; with `theta_out`
    (removing nothing only) the drift control, which also saves its parameters."""
    cell = {"model": paths["model.pt"], "data": data, "test_points": paths["tp.json"], "drift_theta": drift_theta}
    loo = get("loo")
    if theta_out:
        return loo.drift(cell, LOO, TRAIN, out, theta_out, device_name="cpu", **QUIET, **options)
    return loo.retrain_chunk(cell, [(i, [i] if i >= 0 else []) for i in removed], LOO, LOO, TRAIN, out,
                             device_name="cpu", **QUIET, **options)


def trained(root, arch, data, dtype="float64"):
    paths = {name: str(root / f"{arch}-{dtype}-{name}") for name in ("model.pt", "metrics.json", "tp.json")}
    pipeline.train(str(root / data), arch, 0.01, 0, TRAIN, dtype, "cpu", paths["model.pt"], paths["metrics.json"],
                   models_cfg=models_cfg(root), **QUIET)
    pipeline.pick_test_points(paths["model.pt"], str(root / data), ["max", "median"], paths["tp.json"], "cpu")
    return paths


def test_integer_inputs_are_not_cast_float_ones_are():
    ids = torch.tensor([[1, 2]])
    assert model_inputs(ids, torch.float64, "cpu").dtype == torch.int64
    assert model_inputs(ids.float(), torch.float64, "cpu").dtype == torch.float64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_token_model_trains_and_runs_loo_and_influence(files, dtype):
    paths = trained(files, "bag", "tokens.pt", dtype)
    metrics = read_json(paths["metrics.json"])
    assert metrics["train_accuracy"] > 0.6
    data = str(files / "tokens.pt")
    out = str(files / f"loo-{dtype}.parquet")
    run_loo(paths, data, [-1, 0, 4], out)
    loo = pd.read_parquet(out)
    assert loo.test_loss.notna().all() and loo.test_loss.nunique() > 2
    for method in ("exact", "identity", "cg", "kfac", "ekfac"):
        table, diag = str(files / f"{method}-{dtype}.parquet"), str(files / f"{method}-{dtype}.json")
        options = {"method": method, **({"hessian": "gauss_newton"} if method == "cg" else {})}
        pipeline.compute_influence(paths["model.pt"], data, paths["tp.json"], method, options, 0.01, table, diag,
                                   device_name="cpu", **QUIET)
        scores = pd.read_parquet(table)
        assert scores.predicted_loss_change.notna().all(), method
        if method in ("kfac", "ekfac"):
            diagnostics = read_json(diag)
            assert diagnostics["uncovered_parameters"] == ["embed.weight"]
            assert [entry["kind"] for entry in diagnostics["uncovered_layers"]] == ["Embedding"]


def test_the_drift_control_equals_a_copy_that_removes_nothing_with_dropout(files):
    paths = trained(files, "drop", "features.pt")
    data = str(files / "features.pt")
    chunk, drift = str(files / "drop-chunk.parquet"), str(files / "drop-drift.parquet")
    theta = str(files / "drop-drift.pt")
    run_loo(paths, data, [-1], drift, order_seed=3, theta_out=theta)
    run_loo(paths, data, [2, -1, 5], chunk, order_seed=3, drift_theta=theta)
    rows = pd.read_parquet(chunk)
    control = rows[rows.removed_index == -1]
    assert control.param_distance_vs_drift.max() < 1e-10
    assert (rows[rows.removed_index >= 0].param_distance_vs_drift > 1e-6).all()
    again = str(files / "drop-drift-again.parquet")
    run_loo(paths, data, [-1], again, order_seed=3)
    pd.testing.assert_frame_equal(pd.read_parquet(drift), pd.read_parquet(again), check_exact=True)


def test_influence_is_computed_with_dropout_off(files):
    """The trained dropout model's influence equals that of the same weights in a model without
    dropout: influence and the Hessian see the network in eval mode."""
    paths = trained(files, "drop", "features.pt")
    record = torch.load(paths["model.pt"], weights_only=False)
    record["factory"][1] = {"p": 0.0}
    plain = str(files / "drop-as-plain.pt")
    torch.save(record, plain)
    data = str(files / "features.pt")
    tables = []
    for model in (paths["model.pt"], plain):
        table = f"{model}.exact.parquet"
        pipeline.compute_influence(model, data, paths["tp.json"], "exact", {}, 0.01, table, table + ".json",
                                   device_name="cpu", **QUIET)
        tables.append(pd.read_parquet(table))
    pd.testing.assert_frame_equal(*tables, check_exact=True)


def test_a_model_without_second_derivatives_runs_what_it_can_and_refuses_the_rest(files):
    """nn.EmbeddingBag: training, LOO, identity, K-FAC and EK-FAC run (scoring by reverse-mode
    per-sample gradients, its forward mode missing); exact, CG, LiSSA and Arnoldi need its second
    derivative and report `unsupported: ...` with NaN scores instead of failing."""
    paths = trained(files, "realbag", "tokens.pt")
    data = str(files / "tokens.pt")
    out = str(files / "realbag-loo.parquet")
    run_loo(paths, data, [-1, 0], out)
    assert pd.read_parquet(out).test_loss.notna().all()
    lines = []
    for method, runs in [("identity", True), ("kfac", True), ("ekfac", True), ("exact", False), ("cg", False),
                         ("lissa", False), ("arnoldi", False)]:
        table, diag = str(files / f"realbag-{method}.parquet"), str(files / f"realbag-{method}.json")
        pipeline.compute_influence(paths["model.pt"], data, paths["tp.json"], method, {"method": method}, 0.01, table,
                                   diag, device_name="cpu", log=lines.append)
        scores = pd.read_parquet(table)
        if runs:
            assert scores.predicted_loss_change.notna().all() and (scores.status == "ok").all(), method
        else:
            assert scores.predicted_loss_change.isna().all() and scores.predicted_param_change_norm.isna().all()
            assert (scores.status == "unsupported: derivative of _embedding_bag_backward").all(), method
            assert read_json(diag)["status"] == "unsupported: derivative of _embedding_bag_backward"
    assert "exact max: unsupported: derivative of _embedding_bag_backward" in lines


@pytest.mark.parametrize("arch,data", [("bag", "tokens.pt"), ("drop", "features.pt")])
def test_other_ground_truths_on_token_and_dropout_models(files, arch, data):
    """Groups/LDS re-training and PBRF run on token ids and with dropout. A scratch re-training
    that removes nothing repeats θ*'s training, masks included: it lands on θ* exactly."""
    paths = trained(files, arch, data)
    data = str(files / data)
    cell = {"model": paths["model.pt"], "data": data, "test_points": paths["tp.json"]}
    out = str(files / f"{arch}-sets.parquet")
    groups = get("groups")
    groups.retrain_chunk(cell, [(0, []), (1, [5, 6])], {**groups.defaults, "start": "scratch"}, LOO, TRAIN, out,
                         device_name="cpu", **QUIET)
    sets = pd.read_parquet(out)
    assert (sets[sets.set_id == 0].param_distance < 1e-12).all()  # vmapped vs alone: rounding
    assert (sets[sets.set_id == 1].param_distance > 1e-6).all()
    pbrf_truth = get("pbrf")
    for solver in ("train", "lbfgs"):
        out = str(files / f"{arch}-pbrf-{solver}.parquet")
        pbrf_truth.retrain_chunk(cell, [(-1, []), (7, [7])], {**pbrf_truth.defaults, "solver": solver}, LOO, TRAIN, out,
                                 damping=0.01, device_name="cpu", **QUIET)
        pbrf = pd.read_parquet(out)
        assert pbrf.test_loss.notna().all()
        assert (pbrf[pbrf.removed_index == -1].param_distance < 1e-9).all()


def test_a_refused_estimator_is_a_named_flag_in_the_correlations(files):
    """The correlations of an estimator that could not run name why (`estimator_failed:unsupported:
    derivative of ...`) next to those of the estimators that did run."""
    from fragility.study import correlate, selection

    paths = trained(files, "realbag", "tokens.pt")
    data = str(files / "tokens.pt")
    influence = {}
    for method in ("identity", "exact"):
        influence[method] = str(files / f"flag-{method}.parquet")
        pipeline.compute_influence(paths["model.pt"], data, paths["tp.json"], method, {}, 0.01, influence[method],
                                   influence[method] + ".json", device_name="cpu", **QUIET)
    selected = str(files / "flag-selected.json")
    selection.select(influence["identity"], [{"top_k": 6}], selected)
    removed = read_json(selected)["indices"]
    drift, chunk = str(files / "flag-drift.parquet"), str(files / "flag-chunk.parquet")
    run_loo(paths, data, [-1], drift)
    run_loo(paths, data, removed, chunk)
    cell = {"study": "s", "dataset": "tokens", "arch": "realbag", "decay": 0.01, "seed": 0}
    rows, corr = str(files / "flag-rows.parquet"), str(files / "flag-corr.parquet")
    correlate.correlate_cell(cell, influence, paths["tp.json"], selected, [chunk], drift, paths["metrics.json"], rows, corr,
                             options={"resamples": 20, "permutations": 20})
    table = pd.read_parquet(corr)
    exact = table[(table.estimator == "exact") & (table.quantity == "loss_change")]
    assert (exact.flag == "estimator_failed:unsupported: derivative of _embedding_bag_backward").all()
    assert table[(table.estimator == "identity") & (table.quantity == "loss_change")].pearson.notna().any()
