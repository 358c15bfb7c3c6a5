"""Batched leave-one-out re-training: k copies under vmap give the numbers of k separate runs,
BatchNorm copies keep their own statistics and never see their removed point, and a run resumed
from its checkpoint ends where an uninterrupted run ends (float64)."""

import math
import pytest
import torch
from torch import nn

import fragility.engine.training as training
from fragility.models.registry import build_model
from fragility.engine.flat import FlatModel
from fragility.engine.training import TrainSettings, train_copies
from interrupt import interrupted_at

QUIET = dict(log=lambda message: None)


def mlp():
    torch.manual_seed(3)
    return build_model("mlp-d1-w6", (4,), 3).double()


def bn_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)).double()


def data(kind, n=24):
    gen = torch.Generator().manual_seed(0)
    shape = (n, 4) if kind == "mlp" else (n, 1, 6, 6)
    return torch.randn(*shape, dtype=torch.float64, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def removal_weights(n, removed):
    w = torch.ones(len(removed), n, dtype=torch.float64)
    for c, i in enumerate(removed):
        if i >= 0:
            w[c, i] = 0.0
    return w


SETTINGS = {
    "sgd": TrainSettings(steps=12, lr=0.05, optimizer="sgd", momentum=0.9, batch_size=7, schedule="cosine", order_seed=5),
    "adam": TrainSettings(steps=12, lr=0.01, optimizer="adam", batch_size=10, order_seed=2),
    "gd": TrainSettings(steps=8, lr=0.2, optimizer="gd"),
}


@pytest.mark.parametrize("kind", ["mlp", "bn"])
@pytest.mark.parametrize("optimizer", sorted(SETTINGS))
def test_batched_copies_equal_separate_runs(kind, optimizer):
    make = mlp if kind == "mlp" else bn_net
    x, y = data(kind)
    removed = [-1, 0, 5, 17]
    weights = removal_weights(len(y), removed)
    net = FlatModel(make())
    batched = train_copies(net, x, y, 0.01, net.flatten().repeat(len(removed), 1), weights, SETTINGS[optimizer], **QUIET)
    for c in range(len(removed)):
        single_net = FlatModel(make())
        single = train_copies(single_net, x, y, 0.01, single_net.flatten()[None], weights[c : c + 1], SETTINGS[optimizer], **QUIET)
        assert (single.thetas[0] - batched.thetas[c]).abs().max() < 1e-10
        for name, value in single.buffers.items():
            assert (value[0].double() - batched.buffers[name][c].double()).abs().max() < 1e-10
    assert not torch.allclose(batched.thetas[0], batched.thetas[2])  # removals matter


def test_batchnorm_copies_keep_their_own_running_statistics():
    x, y = data("bn")
    net = FlatModel(bn_net())
    result = train_copies(net, x, y, 0.0, net.flatten().repeat(3, 1), removal_weights(len(y), [-1, 2, 9]), SETTINGS["sgd"], **QUIET)
    means = result.buffers["1.running_mean"]
    assert means.shape == (3, 3) and (means != 0).all()
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])
    assert (result.buffers["1.num_batches_tracked"] == SETTINGS["sgd"].steps).all()


def test_full_copy_with_batchnorm_equals_plain_torch_training():
    """All-ones weights: the weighted batch statistics are torch's BatchNorm, running stats included."""
    x, y = data("bn")
    decay, settings = 0.01, SETTINGS["gd"]
    net = FlatModel(bn_net())
    ours = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64), settings, **QUIET)
    model = bn_net().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    for _ in range(settings.steps):
        optimizer.zero_grad()
        theta = torch.cat([p.reshape(-1) for p in model.parameters()])
        (nn.functional.cross_entropy(model(x), y) + 0.5 * decay * theta.pow(2).sum()).backward()
        optimizer.step()
    assert torch.allclose(ours.thetas[0], FlatModel(model).flatten(), atol=1e-12)
    for name, value in model.named_buffers():
        assert torch.allclose(ours.buffers[name][0].to(value.dtype), value, atol=1e-12)


def test_a_removed_point_leaves_no_trace_in_batchnorm_statistics():
    """Full-batch training with weight 0 at i equals training on the data without row i."""
    x, y = data("bn")
    i, settings = 6, SETTINGS["gd"]
    net = FlatModel(bn_net())
    weighted = train_copies(net, x, y, 0.01, net.flatten()[None], removal_weights(len(y), [i]), settings, **QUIET)
    keep = torch.arange(len(y)) != i
    net_without = FlatModel(bn_net())
    without = train_copies(net_without, x[keep], y[keep], 0.01, net_without.flatten()[None],
                           torch.ones(1, int(keep.sum()), dtype=torch.float64), settings, **QUIET)
    assert torch.allclose(weighted.thetas, without.thetas, atol=1e-12)
    for name, value in without.buffers.items():
        assert torch.allclose(weighted.buffers[name], value, atol=1e-12)


def crashed_run(tmp_path, monkeypatch, make, x, y, weights, settings):
    """Start a run of the network `make()` that dies at step 7, after its checkpoint at step 4; return the checkpoint."""
    checkpoint = tmp_path / "loo.ckpt"
    net = FlatModel(make())
    with interrupted_at(monkeypatch, 7):
        train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=checkpoint, **QUIET)
    return checkpoint


def dropout_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("kind", ["mlp", "bn", "dropout"])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(kind, tmp_path, monkeypatch):
    make = {"mlp": mlp, "bn": bn_net, "dropout": dropout_net}[kind]
    x, y = data("bn" if kind == "bn" else "mlp")
    weights = removal_weights(len(y), [-1, 4])
    settings = TrainSettings(steps=12, lr=0.01, optimizer="adam", batch_size=7, schedule="cosine", order_seed=1,
                             checkpoint_every=4)
    net = FlatModel(make())
    uninterrupted = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, **QUIET)
    checkpoint = crashed_run(tmp_path, monkeypatch, make, x, y, weights, settings)
    assert checkpoint.exists()
    messages = []
    net = FlatModel(make())
    resumed = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=checkpoint,
                           log=messages.append)
    assert any("resuming" in m and "step 4" in m for m in messages)
    assert torch.equal(resumed.thetas, uninterrupted.thetas)
    for name, value in uninterrupted.buffers.items():
        assert torch.equal(resumed.buffers[name], value)
    assert resumed.history == uninterrupted.history


@pytest.mark.parametrize("change", ["learning rate", "removed points", "data"])
def test_a_checkpoint_of_another_run_is_replaced_not_resumed(change, tmp_path, monkeypatch):
    """A job killed with one configuration and re-run with another (a new learning rate, another
    chunk of removed points, other data) must start over: resuming would mix the two runs."""
    x, y = data("mlp")
    weights = removal_weights(len(y), [-1, 4])
    settings = TrainSettings(steps=12, lr=0.01, optimizer="adam", batch_size=7, order_seed=1, checkpoint_every=4)
    checkpoint = crashed_run(tmp_path, monkeypatch, mlp, x, y, weights, settings)
    if change == "learning rate":
        settings = TrainSettings(steps=12, lr=0.02, optimizer="adam", batch_size=7, order_seed=1, checkpoint_every=4)
    elif change == "removed points":
        weights = removal_weights(len(y), [-1, 5])
    else:
        x = x.clone()
        x[0, 0] += 1.0
    net = FlatModel(mlp())
    fresh = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, **QUIET)
    messages = []
    net = FlatModel(mlp())
    rerun = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=checkpoint,
                         log=messages.append)
    assert any("another run" in m for m in messages)
    assert not any("resuming" in m for m in messages)
    assert torch.equal(rerun.thetas, fresh.thetas)


def test_changing_only_the_logging_interval_still_resumes(tmp_path, monkeypatch):
    x, y = data("mlp")
    weights = removal_weights(len(y), [-1, 4])
    settings = TrainSettings(steps=12, lr=0.01, optimizer="adam", batch_size=7, order_seed=1, checkpoint_every=4)
    checkpoint = crashed_run(tmp_path, monkeypatch, mlp, x, y, weights, settings)
    settings.check_every = 3
    messages = []
    net = FlatModel(mlp())
    train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=checkpoint,
                 log=messages.append)
    assert any("resuming" in m and "step 4" in m for m in messages)


@pytest.mark.parametrize("per_pass", [2, 3])  # 5 copies: passes of 2+2+1 and 3+2
def test_a_job_trained_pass_by_pass_equals_one_pass(tmp_path, per_pass, monkeypatch):
    """`loo.copies_per_pass` changes only how a job's copies share the processor, not the numbers;
    each pass keeps its own checkpoint (every `loo.checkpoint_every` steps, not train's), all of
    them removed at the end."""
    import pandas as pd

    from fragility.study import pipeline
    from fragility.truths.registry import get

    saved = []
    real_save = training.save_torch
    monkeypatch.setattr(training, "save_torch", lambda state, path: (saved.append((str(path), state["step"])),
                                                                      real_save(state, path)))

    data, model, points = (str(tmp_path / name) for name in ("data.pt", "model.pt", "tp.json"))
    train_cfg = {"optimizer": "sgd", "lr": 0.05, "steps": 30, "batch_size": 16, "check_every": 10, "checkpoint_every": 5}
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, str(tmp_path), data)
    pipeline.train(data, "mlp-d1-w4", 0.01, 0, train_cfg, "float64", "cpu", model, str(tmp_path / "m.json"), **QUIET)
    pipeline.pick_test_points(model, data, ["max", "median"], points, "cpu")
    tables = {}
    for mode in (None, per_pass):
        out, ckpt = str(tmp_path / f"loo_{mode}.parquet"), str(tmp_path / f"loo_{mode}.ckpt")
        loo_cfg = {"steps": 12, "chunk_size": 5, "checkpoint_every": 4, "copies_per_pass": mode}
        cell = {"model": model, "data": data, "test_points": points}
        get("loo").retrain_chunk(cell, [(-1, []), (0, [0]), (7, [7]), (33, [33]), (90, [90])], loo_cfg, loo_cfg,
                                 train_cfg, out, device_name="cpu", checkpoint_path=ckpt, **QUIET)
        tables[mode] = pd.read_parquet(out)
        passes = 1 if mode is None else -(-5 // mode)
        written = sorted({path for path, _ in saved if path.startswith(ckpt)})
        assert len(written) == passes
        assert sorted({step for path, step in saved if path.startswith(ckpt)}) == [4, 8]  # loo's interval
        assert not list(tmp_path.glob(f"loo_{mode}.ckpt*"))
    pd.testing.assert_frame_equal(tables[None], tables[per_pass])
    assert tables[None].test_loss.nunique() > 2  # the copies differ from one another


def test_kept_steps_survive_a_resume_and_do_not_change_the_run(tmp_path, monkeypatch):
    """`keep_steps` (TracIn's checkpoints): θ and the learning rate after steps 3, 6 and 12 of a
    cosine schedule, the same after a resume from step 4, and the final θ unchanged by keeping them."""
    x, y = data("mlp")
    weights = removal_weights(len(y), [-1, 4])
    settings = TrainSettings(steps=12, lr=0.01, optimizer="adam", batch_size=7, schedule="cosine", order_seed=1,
                             checkpoint_every=4)
    net = FlatModel(mlp())
    plain = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, **QUIET)
    net = FlatModel(mlp())
    kept = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, keep_steps=(3, 6, 12), **QUIET)
    assert torch.equal(kept.thetas, plain.thetas) and plain.kept == []
    assert [k["step"] for k in kept.kept] == [3, 6, 12] and torch.equal(kept.kept[-1]["thetas"], kept.thetas)
    assert [k["lr"] for k in kept.kept] == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * s / 12)) for s in (3, 6, 12)])
    checkpoint = tmp_path / "keep.ckpt"
    net = FlatModel(mlp())
    with interrupted_at(monkeypatch, 7):
        train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=checkpoint,
                     keep_steps=(3, 6, 12), **QUIET)
    net = FlatModel(mlp())
    resumed = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=checkpoint,
                           keep_steps=(3, 6, 12), **QUIET)
    assert [k["step"] for k in resumed.kept] == [3, 6, 12]
    for a, b in zip(resumed.kept, kept.kept):
        assert torch.equal(a["thetas"], b["thetas"]) and a["lr"] == b["lr"]
    # a checkpoint written by a run that kept nothing is not resumed by one that keeps earlier steps
    plain_checkpoint = tmp_path / "plain.ckpt"
    net = FlatModel(mlp())
    with interrupted_at(monkeypatch, 7):
        train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings, checkpoint_path=plain_checkpoint,
                     **QUIET)
    messages = []
    net = FlatModel(mlp())
    restarted = train_copies(net, x, y, 0.01, net.flatten().repeat(2, 1), weights, settings,
                             checkpoint_path=plain_checkpoint, keep_steps=(3, 6, 12), log=messages.append)
    assert any("without the parameters this run keeps" in m for m in messages)
    assert [k["step"] for k in restarted.kept] == [3, 6, 12] and torch.equal(restarted.thetas, plain.thetas)
