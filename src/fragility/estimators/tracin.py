"""TracIn (Pruthi, Liu, Kale & Sundararajan, NeurIPS 2020), the checkpoint form TracInCP:

    Δ̂_i = Σ_k η_k ∇ℓ(z_i; θ_k) · ∇m(z_t; θ_k)

over the C checkpoints θ_k kept while θ* was trained (`train.keep_checkpoints: C`, evenly spaced,
the last θ* itself; study/pipeline.py `checkpoint_steps`), η_k the learning rate of the step that
followed checkpoint k; ∇m the gradient of the Task's measurement at the test point (the test loss
by default), without the decay term, each checkpoint's model in eval mode.

Sign: a gradient step on z_i moves θ by −(η/b)∇ℓ(z_i) and changes the test loss by
−(η/b)∇ℓ(z_i)·∇m(z_t) to first order, so a positive product means z_i lowered the test loss, and
removing it raises it: Δ̂ > 0, the project's sign. Scale: TracIn sums η_k over checkpoints and
leaves out the 1/b of a step's mean and the steps between checkpoints, so Δ̂ is a loss change only
up to one factor shared by every training point (with one checkpoint θ*, η = 1, it is n times
`identity`'s Δ̂); correlations do not see it.

The derivation assumes plain (S)GD steps, θ_{k+1} = θ_k − η_k ∇. Under Adam (or momentum) a step is
−η_k P_k m_k, a preconditioned running average of past gradients, so Σ_k η_k ∇ℓ(z_i)·∇m(z_t) is
no longer the first-order trace of z_i's contribution along the parameter path: it is a
learning-rate-weighted gradient similarity over checkpoints, a heuristic, not a path integral.

Options: `chunk_bytes` (default 2²⁷), the most bytes of one block of per-sample training gradients.
"""

from __future__ import annotations

import math
import time

from .base import Context, Estimator, EstimatorScores, RequirementError
from .similarity import gradient_products, measurement_gradients


class TracIn(Estimator):
    """`tracin`: Δ̂_i = Σ_k η_k ∇ℓ(z_i; θ_k)·∇m(z_t; θ_k) over the run's checkpoints (module
    docstring: formula, sign, scale, and what it means under Adam)."""

    name = "tracin"
    requires = ("checkpoints",)
    notes = ('Σ_k η_k ∇ℓ_i(θ_k)·∇ℓ_t(θ_k) over kept checkpoints (Pruthi et al. 2020)',
             'assumes SGD steps; under Adam or momentum, or with few checkpoints, it is a heuristic')

    def __init__(self, chunk_bytes: float = 2**27):
        super().__init__()
        self.chunk_bytes = float(chunk_bytes)

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        c: Context = self.context
        if not c.models:
            raise RequirementError(f"{c.cell or 'this cell'}: the estimator 'tracin' requires checkpoints of the training run "
                                   "(train.keep_checkpoints)")
        started = time.perf_counter()
        total = None
        for model in c.models:
            lr = float(model.learning_rate)
            if not math.isfinite(lr):
                raise RequirementError(f"{c.cell or 'this cell'}: the estimator 'tracin' needs the learning rate of checkpoint "
                                       f"'{model.label}', and it was not recorded")
            g_test = measurement_gradients(model.net, model.theta, c.x_test, c.y_test, test_points)
            dots, _ = gradient_products(model.net, model.theta, c.x_train, c.y_train, g_test, self.chunk_bytes)
            total = lr * dots if total is None else total + lr * dots
        seconds = time.perf_counter() - started
        outcomes = [{"test_point": tp["name"], "status": "ok", "seconds_all_points": seconds} for tp in test_points]
        self.diagnostics = {"method": self.name, "checkpoints": [m.label for m in c.models],
                            "learning_rates": [float(m.learning_rate) for m in c.models]}
        return EstimatorScores(total.to(c.theta.dtype), ["ok"] * len(test_points), outcomes)
