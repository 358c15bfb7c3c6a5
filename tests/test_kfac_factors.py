"""K-FAC/EK-FAC factor decompositions: float64 whatever the model's dtype, a jittered retry where
the eigensolver fails, and a per-test-point status (never a crash) where every retry fails."""

import math

import pytest
import torch
from torch import nn

from fragility.engine import kfac
from fragility.engine.flat import FlatModel
from fragility.estimators.inverse_hessian import influence_table
from fragility.engine.objective import Objective
from fragility.engine.solvers import make_solver

torch.set_num_threads(1)


def rank_deficient(dim=300, samples=20, dtype=torch.float32):
    """A = (1/m) Σ a aᵀ from m < dim samples: rank m, dim − m equal (zero) eigenvalues."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(samples, dim, generator=gen, dtype=torch.float64)
    return (a.T @ a / samples).to(dtype)


def test_a_rank_deficient_float32_factor_is_decomposed_in_float64():
    a = rank_deficient()
    lam, q, jitter = kfac.decompose_factor(a)
    assert lam.dtype == q.dtype == torch.float32 and jitter == 0.0
    truth = a.double()
    rebuilt = q.double() @ torch.diag(lam.double()) @ q.double().T
    assert float((rebuilt - truth).norm() / truth.norm()) < 1e-6
    assert float((q.double().T @ q.double() - torch.eye(len(a), dtype=torch.float64)).abs().max()) < 1e-5
    assert int((lam > 1e-3 * lam.max()).sum()) == 20  # the rank: the other 280 eigenvalues are ~0


def test_a_float64_factor_gives_the_bits_of_a_plain_eigh():
    a = rank_deficient(dtype=torch.float64)
    lam, q, _ = kfac.decompose_factor(a)
    want_lam, want_q = torch.linalg.eigh(0.5 * (a + a.T))
    assert torch.equal(lam, want_lam) and torch.equal(q, want_q)


def failing_eigh(fail_times):
    """torch.linalg.eigh that fails the first `fail_times` calls on float64 matrices larger than 3 × 3
    (the factors of a float32 model; its output Hessians stay float32)."""
    real, calls = torch.linalg.eigh, {"failed": 0}

    def eigh(matrix, *args, **kwargs):
        if matrix.dtype == torch.float64 and matrix.shape[-1] > 3 and calls["failed"] < fail_times:
            calls["failed"] += 1
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (mocked)")
        return real(matrix, *args, **kwargs)
    return eigh, calls


def test_a_failed_decomposition_is_retried_with_jitter(monkeypatch):
    a = rank_deficient(dtype=torch.float64)
    eigh, calls = failing_eigh(2)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    lam, q, jitter = kfac.decompose_factor(a)
    monkeypatch.undo()
    assert calls["failed"] == 2 and jitter == kfac.JITTERS[1]
    want, _ = torch.linalg.eigh(a)
    assert float((lam - want).abs().max()) < 1e-8 * float(a.diagonal().mean()) * 10  # shifted back by the jitter
    assert float((q @ torch.diag(lam) @ q.T - a).abs().max()) < 1e-12


def float32_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 8), nn.Tanh(), nn.Linear(8, 3))  # float32; 31-wide factor from 12 rows
    net = FlatModel(model)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 30, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    return net, Objective(net, x, y, decay=0.01), net.flatten(), x, y


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_factors_of_a_float32_model_are_decomposed_in_float64(method, monkeypatch):
    net, obj, theta, x, y = float32_problem()
    seen, real = [], torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m, *a, **k: (seen.append((m.dtype, m.shape[-1])), real(m, *a, **k))[1])
    solver = make_solver(method).fit(obj, theta)
    assert {dtype for dtype, size in seen if size > 3} == {torch.float64}
    assert solver.factors["0"]["q_a"].dtype == torch.float32
    sol = solver.solve(torch.randn(2, theta.numel()), 0.01)
    assert sol.status == ["ok", "ok"] and torch.isfinite(sol.solutions).all()


@pytest.mark.parametrize("method", ["kfac", "ekfac"])
def test_a_decomposition_that_always_fails_is_a_status_not_a_crash(method, monkeypatch):
    net, obj, theta, x, y = float32_problem()
    eigh, _ = failing_eigh(10**9)
    monkeypatch.setattr(torch.linalg, "eigh", eigh)
    solver = make_solver(method).fit(obj, theta)
    assert solver.diagnostics["status"] == kfac.DECOMPOSITION_FAILED
    assert "layer '0'" in solver.diagnostics["error"] and "failed to converge" in solver.diagnostics["error"]
    points = [{"name": "a", "index": 0}, {"name": "b", "index": 1}]
    table, outcomes = influence_table(net, theta, x, y, points, x, y, solver, 0.01)
    assert (table.status == kfac.DECOMPOSITION_FAILED).all() and table.predicted_loss_change.isna().all()
    assert table.predicted_param_change_norm.isna().all()
    assert all(o["status"] == kfac.DECOMPOSITION_FAILED for o in outcomes)
    assert math.isnan(float(solver.solution_norms(torch.ones(1, theta.numel()), 0.01)[0]))


def test_long_solver_phases_report_progress(monkeypatch):
    """LiSSA's power iteration and series, and Arnoldi's iterations, log lines as training does."""
    from fragility.engine import ihvp

    monkeypatch.setattr(ihvp, "PROGRESS_SECONDS", 0.0)
    net, obj, theta, x, y = float32_problem()
    obj = Objective(net, x.double(), y, decay=0.01)
    net.model.double()
    theta = net.flatten()
    lines = []
    lissa = make_solver("lissa", depth=7, power_iterations=5, hessian="gauss_newton")
    lissa.log = lines.append
    lissa.fit(obj, theta).solve(torch.ones(1, theta.numel(), dtype=torch.float64), 0.1)
    assert "lissa: series step 7/7" in lines[-1] and "s left" in lines[-1]
    assert any(line.startswith("lissa: power iteration (at most) 1/5") for line in lines)
    arnoldi = make_solver("arnoldi", iterations=4, rank=4)
    arnoldi.log = lines.append
    arnoldi.fit(obj, theta)
    assert lines[-1].startswith("arnoldi: iteration 4/4")
