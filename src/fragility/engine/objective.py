"""A network as a function of one flat parameter vector θ ∈ R^p, and the training objective

    R(θ) = (1/n) Σ_i ℓ(z_i, θ) + (λ/2) ‖θ‖²,

with its gradient and Hessian-vector products, all through `torch.func` (no Python loop over
samples). Influence computations use the model in eval mode (BatchNorm uses running statistics).
"""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vjp, vmap

from .flat import FlatModel


def _chunks(n: int, size: int | None):
    size = n if not size else size
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


HESSIANS = ("full", "gauss_newton")


class Objective:
    """R(θ) on data (x, y) with weight decay λ, evaluated in chunks of `chunk_size` rows.

    `hessian` picks the curvature matrix that `hvp`, `hvp_many` and `hessian()` multiply by:

        full:          H = ∇²R(θ) = (1/n) Σ_i ∇²ℓ(z_i, θ) + λI
        gauss_newton:  G = (1/n) Σ_i J_iᵀ H_out,i J_i + λI,   H_out,i = ∇²_h ℓ(h_i),

    with J_i = ∂h(x_i)/∂θ and H_out,i the Task's output-space Hessian (diag(p_i) − p_i p_iᵀ for
    softmax cross-entropy, I for squared error); G is positive semi-definite (positive definite
    for λ > 0). `full_hvp_many` and `gnh_vp` give either one regardless of the choice.
    """

    def __init__(self, net: FlatModel, x: torch.Tensor, y: torch.Tensor, decay: float, chunk_size: int | None = None,
                 hessian: str = "full"):
        if hessian not in HESSIANS:
            raise ValueError(f"influence method option 'hessian' must be one of {list(HESSIANS)}, got '{hessian}'")
        self.net, self.x, self.y, self.decay = net, x, y, float(decay)
        self.n = len(y)
        self.chunk_size = chunk_size
        self.hessian_kind = hessian

    def with_hessian(self, hessian: str) -> "Objective":
        """The same objective, multiplying by another curvature matrix (`full` or `gauss_newton`)."""
        return Objective(self.net, self.x, self.y, self.decay, self.chunk_size, hessian=hessian)

    def _mean_loss_sum(self, theta, rows):
        """(1/n) Σ_{i in rows} ℓ(z_i, θ): one chunk's share of the data term."""
        return self.net.per_sample_losses(theta, self.x[rows], self.y[rows]).sum() / self.n

    def _blocks(self, rows=None):
        """(rows of one chunk, weight) pairs covering the data term: all n rows with weight 1, or a
        minibatch `rows` of m rows with weight n/m (an unbiased estimate of the full data term)."""
        if rows is None:
            return [(r, 1.0) for r in _chunks(self.n, self.chunk_size)]
        index = torch.arange(self.n, device=self.y.device)[rows]
        scale = self.n / len(index)
        return [(index[r], scale) for r in _chunks(len(index), self.chunk_size)]

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            data = sum(self._mean_loss_sum(theta, rows) for rows in _chunks(self.n, self.chunk_size))
        return data + 0.5 * self.decay * theta.pow(2).sum()

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        """∇R(θ) = (1/n) Σ ∇ℓ(z_i) + λθ."""
        g = sum(grad(self._mean_loss_sum)(theta, rows) for rows in _chunks(self.n, self.chunk_size))
        return g + self.decay * theta

    # ------------------------------------------------------------------ curvature products
    def full_hvp_many(self, theta: torch.Tensor, vectors: torch.Tensor, rows=None) -> torch.Tensor:
        """(∇²R(θ)) V for V of shape [k, p]; returns [k, p]. Reverse-over-reverse per chunk: the
        gradient's graph is built once and differentiated along all k vectors in one batched
        backward pass (`is_grads_batched`)."""
        t = theta.detach().requires_grad_(True)
        out = torch.zeros_like(vectors)
        with torch.enable_grad():
            for block, scale in self._blocks(rows):
                (g,) = torch.autograd.grad(self._mean_loss_sum(t, block) * scale, t, create_graph=True)
                out += torch.autograd.grad(g, t, vectors, is_grads_batched=True)[0]
        return out + self.decay * vectors

    def gnh_vp_many(self, theta: torch.Tensor, vectors: torch.Tensor, rows=None) -> torch.Tensor:
        """G V = (1/n) Σ_i J_iᵀ H_out,i J_i V + λV for V of shape [k, p]; returns [k, p]. Per chunk:
        one forward z = logits(θ); J V by the double-backward trick (J V = ∂(Jᵀu · V)/∂u, Jᵀu being
        linear in u); H_out u from the Task; Jᵀ(·) by one batched backward pass."""
        t = theta.detach().requires_grad_(True)
        out = torch.zeros_like(vectors)
        with torch.enable_grad():
            for block, scale in self._blocks(rows):
                logits = self.net.logits(t, self.x[block])
                dummy = torch.zeros_like(logits, requires_grad=True)
                (jt_u,) = torch.autograd.grad(logits, t, dummy, create_graph=True)
                (jv,) = torch.autograd.grad(jt_u, dummy, vectors, is_grads_batched=True)  # [k, m, C]
                u = self.net.task.output_hessian_product(logits, jv)
                out += torch.autograd.grad(logits, t, u, is_grads_batched=True)[0] * (scale / self.n)
        return out + self.decay * vectors

    def hvp_many(self, theta: torch.Tensor, vectors: torch.Tensor, rows=None) -> torch.Tensor:
        """H V (or G V, see `hessian`) for V of shape [k, p] in one vectorised pass; returns [k, p].
        `rows` restricts the data term to a minibatch, rescaled by n/m."""
        if self.hessian_kind == "gauss_newton":
            return self.gnh_vp_many(theta, vectors, rows)
        return self.full_hvp_many(theta, vectors, rows)

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, rows=None) -> torch.Tensor:
        """H v (or G v, see `hessian`) for one vector v ∈ R^p. The full Hessian's product is
        reverse-over-reverse, ∇(∇R · v), chunk by chunk: for one vector it has the least overhead."""
        if self.hessian_kind == "gauss_newton":
            return self.gnh_vp(theta, v, rows)
        t = theta.detach().requires_grad_(True)
        out = torch.zeros_like(v)
        with torch.enable_grad():
            for block, scale in self._blocks(rows):
                (g,) = torch.autograd.grad(self._mean_loss_sum(t, block) * scale, t, create_graph=True)
                out += torch.autograd.grad(g @ v, t)[0]
        return out + self.decay * v

    def gnh_vp(self, theta: torch.Tensor, v: torch.Tensor, rows=None) -> torch.Tensor:
        """G v, the Gauss-Newton product, whatever `hessian` says."""
        return self.gnh_vp_many(theta, v[None], rows)[0]

    def operator(self, theta: torch.Tensor):
        """V ↦ H V (or G V) at a fixed θ, for solvers that multiply many times. When the data fit in
        one chunk the graph of ∇R (or of the logits) is built once and kept between calls, so each
        product costs one batched backward pass; otherwise it is `hvp_many`. On CUDA the full
        Hessian's product is torch.func's vjp of ∇R under vmap (H symmetric: vjp(∇R)(v) = Hv), which
        on an H100 was 3.2–3.3× faster for the small CNN than the autograd engine's batched double
        backward; on CPU the latter is as fast or faster (benchmarks/README.md)."""
        if len(self._blocks()) > 1:
            return lambda vectors: self.hvp_many(theta, vectors)
        rows = self._blocks()[0][0]
        if self.hessian_kind == "full" and theta.device.type == "cuda":
            _, gradient_vjp = vjp(grad(lambda u: self._mean_loss_sum(u, rows)), theta.detach())

            def product_on_gpu(vectors):
                return vmap(gradient_vjp)(vectors)[0] + self.decay * vectors
            return product_on_gpu
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            if self.hessian_kind == "full":
                (g,) = torch.autograd.grad(self._mean_loss_sum(t, rows), t, create_graph=True)

                def product(vectors):
                    hv = torch.autograd.grad(g, t, vectors, is_grads_batched=True, retain_graph=True)[0]
                    return hv + self.decay * vectors
                return product
            logits = self.net.logits(t, self.x[rows])
            dummy = torch.zeros_like(logits, requires_grad=True)
            (jt_u,) = torch.autograd.grad(logits, t, dummy, create_graph=True)

        def gauss_newton_product(vectors):
            (jv,) = torch.autograd.grad(jt_u, dummy, vectors, is_grads_batched=True, retain_graph=True)
            u = self.net.task.output_hessian_product(logits, jv)
            gv = torch.autograd.grad(logits, t, u, is_grads_batched=True, retain_graph=True)[0] / self.n
            return gv + self.decay * vectors
        return gauss_newton_product

    def hessian(self, theta: torch.Tensor, block: int = 256) -> torch.Tensor:
        """The full p × p matrix H (or G), built from batched products with blocks of basis vectors."""
        p = theta.numel()
        eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
        product = self.operator(theta)
        cols = [product(eye[s]) for s in _chunks(p, block)]
        h = torch.cat(cols, dim=0)
        return 0.5 * (h + h.T)


def per_sample_gradients(net: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk_size: int | None = 256,
                         measure: bool = False) -> torch.Tensor:
    """∇ℓ(z_i, θ) for every row, shape [n, p] (no decay term); with `measure`, the gradient of the
    task's test measurement instead of its loss. Only for small n·p."""
    per_row = net.measurements if measure else net.per_sample_losses

    def single(xi, yi):
        return grad(lambda t: per_row(t, xi[None], yi[None]).squeeze(0))(theta)

    return torch.cat([vmap(single)(x[s], y[s]) for s in _chunks(len(y), chunk_size)])


def probe_derivative(net: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, kind: str) -> None:
    """Take once the derivative `kind` of the loss of the rows (x, y) at θ, to learn whether
    PyTorch implements it for this model (raises its error if not): "second_derivatives", a
    Hessian-vector product ∇(∇ℓ · v) by double backward (the curvature products of the inverse-
    Hessian methods, full and Gauss-Newton, are double backwards); "forward_mode", jvp(ℓ)(θ; v)."""
    v = torch.ones_like(theta)
    if kind == "forward_mode":
        jvp(lambda t: net.per_sample_losses(t, x, y).sum(), (theta.detach(),), (v,))
        return
    if kind != "second_derivatives":
        raise ValueError(f"no probe for the derivative '{kind}'")
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(net.per_sample_losses(t, x, y).sum(), t, create_graph=True)
        if (g @ v).requires_grad:  # else the loss is linear in θ: nothing to differentiate twice
            torch.autograd.grad(g @ v, t, allow_unused=True)


def directional_derivatives(net: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor,
                            chunk_size: int | None = 1024, gradient_chunk_bytes: float = 2**27) -> torch.Tensor:
    """∇ℓ(z_i, θ) · s_t for every training row i and direction s_t, shape [T, n], chunk by chunk.

    Two exact ways, whichever costs less; neither forms an n × p matrix:
    - forward mode: jvp of the per-sample losses along s_t gives all n dot products at once
      (the T tangents share one primal pass; used for up to two directions or when p is large);
    - per-sample gradients of m rows (vmap(grad), one m × p block of at most
      `gradient_chunk_bytes`) times the T directions (a cost that does not grow with T).
    A model with a layer that has no forward-mode derivative in PyTorch (nn.EmbeddingBag) takes
    the second way whatever T: the same numbers to rounding (tested).
    """
    n, p, t_count = len(y), theta.numel(), len(directions)
    gradient_rows = int(gradient_chunk_bytes // max(1, p * theta.element_size()))

    def by_gradients():
        rows = max(1, min(gradient_rows, chunk_size or n))
        out = [directions @ per_sample_gradients(net, theta, x[r], y[r], chunk_size=None).T for r in _chunks(n, rows)]
        return torch.cat(out, dim=1)

    if t_count >= 3 and gradient_rows >= 32:
        return by_gradients()

    def along(s, rows):
        return jvp(lambda t: net.per_sample_losses(t, x[rows], y[rows]), (theta,), (s,))[1]

    try:
        out = [vmap(along, in_dims=(0, None))(directions, rows) for rows in _chunks(n, chunk_size)]
    except NotImplementedError as err:
        if "forward AD" not in str(err):
            raise
        return by_gradients()  # reverse mode: per-sample gradients
    return torch.cat(out, dim=1)
