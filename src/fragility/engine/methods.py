"""What the engine offers, by config name, in tables without torch (the DAG is built from them):
the built-in tasks (`task.py`), and the built-in estimators (the inverse-Hessian methods, and
those of `estimators.registry.BEYOND_INVERSE_HESSIAN`) with the options each reads, so
that building the DAG can drop the options a method does not read
(`estimators.registry.method_settings`), and what each requires (`estimators.base.REQUIREMENTS`).
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
    # the estimators beyond the inverse Hessian (estimators/BEYOND_INVERSE_HESSIAN)
    "grad_cosine": ("chunk_bytes",),
    "representer": ("l2", "bias", "max_iterations", "tol"),
    "tracin": ("chunk_bytes",),
    "trak": ("projection_dim", "projection", "seed", "l2", "models", "chunk_bytes"),
}


# every method scores by forward mode (objective.directional_derivatives); all but the
# Kronecker and identity ones multiply by the Hessian
REQUIRES: dict[str, tuple[str, ...]] = {
    **{m: ("second_derivatives", "forward_mode") for m in ("exact", "cg", "lissa", "arnoldi")},
    **{m: ("forward_mode",) for m in ("kfac", "ekfac", "identity")},
    "grad_cosine": (),
    "representer": ("last_linear_layer",),
    "tracin": ("checkpoints",),
    "trak": (),  # checkpoints with `models: checkpoints` (checked at DAG build, study/grid.py)
}
