"""The proximal Bregman response function (PBRF; Bae, Ng, Lo, Ghassemi & Grosse, 2022).

For removing the set U of training points (one point for leave-one-out), starting from θ*,

    θ_PBRF = argmin_θ  (1/n) Σ_{i=1..n} D(h(θ, x_i), h(θ*, x_i))  +  ε Σ_{j∈U} ℓ(z_j, θ)
                        + (λ_p/2) ‖θ − θ*‖²,          ε = −s/n,

with D the Bregman divergence of the loss in output space (the Task's `bregman`: for softmax
cross-entropy KL(softmax(h*) ‖ softmax(h)), for squared error ½‖h − h*‖²), the sum over all n
points (U included), and one proximal term λ_p = λ + δ: the weight decay λ of training plus the
damping δ of the influence estimate it is compared with. Every term is ≥ 0 at ε = 0 and 0 at θ*,
so θ* is the optimum when nothing is removed (PBRF has no drift by construction). To second order
around θ*, D ≈ ½ Δθᵀ J_iᵀ H_out,i J_i Δθ, so for small s

    θ_PBRF − θ* ≈ (s/n) (G + δI)⁻¹ Σ_{j∈U} ∇ℓ(z_j),    G = (1/n) Σ J_iᵀ H_out,i J_i + λI,

and Δ_PBRF / s = (ℓ(z_t; θ_PBRF) − ℓ(z_t; θ*)) / s → the Gauss-Newton influence estimate with damping
δ. The model is evaluated in eval mode (BatchNorm on running statistics), as influence functions
see it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import torch
from torch.func import vmap

from .flat import FlatModel


@dataclass
class ProximalBregman:
    """The PBRF terms of k copies: reference outputs h(θ*, x_i) of every training row [n, C], the
    anchor θ* [p], λ_p, and per copy the rows it removes, padded to r per copy (inputs [k, r, ...],
    targets [k, r]) with the weight ε it gives each, [k, r] (−s/n, or 0 for padding)."""

    reference_outputs: torch.Tensor
    anchor: torch.Tensor
    proximal: float
    removal_x: torch.Tensor
    removal_y: torch.Tensor
    removal_weights: torch.Tensor

    def copies(self, part: slice) -> "ProximalBregman":
        return replace(self, removal_x=self.removal_x[part], removal_y=self.removal_y[part],
                       removal_weights=self.removal_weights[part])

    def removal(self, c: int):
        """Copy c's removal terms (inputs, targets, weights), as `copy_objective` takes them."""
        return self.removal_x[c], self.removal_y[c], self.removal_weights[c]

    def copy_objective(self, net: FlatModel, theta, buffers, xb, rows, removal):
        """One copy's objective on the minibatch `rows` of the training set (None: all rows):
        (1/m) Σ_b D(h(θ, x_b), h*_b) + Σ_j ε_cj ℓ(z_j, θ) + (λ_p/2)‖θ − θ*‖², with
        `removal` = (inputs, targets, ε) of the copy's removed rows."""
        removal_x, removal_y, weights = removal
        reference = self.reference_outputs if rows is None else self.reference_outputs[rows]
        divergence = net.task.bregman(net.logits(theta, xb, buffers), reference).mean()
        removed = net.task.per_sample_loss(net.logits(theta, removal_x, buffers), removal_y)
        return divergence + (weights * removed).sum() + 0.5 * self.proximal * (theta - self.anchor).pow(2).sum()

    def fingerprint(self) -> str:
        digest = hashlib.sha256(repr(float(self.proximal)).encode())
        flat = self.reference_outputs.detach().reshape(-1)
        for tensor in (self.anchor, self.removal_weights, self.removal_y, flat[:: max(1, flat.numel() // 4096)]):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def removal_terms(net: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, removed: list[list[int]],
                  epsilon_scale: float, proximal: float) -> ProximalBregman:
    """The PBRF terms for copies that remove `removed[c]` (lists of training indices; [] removes
    nothing: ε = 0, the optimum is θ*), each removed point weighted ε = −s/n."""
    n = len(y)
    for group in removed:
        for i in group:
            if not 0 <= int(i) < n:
                raise ValueError(f"training index {i} out of range (n = {n})")
    width = max([len(group) for group in removed] + [1])
    index = torch.zeros(len(removed), width, dtype=torch.long)
    weights = torch.zeros(len(removed), width, dtype=theta.dtype)
    for c, group in enumerate(removed):
        index[c, : len(group)] = torch.tensor([int(i) for i in group], dtype=torch.long)
        weights[c, : len(group)] = -float(epsilon_scale) / n
    index = index.to(x.device)
    with torch.no_grad():
        reference = net.logits(theta, x).detach()
    return ProximalBregman(reference, theta.detach(), float(proximal), x[index], y[index], weights.to(theta.device))


# L-BFGS settings tried in turn for one copy: for a net with hidden layers the objective with ε < 0
# can be unbounded below far from θ* (the outputs grow at least quadratically in θ and may outgrow a
# weak proximal term), so a line search
# that extrapolates can leave the basin of the local optimum; smaller fixed steps stay in it.
LBFGS_ATTEMPTS = (("strong_wolfe", 1.0), (None, 0.5), (None, 0.1))


def _lbfgs_copy(terms, net, x, start, weights, max_iterations, tolerance, history, line_search, lr):
    theta = torch.nn.Parameter(start.detach().clone())
    optimizer = torch.optim.LBFGS([theta], lr=lr, max_iter=int(max_iterations), history_size=history,
                                  tolerance_grad=tolerance, tolerance_change=0.0, line_search_fn=line_search)

    def closure():
        optimizer.zero_grad(set_to_none=True)
        value = terms.copy_objective(net, theta, net.buffers, x, None, weights)
        value.backward()
        return value

    optimizer.step(closure)
    value = closure()
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return theta.detach().clone(), float(value.detach()), float(theta.grad.norm()), iterations


def solve_lbfgs(net: FlatModel, x: torch.Tensor, terms: ProximalBregman, theta_init: torch.Tensor,
                max_iterations: int = 500, tolerance: float = 1e-10, history: int = 100, accept: float = 1e-5):
    """The PBRF optimum of k copies to convergence, full batch: L-BFGS on each copy in turn from
    `theta_init` [k, p] (strong-Wolfe line search, then smaller fixed steps if that run left the
    basin of θ*: a copy is accepted when finite with gradient norm ≤ `accept`). A copy no attempt
    solves gets NaN parameters. Returns (thetas [k, p], final objectives [k], gradient norms [k],
    iterations [k])."""
    net.model.eval()
    out, values, norms, iterations = [], [], [], []
    for c in range(len(theta_init)):
        weights = terms.removal(c)
        best = None
        for line_search, lr in LBFGS_ATTEMPTS:
            theta, value, norm, its = _lbfgs_copy(terms, net, x, theta_init[c], weights, max_iterations, tolerance,
                                                  history, line_search, lr)
            finite = math.isfinite(value) and math.isfinite(norm) and bool(torch.isfinite(theta).all())
            if finite and (best is None or norm < best[2]):
                best = (theta, value, norm, its)
            if finite and norm <= accept:
                break
        if best is None or best[2] > accept:
            best = (torch.full_like(theta_init[c], math.nan), math.nan, math.nan if best is None else best[2],
                    best[3] if best else 0)
        out.append(best[0])
        values.append(best[1])
        norms.append(best[2])
        iterations.append(best[3])
    return torch.stack(out), values, norms, iterations


def objective_gradient_norms(net: FlatModel, x: torch.Tensor, terms: ProximalBregman, thetas: torch.Tensor) -> list[float]:
    """‖∇ of each copy's full-batch PBRF objective‖ at `thetas` [k, p]: how far from converged."""
    net.model.eval()

    def one(theta, removal_x, removal_y, weights):
        return terms.copy_objective(net, theta, net.buffers, x, None, (removal_x, removal_y, weights))

    grads = vmap(torch.func.grad(one))(thetas.detach(), terms.removal_x, terms.removal_y, terms.removal_weights)
    return [float(g) for g in grads.norm(dim=1)]
