"""What the engine offers, by config name, in tables without torch (the DAG is built from them):
the built-in tasks (`task.py`), and the inverse-Hessian methods with the options each reads, so
that building the DAG can drop the options a method does not read (`method_settings`); the
solver classes (`ihvp.py`) take their `options_read` from here."""

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


def method_settings(name: str, settings: dict) -> dict:
    """An estimator's config block (`method` + options) less the options its method does not read:
    a block merged from a per-architecture override may carry another method's options."""
    method = settings.get("method", name)
    read = OPTIONS_READ.get(method, tuple(settings))
    return {k: v for k, v in settings.items() if k == "method" or k in read}
