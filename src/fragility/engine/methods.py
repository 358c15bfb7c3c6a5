"""What the engine offers, by config name, in tables without torch (the DAG is built from them):
the built-in tasks (`task.py`), and the inverse-Hessian methods with the options each reads, so
that building the DAG can drop the options a method does not read
(`estimators.registry.method_settings`), and what each requires (`estimators.base.REQUIREMENTS`).
The estimators that are classes of their own declare both in their class (estimators/registry.py).
The solver classes (`ihvp.py`) take their `options_read` from here."""

from __future__ import annotations

TASK_NAMES = ("cross_entropy", "mse")

OPTIONS_READ: dict[str, tuple[str, ...]] = {
    "exact": ("hessian", "max_parameters", "block"),
    "cg": ("hessian", "dense_max_parameters", "tol", "max_iterations"),
    "lissa": ("hessian", "dense_max_parameters", "depth", "scale", "scale_factor", "repeats", "batch_size",
              "growth_limit", "power_iterations", "seed"),
    "arnoldi": ("hessian", "dense_max_parameters", "iterations", "rank", "tol", "seed"),
    "kfac": ("hessian", "output_hessian", "samples", "uncovered", "fit_chunk_size", "batched_backward", "seed"),
    "ekfac": ("hessian", "output_hessian", "samples", "uncovered", "fit_chunk_size", "batched_backward",
              "correction_chunk_elements", "seed"),
    "identity": (),
}


# all but the Kronecker and identity ones multiply by the Hessian or the Gauss-Newton matrix, both
# by double backward; none needs forward mode: scoring takes jvp where the model has it and
# reverse-mode per-sample gradients where not (objective.directional_derivatives)
REQUIRES: dict[str, tuple[str, ...]] = {
    **{m: ("second_derivatives",) for m in ("exact", "cg", "lissa", "arnoldi")},
    **{m: () for m in ("kfac", "ekfac", "identity")},
}

# what each computes and why it might fail: one short line each, in the report (estimators/registry.notes)
NOTES: dict[str, tuple[str, str]] = {
    'exact': ('Δ̂ = (1/n) ∇ℓ_iᵀ (H + δI)⁻¹ ∇ℓ_t with the Hessian formed and solved exactly',
            'H of a non-convex net is indefinite at θ*: influence answers a proximal question, not re-training'),
    'cg': ('the same Δ̂, (H + δI)⁻¹∇ℓ_t by conjugate gradients on Hessian-vector products',
         'stops early or diverges where H + δI is not positive definite'),
    'lissa': ('the same Δ̂, the inverse by the truncated Neumann series of LiSSA',
            "diverges when its scale is below H's top eigenvalue; truncation and sampling bias it"),
    'arnoldi': ('the same Δ̂, H restricted to its top Arnoldi eigenvectors',
              'drops the small eigenvalues, which dominate the inverse'),
    'kfac': ('the same Δ̂ with the Gauss-Newton matrix as a Kronecker product per layer (K-FAC)',
           'the layer-wise Kronecker factorisation ignores cross-layer and within-layer correlations'),
    'ekfac': ('K-FAC with eigenvalues refitted in its Kronecker eigenbasis (EK-FAC)',
            'still block-diagonal Gauss-Newton: no negative curvature, no cross-layer terms'),
    'identity': ('Δ̂ = (1/n) ∇ℓ_iᵀ ∇ℓ_t, the gradient dot product (H replaced by I)',
               'ignores curvature: high-curvature directions are over-weighted'),
}
