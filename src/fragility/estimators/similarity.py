"""Gradient similarity (Charpiat, Girard, Felardos & Tarabalka, NeurIPS 2019: "input similarity
from the network's perspective") and the chunked gradient products it shares with TracIn.

    grad_cosine:  Δ̂_i = cos(∇ℓ(z_i; θ*), ∇m(z_t; θ*)) = g_i·g_t / (‖g_i‖ ‖g_t‖)

with g_t the gradient of the Task's measurement at the test point (the test loss by default), no
decay term, the model in eval mode, as for every other estimator. Sign: aligned gradients mean
that a step on z_i lowers the test loss, so removing z_i raises it: Δ̂ > 0, as for `identity`'s
gradient dot product (1/n) g_i·g_t, of which this is the normalised form. It is a similarity in
[−1, 1], not a loss change: its scale carries no meaning, only its order and sign.
"""

from __future__ import annotations

import math
import time

import torch

from ..engine.objective import _chunks, per_sample_gradients
from .base import Context, Estimator, EstimatorScores
from .inverse_hessian import test_gradients


def gradient_rows(p: int, element_size: int, chunk_bytes: float) -> int:
    """Training rows whose m × p gradient block fits in `chunk_bytes` (at least 1)."""
    return max(1, int(chunk_bytes // max(1, p * element_size)))


def gradient_products(net, theta, x, y, test_grads: torch.Tensor, chunk_bytes: float = 2**27):
    """(g_t · g_i for every test gradient [T, p] and training row i, [T, n]; ‖g_i‖, [n]) with
    g_i = ∇ℓ(z_i; θ), block by block of training rows: the n × p matrix is never formed, only
    blocks of at most `chunk_bytes`."""
    n = len(y)
    rows = gradient_rows(theta.numel(), theta.element_size(), chunk_bytes)
    dots, norms = [], []
    for block in _chunks(n, rows):
        grads = per_sample_gradients(net, theta, x[block], y[block], chunk_size=None)
        dots.append(test_grads @ grads.T)
        norms.append(grads.norm(dim=1))
    return torch.cat(dots, dim=1), torch.cat(norms)


def measurement_gradients(net, theta, x_test, y_test, test_points):
    """∇m(z_t; θ) of the Task's measurement at `test_points`, [T, p], without the decay term."""
    idx = torch.tensor([tp["index"] for tp in test_points], device=x_test.device)
    return test_gradients(net, theta, x_test[idx], y_test[idx])


class GradientCosine(Estimator):
    """`grad_cosine`: Δ̂_i = cos(∇ℓ(z_i; θ*), ∇m(z_t; θ*)) (see the module docstring).

    Options: `chunk_bytes` (default 2²⁷), the most bytes of one block of per-sample training
    gradients; ‖∇ℓ(z_i)‖ goes to the table's `train_grad_norm`. A test point whose gradient is
    zero has no direction: status "zero_test_gradient". A zero training gradient scores 0."""

    name = "grad_cosine"
    requires = ()
    notes = ('cos(∇ℓ_i, ∇ℓ_t) at θ* (Charpiat et al. 2019), a similarity, not a loss change',
             "normalising drops each gradient's magnitude, which influence scales with")

    def __init__(self, chunk_bytes: float = 2**27):
        super().__init__()
        self.chunk_bytes = float(chunk_bytes)

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        c: Context = self.context
        started = time.perf_counter()
        g_test = measurement_gradients(c.net, c.theta, c.x_test, c.y_test, test_points)
        dots, norms = gradient_products(c.net, c.theta, c.x_train, c.y_train, g_test, self.chunk_bytes)
        test_norms = g_test.norm(dim=1)
        cosine = dots / (test_norms[:, None] * norms[None, :]).clamp_min(torch.finfo(dots.dtype).tiny)
        status = ["ok" if float(s) > 0 else "zero_test_gradient" for s in test_norms]
        for t, s in enumerate(status):
            if s != "ok":
                cosine[t] = math.nan
        seconds = time.perf_counter() - started
        outcomes = [{"test_point": tp["name"], "status": status[t], "test_grad_norm": float(test_norms[t]),
                     "seconds_all_points": seconds} for t, tp in enumerate(test_points)]
        self.diagnostics = {"method": self.name, "num_parameters": c.theta.numel(),
                            "gradient_rows_per_block": gradient_rows(c.theta.numel(), c.theta.element_size(),
                                                                     self.chunk_bytes)}
        return EstimatorScores(cosine, status, outcomes, None, norms.cpu())
