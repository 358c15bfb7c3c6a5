"""The inverse-Hessian family: the seven solvers of engine/ihvp.py and engine/kfac.py (exact, cg,
lissa, arnoldi, kfac, ekfac, identity) behind one estimator.

For test point z_t with s_t = (H + δI)⁻¹ ∇ℓ(z_t) (no decay in the test gradient):

    predicted_loss_change(z_i)  = Δ̂_i  = +(1/n) ∇ℓ(z_i)ᵀ (H + δI)⁻¹ ∇ℓ(z_t) = (1/n) ∇ℓ(z_i) · s_t
    predicted_param_change_norm(z_i) = ‖Δθ̂_i‖ = (1/n) ‖(H + δI)⁻¹ ∇ℓ(z_i)‖

(removing z_i is up-weighting it by ε = −1/n; see the package docstring for the convention).
"""

from __future__ import annotations

import math
import time

import torch

from ..engine.flat import FlatModel
from ..engine.ihvp import InverseHessianSolver
from ..engine.methods import REQUIRES
from ..engine.objective import Objective, directional_derivatives, per_sample_gradients
from ..engine.solvers import make_solver
from .base import Context, Estimator, EstimatorScores


def test_gradients(net: FlatModel, theta, x_test, y_test) -> torch.Tensor:
    """∇ℓ(z_t, θ) for each test row, [T, p], without the decay term."""
    return per_sample_gradients(net, theta, x_test, y_test, measure=True)


def default_scoring_chunk(device: torch.device, chunk_size: int) -> int:
    """Rows per scoring pass: 128 on CPU, where a chunk's activations and tangents then stay in
    cache (small CNN, 1 thread: 133 µs per image at 128 rows, 177 at 500, 286 at 1,000;
    benchmarks/README.md); on CUDA the larger `chunk_size`, which fills the device better."""
    return chunk_size if device.type == "cuda" else min(chunk_size, 128)


class InverseHessianEstimator(Estimator):
    """Δ̂_i = (1/n) ∇ℓ(z_i)ᵀ (H + δI)⁻¹ ∇ℓ(z_t), the inverse-Hessian-vector product by the solver
    `method` (engine/solvers.py) with its `options`; δ is the context's damping.

    With `param_change_norms`, ‖Δθ̂_i‖ = (1/n) ‖(H + δI)⁻¹ ∇ℓ(z_i)‖ where the solver computes it
    cheaply; ‖∇ℓ(z_i)‖ and ‖Δθ̂_i‖ only when the n × p gradient matrix stays under
    `max_gradient_matrix_bytes` (else NaN)."""

    name = "inverse_hessian"
    requires = ("second_derivatives",)

    def __init__(self, method: str, solver: InverseHessianSolver | None = None, param_change_norms: bool = True,
                 max_gradient_matrix_bytes: float = 2e9, **options):
        self.method, self.options, self.context = method, options, None
        self.requires = REQUIRES.get(method, type(self).requires)
        self.solver = solver if solver is not None else make_solver(method, **options)
        self.fitted = solver is not None  # a solver passed in is already fitted
        self.param_change_norms, self.max_gradient_matrix_bytes = param_change_norms, max_gradient_matrix_bytes

    def fit(self, context: Context) -> "InverseHessianEstimator":
        """Fit the solver on the training objective R(θ) = mean ℓ + (λ/2)‖θ‖² at θ*."""
        super().fit(context)
        if not self.fitted:
            c = context
            self.solver.fit(Objective(c.net, c.x_train, c.y_train, c.decay, chunk_size=c.chunk_size), c.theta)
            self.fitted = True
        return self

    @property
    def diagnostics(self) -> dict:
        """The solver's: method, eigenvalues or their estimates, iterations, seconds."""
        return self.solver.diagnostics

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        c, solver = self.context, self.solver
        net, theta, x_train, y_train, x_test = c.net, c.theta, c.x_train, c.y_train, c.x_test
        n = len(y_train)
        idx = torch.tensor([tp["index"] for tp in test_points], device=x_test.device)
        started = time.perf_counter()
        g_test = test_gradients(net, theta, x_test[idx], c.y_test[idx])
        result = solver.solve(g_test, c.damping)
        directions = torch.nan_to_num(result.solutions, nan=0.0)
        rows = c.scoring_chunk_size or default_scoring_chunk(x_train.device, c.chunk_size)
        dots = directional_derivatives(net, theta, x_train, y_train, directions, chunk_size=rows)
        predicted = dots / n
        for t, status in enumerate(result.status):
            if status != "ok":
                predicted[t] = math.nan

        norms = torch.full((n,), math.nan, dtype=theta.dtype)
        grad_norms = torch.full((n,), math.nan, dtype=theta.dtype)
        # per-sample gradients are only formed when the n × p matrix is affordable
        if n * theta.numel() * theta.element_size() <= self.max_gradient_matrix_bytes:
            grads = per_sample_gradients(net, theta, x_train, y_train, chunk_size=min(rows, 512))
            grad_norms = grads.norm(dim=1).cpu()
            if self.param_change_norms and solver.supports_norms:
                norms = (solver.solution_norms(grads, c.damping) / n).cpu()
        outcomes = []
        for t, tp in enumerate(test_points):
            outcome = {"test_point": tp["name"], "status": result.status[t], "test_grad_norm": float(g_test[t].norm())}
            if result.details:
                outcome.update({k: v for k, v in result.details[t].items() if k != "status"})
            outcomes.append(outcome)
        for o in outcomes:
            o["seconds_all_points"] = time.perf_counter() - started
        return EstimatorScores(predicted, list(result.status), outcomes, norms, grad_norms)


def influence_table(net: FlatModel, theta: torch.Tensor, x_train: torch.Tensor, y_train: torch.Tensor,
                    test_points: list[dict], x_test: torch.Tensor, y_test: torch.Tensor, solver: InverseHessianSolver,
                    damping: float, chunk_size: int = 1024, param_change_norms: bool = True,
                    max_gradient_matrix_bytes: float = 2e9, scoring_chunk_size: int | None = None):
    """(table, per-test-point outcomes) of an already fitted `solver` through the estimator: one
    row per (test point, training point) with Δ̂, ‖Δθ̂‖ and ‖∇ℓ(z_i)‖. The decay is the one the
    solver was fitted with."""
    context = Context(net, theta, x_train, y_train, x_test, y_test, decay=math.nan, damping=damping,
                      device=x_train.device, chunk_size=chunk_size, scoring_chunk_size=scoring_chunk_size)
    estimator = InverseHessianEstimator(solver.name, solver=solver, param_change_norms=param_change_norms,
                                        max_gradient_matrix_bytes=max_gradient_matrix_bytes).fit(context)
    scores = estimator.scores(test_points).checked()
    return scores.table(test_points), scores.outcomes(test_points)
