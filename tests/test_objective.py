"""The flat-parameter objective: gradient, Hessian-vector products, the exact Hessian and the
Gauss-Newton matrix, checked against finite differences and explicit formulas (float64)."""

import pytest
import torch

from fragility.models.registry import build_model
from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, per_sample_gradients


def tiny_problem(arch="mlp-d1-w5", n=30, decay=0.01, seed=0):
    torch.manual_seed(seed)
    net = FlatModel(build_model(arch, (4,), 3).double())
    x = torch.randn(n, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return Objective(net, x, y, decay, chunk_size=7), net.flatten()


def random_vector(p, seed=1):
    return torch.randn(p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_gradient_matches_central_differences_of_the_loss():
    obj, theta = tiny_problem()
    g = obj.gradient(theta)
    eps = 1e-6
    fd = torch.stack([(obj.value(theta + eps * e) - obj.value(theta - eps * e)) / (2 * eps)
                      for e in torch.eye(theta.numel(), dtype=theta.dtype)])
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_hvp_matches_central_differences_of_the_gradient():
    obj, theta = tiny_problem()
    v = random_vector(theta.numel())
    eps = 1e-5
    fd = (obj.gradient(theta + eps * v) - obj.gradient(theta - eps * v)) / (2 * eps)
    assert torch.allclose(obj.hvp(theta, v), fd, rtol=1e-6, atol=1e-8)
    assert torch.allclose(obj.hvp_many(theta, v[None])[0], fd, rtol=1e-6, atol=1e-8)


def test_exact_hessian_matches_central_differences_of_the_gradient():
    obj, theta = tiny_problem()
    eps = 1e-5
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    fd = torch.stack([(obj.gradient(theta + eps * e) - obj.gradient(theta - eps * e)) / (2 * eps) for e in eye])
    h = obj.hessian(theta, block=16)
    assert torch.allclose(h, 0.5 * (fd + fd.T), rtol=1e-6, atol=1e-7)
    assert torch.linalg.eigvalsh(h)[0] < 0  # a ReLU net: the Hessian is indefinite


def test_minibatch_hvp_is_the_rescaled_hessian_of_those_rows():
    obj, theta = tiny_problem()
    rows = torch.tensor([0, 3, 5, 11, 12])
    sub = Objective(obj.net, obj.x[rows], obj.y[rows], obj.decay)
    v = random_vector(theta.numel())
    assert torch.allclose(obj.hvp(theta, v, rows), sub.hvp(theta, v), atol=1e-12)
    gn = obj.with_hessian("gauss_newton")
    assert torch.allclose(gn.hvp(theta, v, rows), sub.gnh_vp(theta, v), atol=1e-12)


def explicit_gauss_newton(obj, theta):
    """(1/n) Σ J_iᵀ (diag p_i − p_i p_iᵀ) J_i + λI from explicit per-sample Jacobians."""
    jac = torch.autograd.functional.jacobian(lambda t: obj.net.logits(t, obj.x), theta)  # [n, C, p]
    prob = torch.softmax(obj.net.logits(theta, obj.x), dim=-1)
    h_out = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    g = torch.einsum("ncp,ncd,ndq->pq", jac, h_out, jac) / obj.n
    return g + obj.decay * torch.eye(theta.numel(), dtype=theta.dtype)


def test_gauss_newton_products_match_explicit_formula():
    obj, theta = tiny_problem()
    expected = explicit_gauss_newton(obj, theta)
    v = random_vector(theta.numel())
    assert torch.allclose(obj.gnh_vp(theta, v), expected @ v, atol=1e-12)
    gn = obj.with_hessian("gauss_newton")
    assert torch.allclose(gn.hvp(theta, v), expected @ v, atol=1e-12)
    assert torch.allclose(gn.hessian(theta, block=10), expected, atol=1e-12)


def test_gauss_newton_is_positive_semidefinite_where_the_hessian_is_not():
    obj, theta = tiny_problem(decay=0.0)
    full = torch.linalg.eigvalsh(obj.hessian(theta))
    gauss_newton = torch.linalg.eigvalsh(obj.with_hessian("gauss_newton").hessian(theta))
    assert full[0] < -1e-3
    assert gauss_newton[0] > -1e-12
    assert gauss_newton[-1] > 1e-3


def test_gauss_newton_equals_the_hessian_for_a_linear_model():
    """For multinomial logistic regression the logits are linear in θ, so H = G exactly."""
    obj, theta = tiny_problem(arch="mlp-d0-w0")
    assert torch.allclose(obj.hessian(theta), obj.with_hessian("gauss_newton").hessian(theta), atol=1e-12)


def test_unknown_hessian_kind_names_the_key():
    obj, _ = tiny_problem()
    with pytest.raises(ValueError, match="hessian"):
        obj.with_hessian("kfac")


def test_per_sample_gradients_match_an_autograd_loop():
    obj, theta = tiny_problem()
    fast = per_sample_gradients(obj.net, theta, obj.x, obj.y, chunk_size=8)
    loop = []
    for i in range(obj.n):
        t = theta.clone().requires_grad_(True)
        loss = obj.net.per_sample_losses(t, obj.x[i : i + 1], obj.y[i : i + 1]).sum()
        loop.append(torch.autograd.grad(loss, t)[0])
    assert torch.allclose(fast, torch.stack(loop), atol=1e-13)


@pytest.mark.parametrize("hessian", ["full", "gauss_newton"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_operator_keeps_the_graph_and_matches_hvp_many(hessian, chunk_size):
    obj, theta = tiny_problem()
    obj = Objective(obj.net, obj.x, obj.y, obj.decay, chunk_size=chunk_size, hessian=hessian)
    product = obj.operator(theta)
    vectors = torch.randn(4, theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = obj.hvp_many(theta, vectors)
    for _ in range(2):  # a second call reuses the kept graph
        assert torch.allclose(product(vectors), expected, atol=1e-13)
    assert torch.allclose(product(vectors[:1])[0], obj.hvp(theta, vectors[0]), atol=1e-13)
