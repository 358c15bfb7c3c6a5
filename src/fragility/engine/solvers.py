"""The inverse-Hessian methods by config name (`method:`): exact, cg, lissa, arnoldi (ihvp.py),
kfac, ekfac and identity (kfac.py)."""

from __future__ import annotations

from .ihvp import ArnoldiSolver, ConjugateGradientSolver, ExactSolver, InverseHessianSolver, LissaSolver
from .kfac import EigenvalueCorrectedKroneckerSolver, IdentitySolver, KroneckerSolver

SOLVERS: dict[str, type[InverseHessianSolver]] = {
    "exact": ExactSolver,
    "cg": ConjugateGradientSolver,
    "lissa": LissaSolver,
    "arnoldi": ArnoldiSolver,
    "kfac": KroneckerSolver,
    "ekfac": EigenvalueCorrectedKroneckerSolver,
    "identity": IdentitySolver,
}


def make_solver(name: str, **options) -> InverseHessianSolver:
    """Look a solver up by its config name; `options` are its config block."""
    if name not in SOLVERS:
        raise ValueError(f"influence method '{name}' is unknown; known: {sorted(SOLVERS)}")
    return SOLVERS[name](**options)
