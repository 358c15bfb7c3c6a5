"""Models with random layers (dropout) in re-training: the copies of a chunk and the drift control
draw the same masks at each step (common random numbers), from (order seed, step) only; influence
is computed in eval mode (dropout off)."""

import pytest
import torch
from torch import nn

from fragility.engine import training
from fragility.engine.flat import FlatModel
from fragility.engine.training import TrainSettings, train_copies

torch.set_num_threads(1)


def dropout_net(p=0.5, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(p), nn.Linear(8, 3)).to(dtype)


def data(n=24, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen)


def settings(**kw):
    return TrainSettings(**{"steps": 30, "lr": 0.2, "optimizer": "sgd", "momentum": 0.5, "check_every": 1000,
                            "order_seed": 7, **kw})


def retrain(net, x, y, removed, s, theta=None):
    theta = net.flatten() if theta is None else theta
    weights = torch.ones(len(removed), len(y), dtype=x.dtype)
    for c, i in enumerate(removed):
        if i >= 0:
            weights[c, i] = 0.0
    return train_copies(net, x, y, 1e-3, theta.repeat(len(removed), 1), weights, s, log=lambda *a: None).thetas


def dropout_cnn(seed=0):
    """The issue's case: a small CNN with BatchNorm and Dropout (both kinds)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout2d(0.5), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("model,batch_size", [("mlp", None), ("mlp", 8), ("cnn", 8)])
def test_a_copy_that_removes_nothing_equals_the_drift_control(model, batch_size):
    net = FlatModel(dropout_net() if model == "mlp" else dropout_cnn())
    x, y = data()
    if model == "cnn":
        x = torch.randn(len(y), 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = settings(batch_size=batch_size)
    chunk = retrain(net, x, y, [3, -1, 5], s)
    drift = retrain(net, x, y, [-1], s)
    assert torch.allclose(chunk[1], drift[0], rtol=0, atol=1e-10)
    assert (chunk[0] - drift[0]).abs().max() > 1e-6  # the removal does change the copy


def test_the_masks_matter_a_drift_control_with_other_masks_differs(monkeypatch):
    net = FlatModel(dropout_net())
    x, y = data()
    s = settings()
    chunk = retrain(net, x, y, [3, -1], s)
    monkeypatch.setattr(training, "step_seed", lambda seed, step: 1000 + step)  # other masks, same batches
    drift = retrain(net, x, y, [-1], s)
    assert (chunk[1] - drift[0]).abs().max() > 1e-4


def test_a_rerun_is_identical_whatever_the_global_generator_and_leaves_it_alone():
    net = FlatModel(dropout_net())
    x, y = data()
    torch.manual_seed(123)
    first = retrain(net, x, y, [2, -1], settings(batch_size=8))
    state = torch.get_rng_state()
    torch.manual_seed(999)
    torch.randn(17)
    second = retrain(net, x, y, [2, -1], settings(batch_size=8))
    assert torch.equal(first, second)
    torch.manual_seed(999)
    torch.randn(17)
    expected = torch.get_rng_state()
    torch.manual_seed(999)
    torch.randn(17)
    retrain(net, x, y, [-1], settings())
    assert torch.equal(torch.get_rng_state(), expected)  # the seeding does not leak out
    del state


def test_theta_star_training_with_dropout_is_deterministic_and_uses_the_masks():
    x, y = data()
    net = FlatModel(dropout_net())
    theta = net.flatten()
    a = retrain(net, x, y, [-1], settings(), theta)
    torch.randn(5)
    b = retrain(net, x, y, [-1], settings(), theta)
    assert torch.equal(a, b)
    plain = FlatModel(dropout_net(p=0.0))  # the same weights without dropout: other numbers
    c = retrain(plain, x, y, [-1], settings(), theta)
    assert (a - c).abs().max() > 1e-4


def test_the_same_seed_gives_the_masks_of_an_unbatched_forward():
    """The vmapped copies see the very masks a plain forward draws under the step's seed."""
    x, _ = data(6)
    with training.seeded_random_ops(training.step_seed(7, 3), torch.device("cpu")):
        plain = nn.functional.dropout(x, 0.5, True)
    with training.seeded_random_ops(training.step_seed(7, 3), torch.device("cpu")):
        batched = torch.func.vmap(lambda w: nn.functional.dropout(x * w, 0.5, True), randomness="same")(
            torch.ones(3, dtype=x.dtype))
    assert torch.equal(batched[0], plain) and torch.equal(batched[2], plain)
