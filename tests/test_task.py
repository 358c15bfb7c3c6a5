"""The Task: its losses, output Hessians and Bregman divergences against their definitions (autograd
and finite differences), the MSE objective's derivatives, its health flags, and influence against
leave-one-out re-training on a convex least-squares model."""

import math

import numpy as np
import pytest
import torch

from fragility.engine.flat import FlatModel
from fragility.engine.health import evaluate, training_flags
from fragility.engine.solvers import make_solver
from fragility.estimators.inverse_hessian import influence_table
from fragility.engine.methods import TASK_NAMES
from fragility.engine.objective import Objective
from fragility.engine.task import TASKS, CrossEntropyTask, MeanSquaredErrorTask, make_task
from fragility.engine.training import TrainSettings, train_copies
from fragility.models.registry import init_model

TASK_CASES = [(CrossEntropyTask(), lambda g, m: torch.randint(0, 4, (m,), generator=g)),
              (MeanSquaredErrorTask(), lambda g, m: torch.randn(m, 4, generator=g, dtype=torch.float64))]


def test_the_torch_free_table_lists_every_task():
    assert set(TASK_NAMES) == set(TASKS)
    assert make_task("mse").name == "mse" and make_task().name == "cross_entropy"
    with pytest.raises(ValueError, match="task: unknown task 'hinge'"):
        make_task("hinge")


def test_cross_entropy_is_lse_minus_the_true_logit():
    g = torch.Generator().manual_seed(0)
    h, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1, 0])
    expected = torch.logsumexp(h, -1) - h[torch.arange(6), y]
    assert torch.allclose(CrossEntropyTask().per_sample_loss(h, y), expected, atol=1e-14)


def test_squared_error_is_half_the_squared_residual():
    h = torch.tensor([[1.0, 2.0], [0.0, -1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert MeanSquaredErrorTask().per_sample_loss(h, y).tolist() == [2.5, 2.5]
    # a vector of targets is one output per row
    assert MeanSquaredErrorTask().per_sample_loss(h[:, :1], y[:, 0]).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("task,targets", TASK_CASES, ids=["cross_entropy", "mse"])
def test_output_hessian_product_is_the_hessian_of_the_loss_in_output_space(task, targets):
    g = torch.Generator().manual_seed(1)
    h, y = torch.randn(5, 4, generator=g, dtype=torch.float64), targets(g, 5)
    u = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    for i in range(5):
        hess = torch.autograd.functional.hessian(lambda row: task.per_sample_loss(row[None], y[i : i + 1]).sum(), h[i])
        product = task.output_hessian_product(h, u)[:, i]  # [3, C]
        assert torch.allclose(product, u[:, i] @ hess, atol=1e-12)


@pytest.mark.parametrize("task,targets", TASK_CASES, ids=["cross_entropy", "mse"])
def test_bregman_divergence_matches_its_definition_and_is_label_free(task, targets):
    """D(h, h') = ℓ(h) − ℓ(h') − ∇ℓ(h')ᵀ(h − h'), for every label y (it does not depend on y)."""
    g = torch.Generator().manual_seed(2)
    h, ref = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    d = task.bregman(h, ref)
    for _ in range(3):
        y = targets(g, 5)
        r = ref.clone().requires_grad_(True)
        loss_ref = task.per_sample_loss(r, y)
        (grad_ref,) = torch.autograd.grad(loss_ref.sum(), r)
        definition = task.per_sample_loss(h, y) - loss_ref.detach() - (grad_ref * (h - ref)).sum(-1)
        assert torch.allclose(d, definition, atol=1e-12)
    assert (d > 0).all()
    assert torch.allclose(task.bregman(ref, ref), torch.zeros(5, dtype=torch.float64), atol=1e-14)


def test_sampled_labels_follow_the_softmax():
    g = torch.Generator().manual_seed(3)
    h = torch.tensor([[2.0, 0.0, -1.0]]).repeat(20000, 1)
    counts = torch.bincount(CrossEntropyTask().sample_targets(h, g), minlength=3) / 20000
    assert torch.allclose(counts, torch.softmax(h[0], -1), atol=0.015)
    noise = MeanSquaredErrorTask().sample_targets(torch.zeros(20000, 1, dtype=torch.float64), g)
    assert abs(float(noise.std()) - 1.0) < 0.02 and abs(float(noise.mean())) < 0.02


def _regression(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:d] + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def test_mse_objective_gradient_and_hessian_against_finite_differences():
    x, y = _regression(12)
    net = FlatModel(init_model("mlp-d1-w3", (3,), 1, seed=0, dtype=torch.float64), MeanSquaredErrorTask())
    obj = Objective(net, x, y, decay=0.01)
    theta = net.flatten()
    eps, eye = 1e-6, torch.eye(theta.numel(), dtype=torch.float64)
    fd = torch.stack([(obj.value(theta + eps * e) - obj.value(theta - eps * e)) / (2 * eps) for e in eye])
    assert torch.allclose(obj.gradient(theta), fd, atol=1e-8)
    fd_h = torch.stack([(obj.gradient(theta + eps * e) - obj.gradient(theta - eps * e)) / (2 * eps) for e in eye])
    assert torch.allclose(obj.hessian(theta), 0.5 * (fd_h + fd_h.T), atol=1e-6)


def test_gauss_newton_is_the_hessian_for_least_squares():
    """Squared error of a linear model: ∇²_h ℓ = I and the outputs are linear in θ, so G = H."""
    x, y = _regression(20)
    net = FlatModel(init_model("mlp-d0-w0", (3,), 1, seed=0, dtype=torch.float64), MeanSquaredErrorTask())
    obj = Objective(net, x, y, decay=0.01)
    theta = net.flatten()
    assert torch.allclose(obj.hessian(theta), obj.with_hessian("gauss_newton").hessian(theta), atol=1e-12)


def test_regression_health_flags():
    x, y = _regression(30)
    net = FlatModel(init_model("mlp-d0-w0", (3,), 1, seed=0, dtype=torch.float64), MeanSquaredErrorTask())
    constant = torch.zeros(net.num_parameters, dtype=torch.float64)
    constant[-1] = float(y.mean())  # the bias: predicts the mean of the targets
    flags = training_flags(net, evaluate(net, constant, x, y), y, 1)
    assert flags == ["constant_outputs", "no_better_than_mean"]
    fitted = torch.linalg.lstsq(torch.cat([x, torch.ones(30, 1, dtype=torch.float64)], 1), y[:, None]).solution[:, 0]
    good = evaluate(net, fitted, x, y)
    assert good["explained_variance"] > 0.9 and training_flags(net, good, y, 1) == []


def test_a_classification_task_refuses_regression_targets():
    with pytest.raises(ValueError, match="task: task 'cross_entropy' needs integer class labels"):
        CrossEntropyTask().check_targets(torch.zeros(3), 1, "task")
    with pytest.raises(ValueError, match="task: task 'mse' needs floating-point targets"):
        MeanSquaredErrorTask().check_targets(torch.zeros(3, dtype=torch.int64), 2, "task")


def test_influence_equals_leave_one_out_on_least_squares():
    """Linear least squares with decay, fitted and re-fitted to convergence: Δ̂ and the re-trained
    Δ (every training point left out in turn) agree to Pearson ≥ 0.99, with the same signs."""
    x, y = _regression(40)
    xt, yt = _regression(5, seed=1)
    decay = 0.05
    net = FlatModel(init_model("mlp-d0-w0", (3,), 1, seed=0, dtype=torch.float64), MeanSquaredErrorTask())
    settings = TrainSettings(steps=400, lr=0.5, loss_mean_over="all")
    star = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, 40, dtype=torch.float64), settings, log=lambda m: None)
    theta = star.thetas[0]
    assert float(Objective(net, x, y, decay).gradient(theta).norm()) < 1e-10
    losses = net.measurements(theta, xt, yt)
    test = int(losses.argmax())
    points = [{"name": "max", "index": test, "loss": float(losses[test])}]
    solver = make_solver("exact").fit(Objective(net, x, y, decay), theta)
    table, _ = influence_table(net, theta, x, y, points, xt, yt, solver, damping=0.0)
    weights = 1.0 - torch.eye(40, dtype=torch.float64)
    loo = train_copies(net, x, y, decay, theta.repeat(40, 1), weights, settings, log=lambda m: None)
    actual = np.array([float(net.measurements(th, xt[test : test + 1], yt[test : test + 1])[0]) - points[0]["loss"]
                       for th in loo.thetas])
    predicted = table.sort_values("train_index").predicted_loss_change.to_numpy()
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.99
    assert (np.sign(predicted) == np.sign(actual)).all()
    assert math.isclose(np.polyfit(predicted, actual, 1)[0], 1.0, rel_tol=0.15)
