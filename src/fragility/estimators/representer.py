"""Representer points (Yeh, Kim, Yen & Ravikumar, NeurIPS 2018).

With f_i the input of the model's last linear layer at θ* (the bias taken as a constant-1 feature
with `bias: true`, so f̃_i = [f_i, 1]; weights only, the bias fixed at 0, with `bias: false`) and
h*_i the model's own outputs, the layer Θ (f̃ → Φ = Θᵀf̃) is re-fitted by

    min_Θ  (1/n) Σ_i D(Θᵀf̃_i, h*_i) + λ‖Θ‖²,     λ = `l2`,

D the Task's Bregman divergence in output space (`Task.bregman`): for softmax cross-entropy
KL(softmax(h*) ‖ softmax(Φ)), the cross-entropy against the model's softmax predictions that the
published code fits (its gradient softmax(Φ) − softmax(h*)); for squared error ½‖Φ − h*‖². At the
optimum (convex: L-BFGS from the model's layer, to `tol`)

    Θ = Σ_i f̃_i α_iᵀ,  α_i = −(1/(2λn)) ∂D_i/∂Φ_i,   so   Φ(x_t) = Σ_i α_i (f̃_iᵀ f̃_t),

the representer theorem; the relative error of this decomposition on the test points is in the
diagnostics (`decomposition_relative_error`). Removing z_i removes its term from Φ_t, so to first
order the measurement m_t (the test loss by default) changes by

    Δ̂_i = −(∂m_t/∂Φ_t)ᵀ α_i (f̃_iᵀ f̃_t)        (∂m_t/∂Φ_t at the fitted Φ_t; Δ̂ > 0: removal
                                                raises the test loss, the project's sign).

The representer value of the test point's class, α_{i,c}(f̃_iᵀ f̃_t) with c its label (what the
paper ranks by), is the table's extra column `representer_value` for classification tasks, not Δ̂:
for cross-entropy Δ̂_i = representer value − p_tᵀα_i (f̃_iᵀf̃_t). A model whose last parameterised
layer is not an nn.Linear, or whose output is not that layer's output, is refused.

Options: `l2` (λ, default 0.003, the published code's), `bias` (default true), `max_iterations`
(L-BFGS iterations, default 1000), `tol` (stop when ‖∇‖ of the objective ≤ tol, default 1e-10).
"""

from __future__ import annotations

import time

import torch

from ..engine.objective import _chunks
from .base import Context, Estimator, EstimatorScores, RequirementError, last_linear_layer


def last_layer_features(model, layer, x: torch.Tensor, chunk_size: int):
    """(inputs of `layer` [n, d], model outputs [n, C]) for the rows of x, the model in eval mode;
    ValueError if the model's output is not the layer's output."""
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append((inputs[0], output)))
    features, outputs = [], []
    try:
        with torch.no_grad():
            for rows in _chunks(len(x), chunk_size):
                captured.clear()
                out = model(x[rows])
                if len(captured) != 1 or captured[0][1].shape != out.shape or not torch.equal(captured[0][1], out):
                    raise ValueError("its output is not the output of its last linear layer")
                features.append(captured[0][0].reshape(len(out), -1))
                outputs.append(out)
    finally:
        handle.remove()
    return torch.cat(features), torch.cat(outputs)


class RepresenterPoints(Estimator):
    """`representer`: Δ̂_i = −(∂m_t/∂Φ_t)ᵀ α_i (f̃_iᵀ f̃_t) after the L2-regularised fine-tune of
    the last linear layer (see the module docstring for the formula, sign and options)."""

    name = "representer"
    requires = ("last_linear_layer",)
    notes = ('the last layer refitted with an L2 penalty, Φ_t = Σ_i α_i f_iᵀf_t (Yeh et al. 2018)',
             'only the last layer and a refit model: blind to what earlier layers learn from z_i')

    def __init__(self, l2: float = 0.003, bias: bool = True, max_iterations: int = 1000, tol: float = 1e-10):
        super().__init__()
        if not l2 > 0:
            raise ValueError(f"representer: l2 must be > 0, got {l2}")
        self.l2, self.bias, self.max_iterations, self.tol = float(l2), bool(bias), int(max_iterations), float(tol)

    def _features(self, x):
        c = self.context
        f, out = last_layer_features(c.net.model, self.layer, x, c.chunk_size)
        f = f.to(torch.float64)
        if self.bias:
            f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1)
        return f, out.to(torch.float64)

    def objective(self, weights, f, targets):
        """(1/n) Σ D(Θᵀf̃_i, h*_i) + λ‖Θ‖²."""
        return self.task.bregman(f @ weights, targets).mean() + self.l2 * weights.pow(2).sum()

    def fit(self, context: Context) -> "RepresenterPoints":
        super().fit(context)
        started = time.perf_counter()
        self.layer = last_linear_layer(context.net.model)
        if self.layer is None:
            raise RequirementError(f"{context.cell or 'this cell'}: the estimator 'representer' requires a model whose last "
                                   "parameterised layer is an nn.Linear")
        self.task = context.task
        context.net.load_into_model(context.theta)
        context.net.model.eval()
        try:
            self.f_train, targets = self._features(context.x_train)
        except ValueError as err:
            raise RequirementError(f"{context.cell or 'this cell'}: the estimator 'representer' needs the model's output to "
                                   f"be its last linear layer's output, and {err}") from None
        start = self.layer.weight.detach().to(torch.float64).T
        if self.bias:
            bias = (self.layer.bias.detach().to(torch.float64) if self.layer.bias is not None
                    else torch.zeros(start.shape[1], dtype=torch.float64, device=start.device))
            start = torch.cat([start, bias[None]], dim=0)
        weights = start.contiguous().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([weights], lr=1, max_iter=self.max_iterations, tolerance_grad=self.tol,
                                      tolerance_change=0.0, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            value = self.objective(weights, self.f_train, targets)
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(closure)
            value = self.objective(weights, self.f_train, targets)
            (gradient,) = torch.autograd.grad(value, weights)
            phi = (self.f_train @ weights).detach().requires_grad_(True)
            (d_phi,) = torch.autograd.grad(self.task.bregman(phi, targets).sum(), phi)
        self.weights = weights.detach()
        n = len(self.f_train)
        self.alpha = -d_phi / (2.0 * self.l2 * n)  # [n, C]
        self.diagnostics = {
            "method": self.name, "l2": self.l2, "bias": self.bias, "fine_tune_objective": float(value.detach()),
            "fine_tune_gradient_norm": float(gradient.norm()),
            "fine_tune_iterations": int(optimizer.state[optimizer._params[0]]["n_iter"]),
            "train_output_max_abs_change": float((phi.detach() - targets).abs().max()),
            "representer_norm_error": float((self.f_train.T @ self.alpha - self.weights).norm() / self.weights.norm()),
            "fit_seconds": time.perf_counter() - started,
        }
        return self

    def decomposition(self, x_test):
        """(Φ_t = Θᵀf̃_t of the fitted layer [T, C], Σ_i α_i (f̃_iᵀ f̃_t) [T, C], kernel f̃_tᵀf̃_i [T, n])."""
        f_test, _ = self._features(x_test)
        kernel = f_test @ self.f_train.T
        return f_test @ self.weights, kernel @ self.alpha, kernel

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        c: Context = self.context
        started = time.perf_counter()
        idx = torch.tensor([tp["index"] for tp in test_points], device=c.x_test.device)
        phi, represented, kernel = self.decomposition(c.x_test[idx])
        y_test = c.y_test[idx]
        with torch.enable_grad():
            phi_var = phi.clone().requires_grad_(True)
            (d_measure,) = torch.autograd.grad(self.task.measurement(phi_var, y_test).sum(), phi_var)
        predicted = -(d_measure @ self.alpha.T) * kernel  # [T, n]
        columns = {}
        if self.task.targets_are_labels:
            columns["representer_value"] = self.alpha.T[y_test.long()] * kernel
        errors = ((represented - phi).norm(dim=1) / phi.norm(dim=1).clamp_min(1e-300)).tolist()
        self.diagnostics["decomposition_relative_error"] = max(errors)
        seconds = time.perf_counter() - started
        outcomes = [{"test_point": tp["name"], "status": "ok", "decomposition_relative_error": errors[t],
                     "seconds_all_points": seconds} for t, tp in enumerate(test_points)]
        dtype = c.theta.dtype
        return EstimatorScores(predicted.to(dtype), ["ok"] * len(test_points), outcomes,
                               columns={k: v.to(dtype) for k, v in columns.items()})
