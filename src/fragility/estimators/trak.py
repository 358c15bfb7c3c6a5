"""TRAK (Park, Georgiev, Ilyas, Leclerc & Madry, ICML 2023).

For each model m of the ensemble, with f the Task's output function (`Task.output_function`: the
correct-class margin h_y − logsumexp_{j≠y} h_j for cross-entropy, the output for single-output
squared error) and P a seeded random projection p → k:

    φ_i = Pᵀ ∇_θ f(z_i; θ_m),   Φ = [φ_1 … φ_n]ᵀ  (n × k),   Q_ii = −∂ℓ_i/∂f_i
    (1 − p_{y_i} for cross-entropy, y_i − f_i for squared error), and the TRAK score

    τ_i(z_t) = [ (1/M) Σ_m φ_tᵀ (ΦᵀΦ + λI)⁻¹ φ_i ] · [ (1/M) Σ_m Q_ii ],

the paper's ensemble: the product of the ensemble averages of the kernel term and of Q (its
Eq. for TRAK with M models, without its optional soft-thresholding). τ_i predicts the increase
of the test output f_t that z_i brings (for least squares, τ_i/(1 − h_ii) is the exact
leave-one-out change of f_t). Removing z_i changes the test loss by (∂ℓ_t/∂f_t)(−τ_i) to first
order, so

    Δ̂_i = q_t τ_i,   q_t = −∂ℓ_t/∂f_t averaged over the models  (Δ̂ > 0: removal raises the test
    loss, the project's sign; q_t > 0 for both built-in losses).

The projection is generated block by block over the parameters (a block of rows of P at a time,
seeded by `seed` and the block's position, identical for training and test points), applied to
blocks of training rows' gradients, so neither the n × p gradient matrix nor the p × k projection
is formed. Gradients are projected in the model's precision, at least float32 (float32 models:
float32 products with P's float64 draws rounded, half the time of float64 products and a relative
difference of about 1e-7 on LeNet), the features Φ then taken to float64, in which the kernel is
solved.

Options: `projection_dim` k (default 2048; `null` or > p: no projection, φ = ∇f), `projection`
(`gaussian`, entries N(0, 1/k), or `rademacher`, ±1/√k), `seed`, `l2` (λ, default 0; the kernel is
inverted by its pseudo-inverse, eigenvalues below 1e-12 × the largest taken as zero: the inverse
where it is regular; for cross-entropy's margin, unchanged by a shift of all logits, ΦᵀΦ without
projection is singular by construction, and its rank is in the diagnostics), `models`
(`theta_star`: M = 1, the trained model; `checkpoints`: the checkpoints of the run,
`train.keep_checkpoints`, the paper's cheaper ensemble over training trajectory; `seeds`: this
cell's θ* and the θ* of each of the cell's other seeds, same dataset × architecture × decay, the
paper's ensemble of independently trained models, which needs ≥ 2 seeds and `fuse_fit: false`),
`chunk_bytes` (the most bytes of one block of per-sample gradients or of P). Every member is
projected by the same P.

The kernel's pseudo-inverse and its rank come from one eigendecomposition ΦᵀΦ + λI = V diag(e) Vᵀ:
(ΦᵀΦ + λI)⁺ = V diag(1/e_j where |e_j| > rtol · max|e|, else 0) Vᵀ, the rank the number of
eigenvalues kept (torch.linalg.pinv's and matrix_rank's rule, hermitian, rtol 1e-12).
"""

from __future__ import annotations

import time

import torch
from torch.func import grad, vmap

from ..engine.objective import _chunks
from .base import Context, Estimator, EstimatorScores, RequirementError
from .similarity import gradient_rows

MODELS = ("theta_star", "checkpoints", "seeds")
PROJECTIONS = ("gaussian", "rademacher")


def output_gradients(net, theta, x, y) -> torch.Tensor:
    """∇_θ f(z_i; θ) of the Task's output function for every row, [m, p]."""
    task = net.task

    def single(xi, yi):
        return grad(lambda t: task.output_function(net.logits(t, xi[None]), yi[None]).squeeze(0))(theta)

    return vmap(single)(x, y)


def loss_output_gradients(net, theta, x, y) -> torch.Tensor:
    """∂ℓ/∂f for every row, [m]."""
    with torch.no_grad():
        return net.task.output_function_gradient(net.logits(theta, x), y)


class Projection:
    """x ↦ xP for rows x ∈ R^p, P [p, k] generated a block of `block` rows at a time (seeded by
    `seed` and the block's start), never formed whole; `None` dimension: the identity. Where all
    of P takes at most `keep_bytes` its blocks are kept after their first use (small nets);
    otherwise each application regenerates them (p·k random numbers per block of training rows)."""

    def __init__(self, p: int, k: int | None, kind: str, seed: int, block: int, dtype, device,
                 keep_bytes: float = 2**28):
        self.p, self.k, self.kind, self.seed, self.block = p, k, kind, int(seed), max(1, int(block))
        self.dtype, self.device = dtype, device
        self.kept = {} if k is not None and p * k * (torch.finfo(dtype).bits // 8) <= keep_bytes else None

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of P."""
        if self.kept is not None:
            if start not in self.kept:
                self.kept[start] = self._generate(start, stop)
            return self.kept[start]
        return self._generate(start, stop)

    def _generate(self, start: int, stop: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + start)
        if self.kind == "gaussian":
            part = torch.randn(stop - start, self.k, generator=gen, dtype=torch.float64)
        else:
            part = torch.randint(0, 2, (stop - start, self.k), generator=gen).to(torch.float64).mul_(2).sub_(1)
        return part.div_(self.k ** 0.5).to(device=self.device, dtype=self.dtype)  # in place: one float64 block

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.k is None:
            return rows
        out = torch.zeros(len(rows), self.k, dtype=self.dtype, device=self.device)
        for s in range(0, self.p, self.block):
            e = min(s + self.block, self.p)
            out += rows[:, s:e] @ self.rows(s, e)
        return out


def pseudo_inverse(kernel: torch.Tensor, rtol: float) -> tuple[torch.Tensor, int]:
    """(K⁺, rank K) of a symmetric K from one eigendecomposition K = V diag(e) Vᵀ: eigenvalues with
    |e_j| ≤ rtol · max|e| count as zero (torch.linalg.pinv's and matrix_rank's rule for hermitian K)."""
    inverse, rank, _ = _pseudo_inverse(kernel, rtol)
    return inverse, rank


def _pseudo_inverse(kernel: torch.Tensor, rtol: float) -> tuple[torch.Tensor, int, float]:
    """`pseudo_inverse` and the largest |eigenvalue| of K, which sets the cut."""
    values, vectors = torch.linalg.eigh(kernel)
    size = values.abs()
    largest = float(size.max()) if len(size) else 0.0
    keep = size > rtol * largest
    inverted = torch.where(keep, 1 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values))
    return (vectors * inverted[None, :]) @ vectors.T, int(keep.sum()), largest


def kernel_solve(features: torch.Tensor, l2: float, rtol: float) -> tuple[torch.Tensor, int]:
    """((ΦᵀΦ + λI)⁺Φᵀ [d, n], rank of ΦᵀΦ + λI) for Φ [n, d], with `pseudo_inverse`'s rule. The
    pseudo-inverse is the inverse where ΦᵀΦ + λI is regular; for cross-entropy's margin, which a
    shift of all logits leaves unchanged, ΦᵀΦ without projection is singular by construction.
    Where d > n it is computed in the dual, Φᵀ(ΦΦᵀ + λI)⁺ from an n × n decomposition: equal,
    since ΦᵀΦ and ΦΦᵀ share their nonzero eigenvalues σ², the d − n further eigenvalues λ of
    ΦᵀΦ + λI belong to the null space of Φ, which Φᵀ does not reach, and the largest eigenvalue,
    which sets the cut, is the same; the rank adds those d − n where λ is above the cut."""
    n, d = features.shape
    if d <= n:
        kernel = features.T @ features + l2 * torch.eye(d, dtype=features.dtype, device=features.device)
        inverse, rank = pseudo_inverse(kernel, rtol)
        return inverse @ features.T, rank
    gram = features @ features.T + l2 * torch.eye(n, dtype=features.dtype, device=features.device)
    inverse, rank, largest = _pseudo_inverse(gram, rtol)
    return features.T @ inverse, rank + ((d - n) if l2 > rtol * largest else 0)


class TRAK(Estimator):
    """`trak`: Δ̂_i = q_t τ_i with τ the ensemble TRAK score (module docstring: formula, sign,
    ensemble and options)."""

    name = "trak"
    requires = ()
    notes = ('projected margin gradients, a kernel regression, averaged over models (Park et al. 2023)',
             'linearises the net; a small projection or ensemble adds noise')
    # the checkpoint ensemble, the ensemble over the cell's seeds
    requires_by_option = {"models": {"checkpoints": ("checkpoints",), "seeds": ("several_models",)}}

    def __init__(self, projection_dim: int | None = 2048, projection: str = "gaussian", seed: int = 0, l2: float = 0.0,
                 models: str = "theta_star", chunk_bytes: float = 2**27):
        super().__init__()
        if models not in MODELS:
            raise ValueError(f"trak: models must be one of {', '.join(MODELS)}, got '{models}'")
        if projection not in PROJECTIONS:
            raise ValueError(f"trak: projection must be one of {', '.join(PROJECTIONS)}, got '{projection}'")
        if not l2 >= 0:
            raise ValueError(f"trak: l2 must be ≥ 0, got {l2}")
        self.projection_dim = None if projection_dim in (None, 0) else int(projection_dim)
        self.projection, self.seed, self.l2, self.models = projection, int(seed), float(l2), models
        self.chunk_bytes = float(chunk_bytes)
        self.rtol = 1e-12  # eigenvalues below rtol × the largest count as zero (the pseudo-inverse)
        self.requires = self.requires + self.requires_by_option["models"].get(models, ())

    def fit(self, context: Context) -> "TRAK":
        super().fit(context)
        started = time.perf_counter()
        task = context.task
        if task.output_function is None or task.output_function_gradient is None:
            raise RequirementError(f"{context.cell or 'this cell'}: the estimator 'trak' needs the task '{task.name}' to write "
                                   "output_function and output_function_gradient (engine/task.py), and it does not")
        if self.models == "checkpoints":
            if not context.models:
                raise RequirementError(f"{context.cell or 'this cell'}: the estimator 'trak' with models: checkpoints requires "
                                       "checkpoints of the training run (train.keep_checkpoints)")
            members = [(m.net, m.theta, m.label) for m in context.models]
        elif self.models == "seeds":
            if not context.models:
                raise RequirementError(f"{context.cell or 'this cell'}: the estimator 'trak' with models: seeds requires the "
                                 "models of the cell's other seeds (several seeds, fuse_fit: false)")
            members = [(context.net, context.theta, "θ*")] + [(m.net, m.theta, m.label) for m in context.models]
        else:
            members = [(context.net, context.theta, "θ*")]
        p = context.theta.numel()
        k = self.projection_dim if self.projection_dim is not None and self.projection_dim <= p else None
        # P's blocks are sized (and so seeded) by their float64 draws whatever the precision they are
        # used in, so that a float32 model's P is the float64 P rounded; likewise the blocks of rows
        work = torch.promote_types(context.theta.dtype, torch.float32)  # the projection's precision
        self.project = Projection(p, k, self.projection, self.seed,
                                  self.chunk_bytes // max(1, (k or 1) * 8), work, context.theta.device)
        rows = gradient_rows(p, 8, self.chunk_bytes)
        x, y, n = context.x_train, context.y_train, context.n_train
        self.members, q_sum, singular = [], torch.zeros(n, dtype=torch.float64, device=context.theta.device), []
        for net, theta, label in members:
            features = torch.cat([self.features(net, theta, x[r], y[r]) for r in _chunks(n, rows)])  # Φ, [n, k]
            q_sum -= torch.cat([loss_output_gradients(net, theta, x[r], y[r]).to(torch.float64) for r in _chunks(n, rows)])
            solved, rank = kernel_solve(features, self.l2, self.rtol)  # (ΦᵀΦ + λI)⁺Φᵀ, [k, n]
            if rank < features.shape[1]:
                singular.append({"model": label, "rank": rank, "dimension": features.shape[1]})
            self.members.append((net, theta, solved))
        self.q_train = q_sum / len(members)
        self.diagnostics = {"method": self.name, "projection_dim": k, "projection": self.projection if k else "none",
                            "models": [label for _, _, label in members], "l2": self.l2,
                            "singular_kernels": singular, "fit_seconds": time.perf_counter() - started}
        return self

    def features(self, net, theta, x, y) -> torch.Tensor:
        """φ = Pᵀ∇f(z; θ) for the rows (x, y), [m, k] in float64 (projected in `self.project`'s dtype)."""
        return self.project(output_gradients(net, theta, x, y).to(self.project.dtype)).to(torch.float64)

    def tau(self, test_points: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(τ [T, n], the TRAK scores; q_t [T], −∂ℓ_t/∂f_t averaged over the models)."""
        c = self.context
        idx = torch.tensor([tp["index"] for tp in test_points], device=c.x_test.device)
        xt, yt = c.x_test[idx], c.y_test[idx]
        kernel_term, q_test = 0.0, 0.0
        for net, theta, solved in self.members:
            phi_t = self.features(net, theta, xt, yt)
            kernel_term = kernel_term + phi_t @ solved
            q_test = q_test - loss_output_gradients(net, theta, xt, yt).to(torch.float64)
        m = len(self.members)
        return (kernel_term / m) * self.q_train[None, :], q_test / m

    def scores(self, test_points: list[dict]) -> EstimatorScores:
        started = time.perf_counter()
        tau, q_test = self.tau(test_points)
        predicted = q_test[:, None] * tau
        seconds = time.perf_counter() - started
        outcomes = [{"test_point": tp["name"], "status": "ok", "test_output_weight": float(q_test[t]),
                     "seconds_all_points": seconds} for t, tp in enumerate(test_points)]
        return EstimatorScores(predicted.to(self.context.theta.dtype), ["ok"] * len(test_points), outcomes)
