"""TRAK's random projection: its scores approach the unprojected kernel regression as k grows
(issue check (c); benchmarks/trak_projection.py draws the curve for docs/estimators.md)."""

import numpy as np
import torch
from torch import nn

from fragility.engine.flat import FlatModel
from fragility.engine.task import make_task
from fragility.estimators import registry
from fragility.estimators.base import Context


def test_the_projected_scores_approach_the_unprojected_ones_as_k_grows():
    """A tanh MLP (p = 115) at a random θ on 400 separable points: the Pearson of the mean of 3
    projection seeds' τ with the unprojected τ rises with k = p/8, p/4, p/2 and is 1 at k = p
    (where the projection cancels). Measured: about 0.3, 0.5, 0.7 — a projection to half the
    parameters is not the unprojected estimator on a net this small (docs/estimators.md)."""
    torch.manual_seed(0)
    n, d, width = 400, 10, 8
    x = torch.randn(n + 10, d, dtype=torch.float64)
    y = (x @ torch.randn(d, 3, dtype=torch.float64)).argmax(1)
    net = FlatModel(nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 3)).double(),
                    make_task("cross_entropy"))
    theta = net.flatten()
    c = Context(net, theta, x[:n], y[:n], x[n:], y[n:], decay=0.0, damping=0.0)
    points = [{"name": f"t{j}", "index": j} for j in range(10)]
    p = theta.numel()
    full = registry.make_estimator("trak", {"projection_dim": None}).fit(c).tau(points)[0]

    def pearson(k):
        taus = [registry.make_estimator("trak", {"projection_dim": k, "seed": s}).fit(c).tau(points)[0]
                for s in range(3)]
        return float(np.corrcoef(torch.stack(taus).mean(0).flatten(), full.flatten())[0, 1])

    rising = [pearson(k) for k in (p // 8, p // 4, p // 2)]
    assert rising == sorted(rising) and rising[0] < 0.6 < rising[-1], rising
    assert pearson(p) > 1 - 1e-9


def test_the_kernel_solve_in_the_dual_equals_the_primal_pseudo_inverse():
    """Where Φ has more columns than rows (k > n), (ΦᵀΦ + λI)⁺Φᵀ is computed as Φᵀ(ΦΦᵀ + λI)⁺:
    the same matrix and the same rank as the d × d pseudo-inverse (torch.linalg.pinv, written
    here independently), for λ = 0 and λ > 0, with Φ of full row rank and rank-deficient."""
    from fragility.estimators.trak import kernel_solve

    gen = torch.Generator().manual_seed(0)
    full = torch.randn(12, 30, dtype=torch.float64, generator=gen)
    deficient = torch.randn(12, 5, dtype=torch.float64, generator=gen) @ torch.randn(5, 30, dtype=torch.float64,
                                                                                     generator=gen)
    for phi, rank_phi in ((full, 12), (deficient, 5)):
        for l2 in (0.0, 0.3):
            kernel = phi.T @ phi + l2 * torch.eye(30, dtype=torch.float64)
            expected = torch.linalg.pinv(kernel, hermitian=True, rtol=1e-12) @ phi.T
            solved, rank = kernel_solve(phi, l2, 1e-12)
            torch.testing.assert_close(solved, expected, rtol=1e-9, atol=1e-12)
            assert rank == int(torch.linalg.matrix_rank(kernel, hermitian=True, rtol=1e-12))
            assert rank == (30 if l2 else rank_phi)
    tall = torch.randn(40, 30, dtype=torch.float64, generator=gen)  # d ≤ n: the primal, as before
    torch.testing.assert_close(kernel_solve(tall, 0.0, 1e-12)[0], torch.linalg.pinv(tall), rtol=1e-9, atol=1e-12)


def test_a_float32_model_is_projected_in_float32_and_scores_as_in_float64():
    """A float32 model's gradients are projected in float32 (P's rows rounded from the same float64
    draws, whether P is one block or several) and Φ is taken to float64 for the kernel: Φ within
    1e-5 (relative) of projecting the same gradients in float64, and τ within 1e-4 of the same net
    and θ run in float64 throughout."""
    import copy

    from fragility.estimators.trak import Projection, output_gradients

    torch.manual_seed(0)
    n, d, width = 200, 10, 8
    x = torch.randn(n + 5, d)
    y = (x @ torch.randn(d, 3)).argmax(1)
    net = FlatModel(nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 3)), make_task("cross_entropy"))
    theta = net.flatten()
    points = [{"name": f"t{j}", "index": j} for j in range(5)]
    c = Context(net, theta, x[:n], y[:n], x[n:], y[n:], decay=0.0, damping=0.0)
    net64 = FlatModel(copy.deepcopy(net.model).double(), make_task("cross_entropy"))
    x64 = x.double()
    c64 = Context(net64, theta.double(), x64[:n], y[:n], x64[n:], y[n:], decay=0.0, damping=0.0)
    for chunk_bytes in (2**27, 40 * 8 * 20):  # P in one block of rows; in blocks of 20 of its 115 rows
        options = {"projection_dim": 40, "chunk_bytes": chunk_bytes}
        estimator = registry.make_estimator("trak", options).fit(c)
        assert estimator.project.dtype == torch.float32
        phi = estimator.features(net, theta, x[:n], y[:n])
        in_float64 = Projection(theta.numel(), 40, "gaussian", 0, estimator.project.block, torch.float64, "cpu")
        phi64 = in_float64(output_gradients(net, theta, x[:n], y[:n]).double())
        assert phi.dtype == torch.float64 and float((phi - phi64).norm() / phi64.norm()) < 1e-5

        reference = registry.make_estimator("trak", options).fit(c64)
        assert reference.project.dtype == torch.float64 and reference.project.block == estimator.project.block
        tau, tau64 = estimator.tau(points)[0], reference.tau(points)[0]
        assert float((tau - tau64).norm() / tau64.norm()) < 1e-4, (chunk_bytes, float((tau - tau64).norm() / tau64.norm()))
    assert estimator.project.block == 20
