"""Influence of removing each training point on the loss at chosen test points.

For test point z_t with s_t = (H + δI)⁻¹ ∇ℓ(z_t) (no decay in the test gradient):

    predicted_loss_change(z_i)  = Δ̂_i  = +(1/n) ∇ℓ(z_i) · s_t
    predicted_param_change_norm(z_i) = ‖Δθ̂_i‖ = (1/n) ‖(H + δI)⁻¹ ∇ℓ(z_i)‖

(removing z_i is up-weighting it by ε = −1/n; see the package docstring for the convention).
"""

from __future__ import annotations

import math
import time

import pandas as pd
import torch

from .ihvp import InverseHessianSolver
from .flat import FlatModel
from .objective import per_sample_gradients, directional_derivatives


def test_gradients(net: FlatModel, theta, x_test, y_test) -> torch.Tensor:
    """∇ℓ(z_t, θ) for each test row, [T, p], without the decay term."""
    return per_sample_gradients(net, theta, x_test, y_test, measure=True)


def default_scoring_chunk(device: torch.device, chunk_size: int) -> int:
    """Rows per scoring pass: 128 on CPU, where a chunk's activations and tangents then stay in
    cache (small CNN, 1 thread: 133 µs per image at 128 rows, 177 at 500, 286 at 1,000;
    benchmarks/README.md); on CUDA the larger `chunk_size`, which fills the device better."""
    return chunk_size if device.type == "cuda" else min(chunk_size, 128)


def influence_table(
    net: FlatModel,
    theta: torch.Tensor,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    test_points: list[dict],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    solver: InverseHessianSolver,
    damping: float,
    chunk_size: int = 1024,
    param_change_norms: bool = True,
    max_gradient_matrix_bytes: float = 2e9,
    scoring_chunk_size: int | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """One row per (test point, training point): Δ̂, ‖Δθ̂‖ and ‖∇ℓ(z_i)‖.

    `test_points` are dicts with `name` and `index` (into the test set). Returns the table and a
    per-test-point list of solver outcomes. Training rows are scored `scoring_chunk_size` at a
    time (default: `default_scoring_chunk`).
    """
    n = len(y_train)
    idx = torch.tensor([tp["index"] for tp in test_points], device=x_test.device)
    started = time.perf_counter()
    g_test = test_gradients(net, theta, x_test[idx], y_test[idx])
    result = solver.solve(g_test, damping)
    directions = torch.nan_to_num(result.solutions, nan=0.0)
    rows = scoring_chunk_size or default_scoring_chunk(x_train.device, chunk_size)
    dots = directional_derivatives(net, theta, x_train, y_train, directions, chunk_size=rows)
    predicted = dots / n
    for t, status in enumerate(result.status):
        if status != "ok":
            predicted[t] = math.nan

    norms = torch.full((n,), math.nan, dtype=theta.dtype)
    grad_norms = torch.full((n,), math.nan, dtype=theta.dtype)
    # per-sample gradients are only formed when the n × p matrix is affordable
    if n * theta.numel() * theta.element_size() <= max_gradient_matrix_bytes:
        grads = per_sample_gradients(net, theta, x_train, y_train, chunk_size=min(rows, 512))
        grad_norms = grads.norm(dim=1).cpu()
        if param_change_norms and solver.supports_norms:
            norms = (solver.solution_norms(grads, damping) / n).cpu()
    frames = []
    outcomes = []
    for t, tp in enumerate(test_points):
        frames.append(
            pd.DataFrame(
                {
                    "test_point": tp["name"],
                    "test_index": int(tp["index"]),
                    "train_index": range(n),
                    "predicted_loss_change": predicted[t].detach().cpu().double().numpy(),
                    "predicted_param_change_norm": norms.double().numpy(),
                    "train_grad_norm": grad_norms.double().numpy(),
                    "status": result.status[t],
                }
            )
        )
        outcome = {"test_point": tp["name"], "status": result.status[t], "test_grad_norm": float(g_test[t].norm())}
        if result.details:
            outcome.update({k: v for k, v in result.details[t].items() if k != "status"})
        outcomes.append(outcome)
    for o in outcomes:
        o["seconds_all_points"] = time.perf_counter() - started
    return pd.concat(frames, ignore_index=True), outcomes
