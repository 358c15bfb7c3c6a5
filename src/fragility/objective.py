"""A network as a function of one flat parameter vector θ ∈ R^p, and the training objective

    R(θ) = (1/n) Σ_i ℓ(z_i, θ) + (λ/2) ‖θ‖²,

with its gradient and Hessian-vector products, all through `torch.func` (no Python loop over
samples). Influence computations use the model in eval mode (BatchNorm uses running statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap


class FlatModel:
    """Wraps `model` so that its logits and losses are functions of a flat vector θ."""

    def __init__(self, model: nn.Module):
        self.model = model
        params = list(model.named_parameters())
        self.names = [n for n, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.sizes = [p.numel() for _, p in params]
        self.buffers = {n: b for n, b in model.named_buffers()}

    @property
    def num_parameters(self) -> int:
        return sum(self.sizes)

    def flatten(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes)}

    def load_into_model(self, theta: torch.Tensor) -> nn.Module:
        with torch.no_grad():
            for p, t in zip(self.model.parameters(), theta.split(self.sizes)):
                p.copy_(t.view_as(p))
        return self.model

    def logits(self, theta: torch.Tensor, x: torch.Tensor, buffers: dict | None = None) -> torch.Tensor:
        return functional_call(self.model, (self.unflatten(theta), self.buffers if buffers is None else buffers), (x,))

    def per_sample_losses(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ℓ(z_i, θ) for every row: cross-entropy of the logits, shape [n]."""
        return F.cross_entropy(self.logits(theta, x), y, reduction="none")


def _chunks(n: int, size: int | None):
    size = n if not size else size
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class Objective:
    """R(θ) on data (x, y) with weight decay λ, evaluated in chunks of `chunk_size` rows."""

    def __init__(self, net: FlatModel, x: torch.Tensor, y: torch.Tensor, decay: float, chunk_size: int | None = None):
        self.net, self.x, self.y, self.decay = net, x, y, float(decay)
        self.n = len(y)
        self.chunk_size = chunk_size

    def _mean_loss_sum(self, theta, rows):
        """(1/n) Σ_{i in rows} ℓ(z_i, θ): one chunk's share of the data term."""
        return self.net.per_sample_losses(theta, self.x[rows], self.y[rows]).sum() / self.n

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            data = sum(self._mean_loss_sum(theta, rows) for rows in _chunks(self.n, self.chunk_size))
        return data + 0.5 * self.decay * theta.pow(2).sum()

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """∇R(θ) = (1/n) Σ ∇ℓ(z_i) + λθ."""
        g = sum(grad(self._mean_loss_sum)(theta, rows) for rows in _chunks(self.n, self.chunk_size))
        return g + self.decay * theta

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, rows=None) -> torch.Tensor:
        """(∇²R(θ)) v by forward-over-reverse differentiation; `rows` restricts the data term
        to a minibatch (rescaled to an unbiased estimate of the full data term)."""
        if rows is not None:
            scale = self.n / len(self.y[rows])
            hv = jvp(lambda t: grad(self._mean_loss_sum)(t, rows), (theta,), (v,))[1] * scale
            return hv + self.decay * v
        hv = sum(jvp(lambda t: grad(self._mean_loss_sum)(t, r), (theta,), (v,))[1] for r in _chunks(self.n, self.chunk_size))
        return hv + self.decay * v

    def hvp_many(self, theta: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """H V for V of shape [k, p] in one vectorised pass; returns [k, p]."""
        def data_hvp(v, rows):
            return jvp(lambda t: grad(self._mean_loss_sum)(t, rows), (theta,), (v,))[1]

        out = sum(vmap(data_hvp, in_dims=(0, None))(vectors, rows) for rows in _chunks(self.n, self.chunk_size))
        return out + self.decay * vectors

    def hessian(self, theta: torch.Tensor, block: int = 256) -> torch.Tensor:
        """The full p × p Hessian ∇²R(θ), built from batched HVPs on blocks of basis vectors."""
        p = theta.numel()
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        cols = [self.hvp_many(theta, eye[s]) for s in _chunks(p, block)]
        h = torch.cat(cols, dim=0)
        return 0.5 * (h + h.T)


def per_sample_gradients(net: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk_size: int | None = 256) -> torch.Tensor:
    """∇ℓ(z_i, θ) for every row, shape [n, p] (no decay term). Only for small n·p."""
    def single(xi, yi):
        return grad(lambda t: net.per_sample_losses(t, xi[None], yi[None]).squeeze(0))(theta)

    return torch.cat([vmap(single)(x[s], y[s]) for s in _chunks(len(y), chunk_size)])


def directional_derivatives(net: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, chunk_size: int | None = 1024) -> torch.Tensor:
    """∇ℓ(z_i, θ) · s_t for every training row i and direction s_t, shape [T, n].

    One forward-mode pass per chunk: jvp of the per-sample losses along s_t gives all n dot
    products at once, without materialising any per-sample gradient.
    """
    def along(s, rows):
        return jvp(lambda t: net.per_sample_losses(t, x[rows], y[rows]), (theta,), (s,))[1]

    out = [vmap(along, in_dims=(0, None))(directions, rows) for rows in _chunks(len(y), chunk_size)]
    return torch.cat(out, dim=1)
