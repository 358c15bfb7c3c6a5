"""Unit tests of the workflow's building blocks: data split, test-point and training-point
selection, grid and config checks, safe I/O, training failures and model-health flags."""

import numpy as np
import pytest
import torch

from fragility.study import grid
from fragility.engine import health
from fragility.data.registry import load_split
from fragility.data.split import stratified_split
from fragility.io import CorruptFileError, atomic_path, load_torch, save_torch
from fragility.models.registry import build_model, count_parameters, init_model
from fragility.engine.flat import FlatModel
from fragility.study.grid import chunk
from fragility.truths import registry
from fragility.study.selection import choose_test_points, select_training_points
from fragility.engine.training import NonFiniteLossError, TrainSettings, train_copies


def test_iris_split_is_stratified_seeded_and_standardised_on_train_only():
    a = load_split("iris", {"test_fraction": 0.2, "split_seed": 3})
    b = load_split("iris", {"test_fraction": 0.2, "split_seed": 3})
    c = load_split("iris", {"test_fraction": 0.2, "split_seed": 4})
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert len(a.y_train) == 120 and len(a.y_test) == 30
    assert torch.bincount(a.y_test).tolist() == [10, 10, 10]
    np.testing.assert_allclose(a.x_train.mean(0).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(a.x_train.std(0, unbiased=False).numpy(), 1, atol=1e-5)
    assert abs(float(a.x_test.mean())) > 1e-4  # test rows are not re-centred on themselves
    assert sorted(a.meta["train_rows"] + a.meta["test_rows"]) == list(range(150))


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.zeros(10), 1.5, 0)


def test_mlp_architecture_names():
    assert count_parameters(build_model("mlp-d1-w5", (4,), 3)) == 4 * 5 + 5 + 5 * 3 + 3
    assert count_parameters(build_model("mlp-d3-w5", (4,), 3)) == 25 + 2 * 30 + 18
    assert count_parameters(build_model("mlp-d0-w0", (4,), 3)) == 15
    with pytest.raises(ValueError, match="unknown architecture 'mlp-x'"):
        build_model("mlp-x", (4,), 3)


def test_test_point_specs():
    losses = np.array([0.1, 5.0, 0.3, 0.2, 0.4, 2.0, 0.0])
    points = {p["name"]: p["index"] for p in choose_test_points(losses, ["max", "median", "p0", "top3"])}
    assert points == {"max": 1, "median": 2, "p0": 6, "top1": 1, "top2": 5, "top3": 4}
    with pytest.raises(ValueError, match="unknown spec 'foo'"):
        choose_test_points(losses, ["foo"])
    with pytest.raises(ValueError, match="'p150' is not a percentile"):
        choose_test_points(losses, ["p150"])
    assert choose_test_points(losses, ["p100"])[0]["index"] == 1


def test_random_test_points_are_seeded_distinct_and_independent_of_the_losses():
    losses = np.linspace(0.0, 1.0, 50)
    drawn = choose_test_points(losses, ["random5"], seed=3)
    assert [p["name"] for p in drawn] == [f"random{r}" for r in range(1, 6)]
    indices = [p["index"] for p in drawn]
    assert len(set(indices)) == 5 and all(0 <= i < 50 for i in indices)
    assert [p["loss"] for p in drawn] == [float(losses[i]) for i in indices]
    # the same seed draws the same points whatever the losses (every architecture and decay of a seed)
    assert [p["index"] for p in choose_test_points(np.random.default_rng(0).random(50), ["random5"], seed=3)] == indices
    assert [p["index"] for p in choose_test_points(losses, ["random5"], seed=4)] != indices
    # uniform: over many seeds every test point is drawn about equally often (k/n each)
    draws = [p["index"] for s in range(2000) for p in choose_test_points(losses[:10], ["random2"], seed=s)]
    counts = np.bincount(draws, minlength=10)
    assert counts.sum() == 4000 and np.all(np.abs(counts / 2000 - 0.2) < 0.03), counts
    # all of them: a permutation
    assert sorted(p["index"] for p in choose_test_points(losses[:7], ["random7"], seed=1)) == list(range(7))
    with pytest.raises(ValueError, match="'random8' asks for 8 points but the test set has 7"):
        choose_test_points(losses[:7], ["random8"])
    with pytest.raises(ValueError, match="asks for 0 points"):
        choose_test_points(losses[:7], ["random0"])


def test_selection_rules():
    scores = np.arange(100, dtype=float)[::-1]  # index i has |Δ̂| = 99 - i
    top = select_training_points(scores, [{"top_fraction": 0.166}])
    assert sorted(top) == list(range(17))
    mixed = select_training_points(scores, [{"top_k": 10}, {"around_percentile": 30, "k": 10}])
    around = sorted(i for i, label in mixed.items() if label == "p30")
    assert len(mixed) == 20 and around == list(range(65, 75))  # ranks 25..34 from the bottom
    with pytest.raises(ValueError, match="NaN"):
        select_training_points(np.array([1.0, np.nan]), [{"top_k": 1}])
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def _config():
    block = {
        "datasets": {"iris": {}}, "architectures": ["mlp-d1-w5", "mlp-d2-w5"], "decays": [0.005, 0.0], "seeds": [0, 1],
        "train": {"optimizer": "gd", "lr": 0.1, "steps": 10}, "test_points": ["max"],
        "influence": {"damping": 0.01, "methods": {"exact": {}}}, "select": {"by": "exact", "rules": [{"top_k": 3}]},
        "loo": {"steps": 5, "chunk_size": 4}, "overrides": {"mlp-d2-w5": {"loo": {"chunk_size": 1}}},
    }
    return {"studies": {"iris": block}}


def test_grid_cells_labels_and_overrides():
    config = _config()
    cells = grid.cells(config, "iris")
    assert len(cells) == 8
    assert {c["decay"] for c in cells} == {"0.005", "0"}
    assert grid.decay_value(config, "iris", "0") == 0.0
    assert grid.cell_dir(cells[0]) == "results/iris/iris/mlp-d1-w5/wd0.005/seed0"
    assert grid.arch_config(config, "iris", "mlp-d2-w5")["loo"] == {"steps": 5, "chunk_size": 1}
    assert grid.arch_config(config, "iris", "mlp-d1-w5")["loo"]["chunk_size"] == 4


@pytest.mark.parametrize(
    "patch, message",
    [
        (lambda b: b["architectures"].append("resnet-999"), "architectures: unknown architecture 'resnet-999'"),
        (lambda b: b["select"].update(by="lissa"), "select.by: 'lissa' is not one of"),
        (lambda b: b.update(decays=[0.0, 0.0]), "decays: duplicate"),
        (lambda b: b["overrides"].update({"vgg13": {}}), "overrides.vgg13: not one of"),
        (lambda b: b["datasets"]["iris"].update(subset_fracton=0.1), "datasets.iris: subset_fracton is not an option"),
        (lambda b: b["datasets"]["iris"].update(normalize=True), "datasets.iris: normalize is not an option of the 'iris'"),
        (lambda b: b["datasets"].update(mnist={"test_fraction": 0.2}), "datasets.mnist: test_fraction is not an option"),
        (lambda b: b["datasets"].update(mine={"loader": "nope"}), "datasets.mine.loader: unknown dataset loader 'nope'"),
        (lambda b: b.update(figures={"estimator": "lisa"}), "figures.estimator: 'lisa' is not one of"),
        (lambda b: b.update(figures={"scatter_architecture": "mlp-d9-w5"}), "figures.scatter_architecture: 'mlp-d9-w5'"),
    ],
)
def test_check_config_names_the_key(patch, message):
    config = _config()
    patch(config["studies"]["iris"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        grid.check_config(config)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    save_torch({"theta": torch.zeros(3)}, path)
    path.write_bytes(path.read_bytes()[:20])  # truncated, as after a crash mid-copy
    with pytest.raises(CorruptFileError, match="corrupt or truncated"):
        load_torch(path)
    save_torch({"theta": torch.zeros(3)}, path)
    with pytest.raises(CorruptFileError, match=r"lacks keys \['arch'\]"):
        load_torch(path, required_keys=("theta", "arch"))


def test_nan_loss_stops_training_with_a_clear_error(iris64):
    x, y, _, _ = iris64
    net = FlatModel(init_model("mlp-d1-w5", (4,), 3, seed=0, dtype=torch.float64))
    settings = TrainSettings(steps=50, lr=1e6, check_every=10)
    with pytest.raises(NonFiniteLossError, match="non-finite .* lower train.lr"):
        train_copies(net, x, y, 0.0, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64), settings)


def test_parameters_that_turn_non_finite_in_the_last_step_stop_training(iris64):
    """The loss checked is taken before the step; a last step to infinity must not pass unseen."""
    x, y, _, _ = iris64
    net = FlatModel(init_model("mlp-d1-w5", (4,), 3, seed=0, dtype=torch.float64))
    settings = TrainSettings(steps=1, lr=1e308, check_every=1)  # large inputs: gradients > 2, a step past 1.8e308
    with pytest.raises(NonFiniteLossError, match="parameters became non-finite in the last step"):
        train_copies(net, 1e3 * x, y, 0.0, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64), settings)


def test_collapsed_model_is_flagged(iris64):
    x, y, _, _ = iris64
    net = FlatModel(init_model("mlp-d2-w5", (4,), 3, seed=0, dtype=torch.float64))
    dead = torch.zeros(net.num_parameters, dtype=torch.float64)  # every ReLU dead: constant logits
    flags = health.training_flags(net, health.evaluate(net, dead, x, y), y, 3)
    assert flags == ["constant_outputs", "chance_accuracy"]
    trained = train_copies(net, x, y, 0.0, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64),
                           TrainSettings(steps=300, lr=0.1)).thetas[0]
    assert health.training_flags(net, health.evaluate(net, trained, x, y), y, 3) == []


def test_training_is_deterministic(iris64):
    x, y, _, _ = iris64
    runs = []
    for _ in range(2):
        net = FlatModel(init_model("mlp-d1-w5", (4,), 3, seed=7, dtype=torch.float64))
        runs.append(train_copies(net, x, y, 0.005, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64),
                                 TrainSettings(steps=50, lr=0.1, batch_size=32, order_seed=1)).thetas)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("k, batch_size", [(1, None), (3, None), (3, 32)])
def test_plain_gradient_steps_are_torch_sgd_to_the_last_bit(iris64, monkeypatch, k, batch_size):
    """Plain GD/SGD (momentum 0, constant schedule) steps θ itself; torch.optim.SGD with LambdaLR
    must give the same bits, one copy or k with points removed, full batch or minibatches."""
    from fragility.engine import training

    x, y, _, _ = iris64
    weights = torch.ones(k, len(y), dtype=torch.float64)
    for c in range(1, k):
        weights[c, c - 1] = 0.0  # copy c leaves out training point c − 1
    runs = {}
    for plain in (True, False):
        monkeypatch.setattr(training, "PLAIN_STEP", plain)
        net = FlatModel(init_model("mlp-d2-w5", (4,), 3, seed=3, dtype=torch.float64))
        result = train_copies(net, x, y, 0.005, net.flatten()[None].repeat(k, 1), weights,
                              TrainSettings(steps=120, lr=0.05, batch_size=batch_size, order_seed=2))
        runs[plain] = result.thetas
    assert not torch.equal(runs[True], net.flatten()[None].repeat(k, 1))  # it trained
    assert torch.equal(runs[True], runs[False])


@pytest.mark.parametrize("k, batch_size", [(1, None), (3, 32)])
def test_an_mlp_evaluated_as_a_functional_chain_trains_to_the_same_bits(iris64, monkeypatch, k, batch_size):
    """FlatModel evaluates an MLP by calling F.linear / F.relu directly (FlatModel.chain): the
    outputs, their gradients and a training run must equal functional_call's to the last bit."""
    x, y, _, _ = iris64
    weights = torch.ones(k, len(y), dtype=torch.float64)
    weights[k - 1, 0] = 0.0
    from fragility.engine import training

    monkeypatch.setattr(training, "CHAIN_GRADIENT", False)  # autograd through the chain (the written-out gradient: below)
    runs = {}
    for chain in (True, False):
        net = FlatModel(init_model("mlp-d3-w5", (4,), 3, seed=3, dtype=torch.float64))
        assert net.chain is not None and [kind for kind, _ in net.chain].count("linear") == 4
        if not chain:
            net.chain = None
        theta = net.flatten().requires_grad_()
        out = net.logits(theta, x)
        (grad,) = torch.autograd.grad(out.square().sum(), theta)
        result = train_copies(net, x, y, 0.005, net.flatten()[None].repeat(k, 1), weights,
                              TrainSettings(steps=60, lr=0.05, batch_size=batch_size, order_seed=2), log=lambda m: None)
        runs[chain] = (out.detach(), grad, result.thetas)
    for a, b in zip(runs[True], runs[False]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch, task, batch_size, mean_over", [
    ("mlp-d1-w5", "cross_entropy", None, "kept"), ("mlp-d3-w5", "cross_entropy", 32, "kept"),
    ("mlp-d1-w50", "cross_entropy", None, "all"), ("mlp-d0-w0", "cross_entropy", None, "kept"),
    ("mlp-d2-w8", "mse", 40, "kept"), ("no-bias", "cross_entropy", None, "kept")])
def test_stacked_copies_of_a_chain_train_to_the_bits_of_vmap(iris64, monkeypatch, arch, task, batch_size, mean_over):
    """k copies of a plain MLP chain are trained as batched products (FlatModel.stacked_logits)
    instead of under vmap: the final parameters must be the same bits, for both built-in tasks,
    full batch or minibatches, the loss averaged over kept rows or all rows, with or without biases."""
    from torch import nn

    from fragility.engine import training
    from fragility.engine.task import make_task

    x, y, _, _ = iris64
    targets = torch.nn.functional.one_hot(y, 3).double() if task == "mse" else y
    k = 4
    weights = torch.ones(k, len(y), dtype=torch.float64)
    for c in range(1, k):
        weights[c, [c, c + 7]] = 0.0
    monkeypatch.setattr(training, "CHAIN_GRADIENT", False)  # autograd of the products (the written-out gradient: below)
    runs = {}
    for stacked in (True, False):
        monkeypatch.setattr(training, "STACKED_CHAIN", stacked)
        torch.manual_seed(5)
        model = (nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
                 if arch == "no-bias" else init_model(arch, (4,), 3, seed=3, dtype=torch.float64))
        net = FlatModel(model, make_task(task))
        assert net.chain is not None
        start = net.flatten() + 0.01 * torch.randn(k, net.num_parameters, dtype=torch.float64)
        runs[stacked] = train_copies(net, x, targets, 0.005, start, weights,
                                     TrainSettings(steps=40, lr=0.05, batch_size=batch_size, order_seed=2,
                                                   loss_mean_over=mean_over), log=lambda m: None)
    assert not torch.equal(runs[True].thetas, start)
    assert torch.equal(runs[True].thetas, runs[False].thetas)
    assert runs[True].final_losses == runs[False].final_losses


@pytest.mark.parametrize("arch, task, k, batch_size, mean_over, decay, dtype", [
    ("mlp-d1-w5", "cross_entropy", 1, None, "kept", 0.005, torch.float64),
    ("mlp-d1-w5", "cross_entropy", 1, None, "kept", 0.0, torch.float64),
    ("mlp-d8-w5", "cross_entropy", 1, None, "kept", 0.005, torch.float64),
    ("mlp-d1-w50", "cross_entropy", 1, None, "all", 0.005, torch.float64),
    ("mlp-d3-w5", "cross_entropy", 1, 32, "kept", 0.005, torch.float64),
    ("mlp-d0-w0", "cross_entropy", 1, None, "kept", 0.005, torch.float64),
    ("mlp-d4-w5", "cross_entropy", 6, None, "kept", 0.005, torch.float64),
    ("mlp-d1-w20", "cross_entropy", 5, 32, "all", 0.0, torch.float64),
    ("mlp-d0-w0", "cross_entropy", 3, None, "kept", 0.005, torch.float64),
    ("mlp-d2-w8", "mse", 1, None, "kept", 0.005, torch.float64),
    ("mlp-d2-w8", "mse", 4, 40, "kept", 0.005, torch.float64),
    ("mlp-d2-w8", "cross_entropy", 1, None, "kept", 0.005, torch.float32),
    ("mlp-d2-w8", "cross_entropy", 4, 40, "kept", 0.005, torch.float32),
    ("no-bias", "cross_entropy", 1, None, "kept", 0.005, torch.float64),
    ("no-bias", "cross_entropy", 3, None, "kept", 0.005, torch.float64)])
def test_the_written_out_chain_gradient_trains_to_the_bits_of_autograd(iris64, monkeypatch, arch, task, k, batch_size,
                                                                       mean_over, decay, dtype):
    """Plain chains train with their gradient written out (ChainGradient) instead of autograd's
    backward: the final parameters, the logged losses and the final losses must be the same bits,
    for one copy (F.linear) and stacked copies (bmm), both built-in tasks, with and without decay
    and biases, full batch or minibatches, float64 and float32 — and the written-out path must
    actually have run."""
    from torch import nn

    from fragility.engine import flat, training
    from fragility.engine.task import make_task

    x, y, _, _ = iris64
    x = x.to(dtype)
    targets = torch.nn.functional.one_hot(y, 3).to(dtype) if task == "mse" else y
    weights = torch.ones(k, len(y), dtype=dtype)
    for c in range(1, k):
        weights[c, [c, c + 7]] = 0.0
    calls = []
    original = flat.ChainGradient.__call__
    monkeypatch.setattr(flat.ChainGradient, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    runs = {}
    for written_out in (True, False):
        calls.clear()
        monkeypatch.setattr(training, "CHAIN_GRADIENT", written_out)
        torch.manual_seed(5)
        model = (nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).to(dtype)
                 if arch == "no-bias" else init_model(arch, (4,), 3, seed=3, dtype=dtype))
        net = FlatModel(model, make_task(task))
        start = net.flatten() + 0.01 * torch.randn(k, net.num_parameters, dtype=dtype)
        runs[written_out] = train_copies(net, x, targets, decay, start, weights,
                                         TrainSettings(steps=150, lr=0.05, batch_size=batch_size, order_seed=2,
                                                       loss_mean_over=mean_over, check_every=40), log=lambda m: None)
        assert len(calls) == (150 if written_out else 0)  # it ran on every step, and only while switched on
    fast, reference = runs[True], runs[False]
    assert not torch.equal(fast.thetas, start)
    assert torch.equal(fast.thetas, reference.thetas)
    assert fast.final_losses == reference.final_losses and fast.history == reference.history


def test_the_written_out_chain_gradient_is_autograds_gradient(iris64):
    """One call of ChainGradient against torch.autograd.grad of the objective written per copy
    (another graph, so up to rounding), and against central finite differences of that objective (the math, not only the bits)."""
    from fragility.engine.flat import ChainGradient

    x, y, _, _ = iris64
    net = FlatModel(init_model("mlp-d2-w5", (4,), 3, seed=1, dtype=torch.float64))
    decay, k = 0.01, 3
    thetas = net.flatten() + 0.1 * torch.randn(k, net.num_parameters, dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(0))
    weights = torch.ones(k, len(y), dtype=torch.float64)
    weights[1, 4] = weights[2, 9] = 0.0

    def objective(th):
        losses = torch.stack([(net.per_sample_losses(th[c], x, y) * weights[c]).sum() / weights[c].sum()
                              for c in range(k)])
        return (losses + 0.5 * decay * th.pow(2).sum(1)).sum()

    written = ChainGradient(net, thetas, decay)(x, y, weights)
    leaf = thetas.clone().requires_grad_()
    (reference,) = torch.autograd.grad(objective(leaf), leaf)
    torch.testing.assert_close(written, reference, rtol=0, atol=1e-13)
    for c, i in [(0, 0), (1, 7), (2, net.num_parameters - 1)]:
        step = torch.zeros_like(thetas)
        step[c, i] = 1e-6
        numeric = (objective(thetas + step) - objective(thetas - step)) / 2e-6
        assert abs(float(numeric) - float(written[c, i])) < 1e-7
    one = ChainGradient(net, thetas[:1], decay)(x, y, weights[:1])  # one copy: F.linear's path, not bmm's
    torch.testing.assert_close(one[0], written[0], rtol=0, atol=1e-13)


def test_a_task_that_changes_the_loss_never_inherits_a_written_out_gradient(iris64, monkeypatch):
    """A Task subclass that overrides per_sample_loss (here: label smoothing) but not
    output_gradient must train with autograd's gradient of its own loss, not the parent's."""
    import torch.nn.functional as F

    from fragility.engine import flat
    from fragility.engine.task import CrossEntropyTask

    class Smoothed(CrossEntropyTask):
        def per_sample_loss(self, outputs, targets):
            return F.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.3)

    class Rewritten(Smoothed):
        output_gradient = CrossEntropyTask.output_gradient  # declares its own (here: wrongly)

    assert CrossEntropyTask().writes_out_gradient() and not Smoothed().writes_out_gradient()
    assert Rewritten().writes_out_gradient()
    monkeypatch.setattr(flat.ChainGradient, "__call__", lambda *a: pytest.fail("written-out gradient used"))
    x, y, _, _ = iris64
    net = FlatModel(init_model("mlp-d1-w5", (4,), 3, seed=3, dtype=torch.float64), Smoothed())
    result = train_copies(net, x, y, 0.005, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64),
                          TrainSettings(steps=5, lr=0.05), log=lambda m: None)
    theta = net.flatten()
    for _ in range(5):  # the same steps by hand, with autograd on the smoothed loss
        leaf = theta.clone().requires_grad_()
        objective = net.per_sample_losses(leaf, x, y).mean() + 0.5 * 0.005 * leaf.pow(2).sum()
        theta = theta - 0.05 * torch.autograd.grad(objective, leaf)[0]
    torch.testing.assert_close(result.thetas[0], theta, rtol=0, atol=1e-12)


def test_only_plain_chains_skip_functional_call():
    """A model with any other layer, a buffer or a hook keeps functional_call."""
    from torch import nn

    assert FlatModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))).chain == [
        ("flatten", (1, -1)), ("linear", ["1.weight"])]
    assert FlatModel(nn.Sequential(nn.Linear(4, 3), nn.Tanh())).chain is None
    assert FlatModel(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))).chain is None
    assert FlatModel(build_model("smallcnn", (1, 28, 28), 10)).chain is None
    hooked = init_model("mlp-d1-w5", (4,), 3, seed=0)
    net = FlatModel(hooked)
    x = torch.randn(6, 4)
    plain = net.logits(net.flatten(), x)
    handle = hooked.net[-1].register_forward_hook(lambda module, args, out: out * 2)  # as K-FAC's, after construction
    assert torch.equal(net.logits(net.flatten(), x), 2 * plain)
    handle.remove()
    assert torch.equal(net.logits(net.flatten(), x), plain)
    hooked.net[1].register_forward_hook(lambda module, args, out: out * 2)
    assert FlatModel(hooked).chain is None


def _run_in_a_fresh_python(code: str) -> None:
    """Run `code` in a new interpreter (what a module imports shows only there); fail on any error."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_plain_gradient_steps_do_not_load_the_compiler():
    """Constructing any torch.optim optimiser imports torch._dynamo (seconds per job); plain GD does not."""
    code = ("import sys, torch; from fragility.engine.flat import FlatModel; "
            "from fragility.models.registry import init_model; "
            "from fragility.engine.training import TrainSettings, train_copies; "
            "net = FlatModel(init_model('mlp-d1-w5', (4,), 3, seed=0, dtype=torch.float64)); "
            "x = torch.randn(8, 4, dtype=torch.float64); y = torch.arange(8) % 3; "
            "train_copies(net, x, y, 0.0, net.flatten()[None], torch.ones(1, 8, dtype=torch.float64), "
            "TrainSettings(steps=3, lr=0.1)); assert 'torch._dynamo' not in sys.modules, 'dynamo imported'")
    _run_in_a_fresh_python(code)


def test_every_job_keeps_gpu_float32_at_full_precision(monkeypatch):
    """`runtime.configure` (run by every compute job) turns TF32 off: cuDNN's default would round
    float32 convolutions to a 10-bit mantissa on the GPU."""
    import torch

    from fragility import runtime

    monkeypatch.setattr(runtime, "set_deterministic", lambda *args, **kwargs: None)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        runtime.configure(threads=None)
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_config_reader_owns_seeds_chunks_and_repeats():
    config = _config()
    config["studies"]["iris"]["loo"]["repeats"] = {"count": 2}
    assert grid.loo_order_seed(3) == 3 + grid.LOO_ORDER_OFFSET
    assert grid.repeat_settings(config, "iris", "mlp-d1-w5") == {"count": 2, "order_seed_offset": 1}
    assert grid.repeat_order_seed(config, "iris", "mlp-d1-w5", 3) == grid.loo_order_seed(3) + 1
    loo = registry.get("loo")
    assert grid.chunk_count(9, loo.chunk_size(grid.arch_config(config, "iris", "mlp-d1-w5"))) == 3  # chunk_size 4
    assert grid.chunk_count(9, loo.chunk_size(grid.arch_config(config, "iris", "mlp-d2-w5"))) == 9  # override: 1
    assert grid.influence_chunks(config, "iris", "mlp-d1-w5") == {"chunk_size": 1024, "scoring_chunk_size": None}
    assert grid.damping_for({"damping": 0.01, "damping_without_decay": 0.001}, 0.0) == 0.001
    assert grid.damping_for({"damping": 0.01, "damping_without_decay": 0.001}, 0.005) == 0.01


def test_every_job_asks_for_deterministic_kernels_without_loading_the_compiler():
    """`runtime.configure` sets torch's deterministic flag (warn-only) but does not import
    torch._inductor, which `torch.use_deterministic_algorithms` does (seconds of start-up per job)."""
    code = ("import sys, torch; from fragility import runtime; runtime.configure(1); "
            "assert torch.are_deterministic_algorithms_enabled(); "
            "assert torch.is_deterministic_algorithms_warn_only_enabled(); "
            "assert 'torch._inductor' not in sys.modules, 'inductor imported'; "
            "import torch._inductor.config as c; runtime.set_deterministic(False); "
            "assert not torch.are_deterministic_algorithms_enabled() and c.deterministic is False")
    _run_in_a_fresh_python(code)
