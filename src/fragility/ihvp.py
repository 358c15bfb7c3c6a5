"""Inverse-Hessian-vector products: s = (H + δI)⁻¹ v for the training objective's Hessian H.

One small class per method, one interface:

    solver = make_solver(name, **options)
    solver.fit(objective, theta)             # once per trained model
    result = solver.solve(V, damping)        # V: [T, p] right-hand sides → result.solutions [T, p]

`result.status[t]` is "ok" or a reason ("diverged", "not_converged", ...); a solution that is not
"ok" is NaN, never a number. `solver.diagnostics` records what was measured (eigenvalues,
iterations, residuals, time).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .objective import Objective


class SolverError(RuntimeError):
    pass


@dataclass
class SolveResult:
    solutions: torch.Tensor  # [T, p]; rows whose status is not "ok" are NaN
    status: list[str]
    details: list[dict] = field(default_factory=list)


class InverseHessianSolver:
    name = "base"
    supports_norms = False  # can it return ‖(H+δI)⁻¹ g_i‖ for many g_i cheaply?

    def __init__(self, **options):
        self.options = options
        self.diagnostics: dict = {"method": self.name}

    def fit(self, objective: Objective, theta: torch.Tensor) -> "InverseHessianSolver":
        self.objective, self.theta = objective, theta
        return self

    def solve(self, vectors: torch.Tensor, damping: float) -> SolveResult:
        raise NotImplementedError


def top_eigenvalue(hvp, p: int, like: torch.Tensor, iterations: int = 100, tol: float = 1e-6, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue of H by power iteration on v ↦ Hv."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(p, generator=gen, dtype=like.dtype).to(like.device)
    v /= v.norm()
    value = 0.0
    for _ in range(iterations):
        hv = hvp(v)
        new_value = float(v @ hv)
        norm = hv.norm()
        if norm == 0 or not torch.isfinite(norm):
            return new_value
        v = hv / norm
        if abs(new_value - value) <= tol * max(1.0, abs(new_value)):
            return new_value
        value = new_value
    return value


class ExactSolver(InverseHessianSolver):
    """H = Q Λ Qᵀ formed and eigendecomposed once (float64); then for any damping δ

        (H + δI)⁻¹ v = Q (Λ + δ)⁻¹ Qᵀ v.

    Affordable up to a few ten thousand parameters (`max_parameters`).
    """

    name = "exact"
    supports_norms = True

    def fit(self, objective, theta):
        super().fit(objective, theta)
        p = theta.numel()
        limit = int(self.options.get("max_parameters", 20000))
        if p > limit:
            raise SolverError(f"exact Hessian: model has {p} parameters > max_parameters={limit}; use cg, lissa or arnoldi")
        start = time.perf_counter()
        hessian = objective.hessian(theta, block=int(self.options.get("block", 256))).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors
        self.diagnostics.update(
            num_parameters=p,
            eigenvalue_min=float(eigenvalues[0]),
            eigenvalue_max=float(eigenvalues[-1]),
            top_eigenvalue=float(eigenvalues.abs().max()),
            negative_eigenvalues=int((eigenvalues < 0).sum()),
            fit_seconds=time.perf_counter() - start,
        )
        return self

    def _inverse_spectrum(self, damping):
        shifted = self.eigenvalues + damping
        if (shifted.abs() < 1e-12).any():
            raise SolverError(f"H + {damping}·I is singular; increase the damping")
        return 1.0 / shifted

    def solve(self, vectors, damping):
        inv = self._inverse_spectrum(damping)
        q = self.eigenvectors
        sol = ((vectors.double() @ q) * inv) @ q.T
        self.diagnostics.update(damped_eigenvalue_min=float(self.eigenvalues[0] + damping),
                                damped_positive_definite=bool(self.eigenvalues[0] + damping > 0))
        return SolveResult(sol.to(vectors.dtype), ["ok"] * len(vectors))

    def solution_norms(self, vectors, damping) -> torch.Tensor:
        """‖(H + δI)⁻¹ g‖ for each row g of `vectors` (= ‖(Λ+δ)⁻¹ Qᵀ g‖)."""
        inv = self._inverse_spectrum(damping)
        return ((vectors.double() @ self.eigenvectors) * inv).norm(dim=1).to(vectors.dtype)


class ConjugateGradientSolver(InverseHessianSolver):
    """Solves (H + δI) s = v by conjugate gradients with Hessian-vector products only.

    Stops when ‖r‖ ≤ tol·‖v‖ or after `max_iterations`; stops early with status
    "negative_curvature" when pᵀ(H+δI)p ≤ 0 (CG needs a positive definite system).
    """

    name = "cg"

    def solve(self, vectors, damping):
        tol = float(self.options.get("tol", 1e-8))
        max_iter = int(self.options.get("max_iterations", 1000))
        obj, theta = self.objective, self.theta
        out, status, details = [], [], []
        for v in vectors:
            x = torch.zeros_like(v)
            r = v.clone()
            p = r.clone()
            rs = r @ r
            v_norm = v.norm()
            state, it = "not_converged", 0
            for it in range(1, max_iter + 1):
                ap = obj.hvp(theta, p) + damping * p
                curvature = p @ ap
                if curvature <= 0:
                    state = "negative_curvature"
                    break
                alpha = rs / curvature
                x = x + alpha * p
                r = r - alpha * ap
                rs_new = r @ r
                if rs_new.sqrt() <= tol * v_norm:
                    state = "ok"
                    break
                p = r + (rs_new / rs) * p
                rs = rs_new
            residual = float((r.norm() / v_norm) if v_norm > 0 else 0.0)
            details.append({"iterations": it, "relative_residual": residual, "status": state})
            status.append(state)
            out.append(x if state == "ok" else torch.full_like(x, math.nan))
        self.diagnostics.update(solves=details)
        return SolveResult(torch.stack(out), status, details)


class LissaSolver(InverseHessianSolver):
    """LiSSA (Agarwal et al. 2017), as used by Koh & Liang:

        h_0 = v,   h_j = v + (I − (H̃_j + δI)/σ) h_{j−1},   (H + δI)⁻¹ v ≈ h_J / σ,

    with H̃_j the Hessian of the objective on a random minibatch (`batch_size`; null = full batch),
    depth J, scale σ (a number, or `auto` = `scale_factor`·|λ_max(H + δI)| by power iteration),
    averaged over `repeats` runs. It converges only if σ > λ_max(H + δI): an iterate that turns
    non-finite or grows past `divergence_factor`·depth·‖v‖ is reported "diverged", never returned.
    """

    name = "lissa"

    def solve(self, vectors, damping):
        depth = int(self.options.get("depth", 1000))
        scale_option = self.options.get("scale", "auto")
        repeats = int(self.options.get("repeats", 1))
        batch_size = self.options.get("batch_size")
        blowup = float(self.options.get("divergence_factor", 1e6))
        seed = int(self.options.get("seed", 0))
        obj, theta = self.objective, self.theta
        n = obj.n
        gen = torch.Generator(device="cpu").manual_seed(seed)
        top = top_eigenvalue(lambda u: obj.hvp(theta, u) + damping * u, theta.numel(), theta,
                             iterations=int(self.options.get("power_iterations", 50)))
        # "auto": σ = scale_factor · |λ_max(H + δI)| from power iteration (a safe margin)
        scale = float(self.options.get("scale_factor", 1.5)) * abs(top) if scale_option == "auto" else float(scale_option)
        self.diagnostics.update(top_eigenvalue_damped=top, scale=scale, scale_exceeds_top_eigenvalue=bool(scale > abs(top)),
                                depth=depth, repeats=repeats)
        out, status, details = [], [], []
        for v in vectors:
            estimates, state, last_change = [], "ok", math.nan
            for _ in range(repeats):
                h = v.clone()
                for j in range(depth):
                    rows = None
                    if batch_size and batch_size < n:
                        rows = torch.randint(0, n, (int(batch_size),), generator=gen).to(v.device)
                    new_h = v + h - (obj.hvp(theta, h, rows) + damping * h) / scale
                    last_change = float((new_h - h).norm() / new_h.norm().clamp_min(1e-30))
                    h = new_h
                    if not torch.isfinite(h).all() or h.norm() > blowup * max(v.norm(), 1e-30) * max(depth, 1):
                        state = "diverged"
                        break
                if state != "ok":
                    break
                estimates.append(h / scale)
            details.append({"status": state, "last_relative_change": last_change})
            status.append(state)
            out.append(torch.stack(estimates).mean(0) if state == "ok" else torch.full_like(v, math.nan))
        self.diagnostics.update(solves=details)
        return SolveResult(torch.stack(out), status, details)


SOLVERS: dict[str, type[InverseHessianSolver]] = {
    "exact": ExactSolver,
    "cg": ConjugateGradientSolver,
    "lissa": LissaSolver,
}


def make_solver(name: str, **options) -> InverseHessianSolver:
    """Look a solver up by its config name; `options` are its config block."""
    if name not in SOLVERS:
        raise ValueError(f"influence method '{name}' is unknown; known: {sorted(SOLVERS)}")
    return SOLVERS[name](**options)
