"""Scoring every training point against test points: the forward-mode pass equals a per-sample
autograd loop, and the influence table never forms an n × p gradient matrix past its limit."""

import pytest
import torch
from torch import nn

import fragility.estimators.inverse_hessian as influence
from fragility.engine.solvers import make_solver
from fragility.models.registry import build_model
from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, directional_derivatives


def gradient_loop(net, theta, x, y):
    """∇ℓ(z_i, θ) one sample at a time with torch.autograd.grad: the usual way."""
    rows = []
    for i in range(len(y)):
        t = theta.clone().requires_grad_(True)
        rows.append(torch.autograd.grad(net.per_sample_losses(t, x[i : i + 1], y[i : i + 1]).sum(), t)[0])
    return torch.stack(rows)


def mlp_problem(arch="mlp-d2-w6", n=29):
    torch.manual_seed(0)
    net = FlatModel(build_model(arch, (4,), 3).double())
    return net, net.flatten(), torch.randn(n, 4, dtype=torch.float64), torch.randint(0, 3, (n,))


@pytest.mark.parametrize("count", [1, 2, 4])  # forward mode for one or two directions, gradient blocks beyond
def test_directional_derivatives_equal_the_per_sample_loop(count):
    net, theta, x, y = mlp_problem()
    directions = torch.randn(count, theta.numel(), dtype=torch.float64)
    fast = directional_derivatives(net, theta, x, y, directions, chunk_size=8)  # 29 rows: ragged last chunk
    assert fast.shape == (count, 29)
    assert torch.allclose(fast, directions @ gradient_loop(net, theta, x, y).T, atol=1e-12)


def test_directional_derivatives_with_batchnorm_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).double()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.eval()
    net = FlatModel(model)
    theta = net.flatten()
    x, y = torch.randn(11, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (11,))
    directions = torch.randn(2, theta.numel(), dtype=torch.float64)
    fast = directional_derivatives(net, theta, x, y, directions, chunk_size=4)
    assert torch.allclose(fast, directions @ gradient_loop(net, theta, x, y).T, atol=1e-12)


def explicit_influence(net, theta, x, y, xt, yt, decay, damping):
    """Δ̂_ti = (1/n) ∇ℓ(z_i) · (H + δI)⁻¹ ∇ℓ(z_t) and ‖Δθ̂_i‖ = (1/n) ‖(H + δI)⁻¹ ∇ℓ(z_i)‖, with an
    explicit solve and gradient loops."""
    h = Objective(net, x, y, decay).hessian(theta)
    damped = h + damping * torch.eye(len(h), dtype=h.dtype)
    g_train, g_test = gradient_loop(net, theta, x, y), gradient_loop(net, theta, xt, yt)
    n = len(y)
    return g_test @ torch.linalg.solve(damped, g_train.T) / n, torch.linalg.solve(damped, g_train.T).norm(dim=0) / n


@pytest.mark.parametrize("scoring_chunk_size", [None, 7])  # the device default (one pass here), ragged chunks
def test_influence_table_matches_explicit_formula(scoring_chunk_size):
    net, theta, x, y = mlp_problem()
    xt, yt = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    decay, damping = 0.01, 0.3
    solver = make_solver("exact").fit(Objective(net, x, y, decay), theta)
    points = [{"name": "A", "index": 3}, {"name": "B", "index": 0}]
    table, outcomes = influence.influence_table(net, theta, x, y, points, xt, yt, solver, damping, chunk_size=10,
                                                scoring_chunk_size=scoring_chunk_size)
    expected, norms = explicit_influence(net, theta, x, y, xt[[3, 0]], yt[[3, 0]], decay, damping)
    for t, name in enumerate(["A", "B"]):
        rows = table[table.test_point == name].sort_values("train_index")
        assert torch.allclose(torch.tensor(rows.predicted_loss_change.to_numpy()), expected[t], atol=1e-12)
        assert torch.allclose(torch.tensor(rows.predicted_param_change_norm.to_numpy()), norms, atol=1e-12)
    assert [o["status"] for o in outcomes] == ["ok", "ok"]


def test_removing_the_test_point_itself_is_predicted_to_raise_its_loss():
    """Sign convention on a convex model: with H positive definite, Δ̂ for z_t ∈ train is
    (1/n) gᵀH⁻¹g > 0 — removing a point makes its own loss go up."""
    net, theta, x, y = mlp_problem(arch="mlp-d0-w0")
    solver = make_solver("exact").fit(Objective(net, x, y, 0.01), theta)
    table, _ = influence.influence_table(net, theta, x, y, [{"name": "A", "index": 7}], x, y, solver, 0.0)
    assert table.loc[table.train_index == 7, "predicted_loss_change"].item() > 0


def test_no_gradient_matrix_past_the_limit(monkeypatch):
    """With a zero byte budget only the T test gradients are formed; Δ̂ is unchanged."""
    net, theta, x, y = mlp_problem()
    xt, yt = torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,))
    solver = make_solver("cg", tol=1e-12).fit(Objective(net, x, y, 0.01), theta)
    points = [{"name": "A", "index": 1}]
    full, _ = influence.influence_table(net, theta, x, y, points, xt, yt, solver, 0.5)
    real = influence.per_sample_gradients
    sizes = []

    def recording(net_, theta_, x_, y_, *args, **kwargs):
        sizes.append(len(y_))
        return real(net_, theta_, x_, y_, *args, **kwargs)

    monkeypatch.setattr(influence, "per_sample_gradients", recording)
    bounded, _ = influence.influence_table(net, theta, x, y, points, xt, yt, solver, 0.5, max_gradient_matrix_bytes=0)
    assert sizes == [1]
    assert torch.allclose(torch.tensor(bounded.predicted_loss_change.to_numpy()),
                          torch.tensor(full.predicted_loss_change.to_numpy()), atol=1e-14)
    assert bounded.train_grad_norm.isna().all() and bounded.predicted_param_change_norm.isna().all()


def test_a_failed_solve_gives_nan_scores_not_numbers():
    net, theta, x, y = mlp_problem()
    solver = make_solver("cg", max_iterations=1).fit(Objective(net, x, y, 0.01), theta)
    table, outcomes = influence.influence_table(net, theta, x, y, [{"name": "A", "index": 2}], x, y, solver, 0.5)
    assert outcomes[0]["status"] == "not_converged"
    assert table.predicted_loss_change.isna().all() and (table.status == "not_converged").all()


def test_scoring_without_forward_mode_takes_per_sample_gradients_with_the_same_numbers(monkeypatch):
    """Where a layer has no forward-mode derivative the jvp path falls back to reverse-mode
    per-sample gradients: the same scores (both ways where both work)."""
    import torch
    from torch import nn

    from fragility.engine import objective
    from fragility.engine.flat import FlatModel

    torch.manual_seed(0)
    net = FlatModel(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double())
    theta = net.flatten()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (50,), generator=gen)
    directions = torch.randn(2, theta.numel(), generator=gen, dtype=torch.float64)
    forward = objective.directional_derivatives(net, theta, x, y, directions, chunk_size=16)

    def no_forward_mode(*args, **kwargs):
        raise NotImplementedError("Trying to use forward AD with _embedding_bag that does not support it")
    monkeypatch.setattr(objective, "jvp", no_forward_mode)
    reverse = objective.directional_derivatives(net, theta, x, y, directions, chunk_size=16)
    assert torch.allclose(reverse, forward, rtol=1e-12, atol=1e-14)
    assert not torch.equal(reverse, torch.zeros_like(reverse))
