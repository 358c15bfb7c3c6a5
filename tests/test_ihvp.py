"""Every inverse-Hessian-vector method against the exact solve on a tiny MLP (float64), for the
full Hessian and the Gauss-Newton matrix; failures come back as NaN with a status."""

import math

import pytest
import torch

from fragility.engine.ihvp import SolverError
from fragility.engine.solvers import SOLVERS, make_solver
from fragility.models.registry import build_model
from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    net = FlatModel(build_model("mlp-d1-w5", (4,), 3).double())
    x = torch.randn(36, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (36,))
    obj = Objective(net, x, y, decay=0.01, chunk_size=None)
    theta = net.flatten()
    rhs = torch.randn(3, theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return obj, theta, rhs


def exact(problem, hessian):
    obj, theta, _ = problem
    return make_solver("exact", hessian=hessian).fit(obj, theta)


def positive_damping(solver):
    """A damping that makes H + δI positive definite with smallest eigenvalue 0.05."""
    return max(0.0, -float(solver.eigenvalues[0])) + 0.05


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_exact_solve_inverts_the_damped_hessian(problem):
    obj, theta, rhs = problem
    solver = exact(problem, "full")
    damping = positive_damping(solver)
    h = obj.hessian(theta)
    result = solver.solve(rhs, damping)
    assert result.status == ["ok"] * 3
    assert torch.allclose(result.solutions @ (h + damping * torch.eye(len(h), dtype=h.dtype)), rhs, atol=1e-10)
    assert torch.allclose(solver.solution_norms(rhs, damping), result.solutions.norm(dim=1), atol=1e-12)
    d = solver.diagnostics
    assert d["eigenvalue_min"] < 0 < d["eigenvalue_max"] and d["fit_seconds"] >= 0 and d["solve_seconds"] >= 0


# products by Hessian-vector products over the data, or by H formed once (small p, the default here)
PRODUCTS = {"hvp": {"dense_max_parameters": 0}, "dense": {}}


@pytest.mark.parametrize("products", sorted(PRODUCTS))
@pytest.mark.parametrize("hessian", ["full", "gauss_newton"])
def test_conjugate_gradients_match_exact(problem, hessian, products):
    obj, theta, rhs = problem
    reference = exact(problem, hessian)
    damping = positive_damping(reference)
    solver = make_solver("cg", tol=1e-12, max_iterations=500, hessian=hessian, **PRODUCTS[products]).fit(obj, theta)
    result = solver.solve(rhs, damping)
    assert solver.diagnostics["products"] == products
    assert result.status == ["ok"] * 3
    assert relative_error(result.solutions, reference.solve(rhs, damping).solutions) < 1e-9
    d = solver.diagnostics
    assert 0 < d["iterations"] <= 500 and d["relative_residual_max"] <= 1e-12
    # Ritz values of CG's implicit Lanczos matrix bracket the spectrum from inside
    assert d["eigenvalue_max_estimate"] == pytest.approx(float(reference.eigenvalues[-1]), rel=1e-6)
    assert d["eigenvalue_min_estimate"] >= float(reference.eigenvalues[0]) - 1e-9


@pytest.mark.parametrize("products", sorted(PRODUCTS))
@pytest.mark.parametrize("hessian", ["full", "gauss_newton"])
def test_arnoldi_at_full_rank_matches_exact(problem, hessian, products):
    obj, theta, rhs = problem
    p = theta.numel()
    reference = exact(problem, hessian)
    damping = positive_damping(reference)
    solver = make_solver("arnoldi", iterations=p, rank=p, hessian=hessian, **PRODUCTS[products]).fit(obj, theta)
    result = solver.solve(rhs, damping)
    assert solver.diagnostics["products"] == products
    assert result.status == ["ok"] * 3
    assert relative_error(result.solutions, reference.solve(rhs, damping).solutions) < 1e-9
    assert torch.allclose(solver.solution_norms(rhs, damping), reference.solution_norms(rhs, damping), rtol=1e-9)
    assert solver.diagnostics["eigenvalue_min"] == pytest.approx(float(reference.eigenvalues[0]), abs=1e-10)


def test_arnoldi_low_rank_finds_the_top_eigenvalues(problem):
    obj, theta, rhs = problem
    reference = exact(problem, "full")
    solver = make_solver("arnoldi", iterations=30, rank=3).fit(obj, theta)
    top = reference.eigenvalues[reference.eigenvalues.abs().argsort(descending=True)[:3]]
    assert torch.allclose(solver.eigenvalues.sort().values, top.sort().values, rtol=1e-6)
    assert solver.diagnostics["rank"] == 3 and solver.diagnostics["iterations"] == 30
    # the solve is the exact inverse restricted to that 3-dimensional subspace
    u = solver.ritz_vectors
    damping = 0.1
    expected = ((rhs @ u.T) / (solver.eigenvalues + damping)) @ u
    assert torch.allclose(solver.solve(rhs, damping).solutions, expected, atol=1e-12)


@pytest.mark.parametrize("products", sorted(PRODUCTS))
@pytest.mark.parametrize("hessian", ["full", "gauss_newton"])
def test_lissa_converges_to_exact_when_scale_exceeds_the_top_eigenvalue(problem, hessian, products):
    obj, theta, rhs = problem
    reference = exact(problem, hessian)
    damping = positive_damping(reference) + 0.25
    solver = make_solver("lissa", depth=200, scale="auto", scale_factor=1.5, hessian=hessian, **PRODUCTS[products])
    result = solver.fit(obj, theta).solve(rhs, damping)
    assert solver.diagnostics["products"] == products
    assert result.status == ["ok"] * 3
    assert relative_error(result.solutions, reference.solve(rhs, damping).solutions) < 1e-4
    assert all(0 < d["growth_ratio"] <= 1 for d in result.details)  # a convergent series: ‖h_j‖ ≤ (j+1)‖v‖
    assert solver.diagnostics["scale_exceeds_top_eigenvalue"]
    assert solver.diagnostics["eigenvalue_max_estimate"] == pytest.approx(float(reference.eigenvalues[-1]), rel=1e-3)


def test_lissa_with_a_too_small_scale_reports_diverged_and_nan(problem):
    obj, theta, rhs = problem
    reference = exact(problem, "full")
    damping = positive_damping(reference)
    too_small = 0.25 * float(reference.eigenvalues[-1] + damping)
    solver = make_solver("lissa", depth=1000, scale=too_small).fit(obj, theta)
    result = solver.solve(rhs, damping)
    assert result.status == ["diverged"] * 3
    assert torch.isnan(result.solutions).all()
    assert not solver.diagnostics["scale_exceeds_top_eigenvalue"]
    assert all(d["diverged_at_step"] < 1000 for d in result.details)


def test_lissa_reports_slow_growth_along_negative_curvature_as_diverged(problem):
    """H + δI with one eigenvalue of −0.005σ: over 2,000 steps that direction grows by about e¹⁰, far
    past any convergent series but far below a blow-up. Reported "diverged", never as numbers (the
    series is then dominated by that direction: tens of times the exact solve)."""
    obj, theta, rhs = problem
    reference = exact(problem, "full")
    low, high = float(reference.eigenvalues[0]), float(reference.eigenvalues[-1])
    damping = (-low - 0.0075 * high) / 1.0075  # λ_min(H + δI) = −0.005 · 1.5 · λ_max(H + δI)
    rhs = rhs + reference.eigenvectors[:, 0]  # every right-hand side has a part along that direction
    solver = make_solver("lissa", depth=2000, scale="auto", scale_factor=1.5).fit(obj, theta)
    result = solver.solve(rhs, damping)
    assert result.status == ["diverged"] * 3
    assert torch.isnan(result.solutions).all()
    assert all(d["growth_ratio"] > 2 for d in result.details)
    # the same solve allowed to grow shows what would have been reported: nothing like (H + δI)⁻¹v
    loose = make_solver("lissa", depth=2000, scale="auto", scale_factor=1.5, growth_limit=1e9).fit(obj, theta).solve(rhs, damping)
    assert loose.status == ["ok"] * 3
    assert relative_error(loose.solutions, reference.solve(rhs, damping).solutions) > 1.0


def test_cg_judges_convergence_by_the_true_residual():
    """In float32 on an ill-conditioned system CG's updated residual keeps falling after the true one
    has stopped: the reported residual is the true one, and such a solve is not "ok"."""
    from fragility.engine.ihvp import ConjugateGradientSolver

    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(300, 300, dtype=torch.float64))
    matrix = ((q * torch.logspace(-3, 2, 300, dtype=torch.float64)) @ q.T).float()
    matrix = 0.5 * (matrix + matrix.T)
    solver = ConjugateGradientSolver(tol=1e-7, max_iterations=3000)
    solver.theta, solver._product = torch.zeros(300), lambda vectors: vectors @ matrix  # H itself, no data
    rhs = torch.randn(2, 300)
    result = solver.solve(rhs, 0.0)
    for d in result.details:
        assert d["updated_relative_residual"] <= 1e-7 and d["relative_residual"] > 3.5e-4  # √ε of float32
    assert result.status == ["not_converged"] * 2 and torch.isnan(result.solutions).all()
    # the same system in float64 converges, and then the two residuals agree
    solver64 = ConjugateGradientSolver(tol=1e-7, max_iterations=3000)
    solver64.theta, solver64._product = torch.zeros(300, dtype=torch.float64), lambda vectors: vectors @ matrix.double()
    exact64 = solver64.solve(rhs.double(), 0.0)
    assert exact64.status == ["ok"] * 2
    assert all(d["relative_residual"] <= 1e-6 for d in exact64.details)


def test_minibatch_lissa_is_close_to_exact(problem):
    obj, theta, rhs = problem
    reference = exact(problem, "full")
    damping = positive_damping(reference) + 0.5
    solver = make_solver("lissa", depth=60, repeats=3, batch_size=18, seed=3).fit(obj, theta)
    result = solver.solve(rhs, damping)
    assert result.status == ["ok"] * 3
    assert relative_error(result.solutions, reference.solve(rhs, damping).solutions) < 0.2


def test_cg_reports_negative_curvature_as_nan(problem):
    obj, theta, _ = problem
    reference = exact(problem, "full")
    most_negative = reference.eigenvectors[:, 0][None]
    result = make_solver("cg").fit(obj, theta).solve(most_negative, 0.0)
    assert result.status == ["negative_curvature"] and torch.isnan(result.solutions).all()


def test_cg_that_runs_out_of_iterations_is_not_a_number(problem):
    obj, theta, rhs = problem
    damping = positive_damping(exact(problem, "full"))
    result = make_solver("cg", max_iterations=2).fit(obj, theta).solve(rhs, damping)
    assert result.status == ["not_converged"] * 3 and torch.isnan(result.solutions).all()
    assert all(d["iterations"] == 2 and d["relative_residual"] > 1e-8 for d in result.details)


def test_cg_handles_a_zero_right_hand_side(problem):
    obj, theta, rhs = problem
    damping = positive_damping(exact(problem, "full"))
    vectors = torch.cat([torch.zeros_like(rhs[:1]), rhs[:1]])
    result = make_solver("cg").fit(obj, theta).solve(vectors, damping)
    assert result.status == ["ok", "ok"] and (result.solutions[0] == 0).all()


def test_singular_damped_hessian_is_an_error(problem):
    solver = exact(problem, "full")
    with pytest.raises(SolverError, match="singular"):
        solver.solve(problem[2], -float(solver.eigenvalues[3]))


def test_exact_refuses_models_above_max_parameters(problem):
    obj, theta, _ = problem
    with pytest.raises(SolverError, match="max_parameters"):
        make_solver("exact", max_parameters=10).fit(obj, theta)


def test_registry_and_option_errors():
    assert set(SOLVERS) == {"exact", "cg", "lissa", "arnoldi", "kfac", "ekfac", "identity"}
    with pytest.raises(ValueError, match="unknown"):
        make_solver("shampoo")
    with pytest.raises(ValueError, match="hessian"):
        make_solver("cg", hessian="diagonal")


@pytest.mark.parametrize("name", sorted(set(SOLVERS) - {"identity"}))  # identity: tests/test_kfac.py
def test_every_solver_records_time_iterations_and_eigenvalues(problem, name):
    obj, theta, rhs = problem
    solver = make_solver(name, hessian="gauss_newton", depth=50, iterations=10, rank=5).fit(obj, theta)
    solver.solve(rhs, 0.1)
    d = solver.diagnostics
    assert d["hessian"] == "gauss_newton" and d["method"] == name
    assert d["fit_seconds"] >= 0 and d["solve_seconds"] >= 0 and d["iterations"] >= 1
    eigen = [d.get(k) for k in ("eigenvalue_max", "eigenvalue_max_estimate") if k in d]
    assert eigen and all(math.isfinite(e) and e > 0 for e in eigen)
