"""Kronecker-factored curvature: K-FAC and EK-FAC (and the no-curvature baseline `identity`).

Both approximate the damped Gauss-Newton matrix G + λI + δI of the training objective
(G = (1/n) Σ_i J_iᵀ H_out,i J_i, λ the weight decay, δ the damping: the same matrix as
`ExactSolver(hessian="gauss_newton")`) by a block-diagonal matrix, one block per covered layer.

For a `Linear` layer s = W a (bias folded in: a gets a trailing 1, W = [W | b]) or a `Conv2d`
(a = the input patches of size C_in·k₁·k₂ (+1) at each of the L output locations, F.unfold), with
g = ∂(bᵀh)/∂s the back-propagated output direction b (see below):

    A = (1/(nL)) Σ_{i,l} a_il a_ilᵀ,    S = (1/n) Σ_{i,l,k} g_ilk g_ilkᵀ,
    A = Q_A Λ_A Q_Aᵀ,  S = Q_S Λ_S Q_Sᵀ,

    K-FAC:   (G_W + (λ+δ)I)⁻¹ vec(V) ≈ Q_S [(Q_Sᵀ V Q_A) ⊘ (λ_S λ_Aᵀ + λ + δ)] Q_Aᵀ
    EK-FAC:  the same with λ_S λ_Aᵀ replaced by Λ_ij = (1/n) Σ_{i,k} (Q_Sᵀ DW_ik Q_A)_ij²,
             DW_ik = Σ_l g_ilk a_ilᵀ the per-example weight gradient along direction k,

i.e. EK-FAC keeps K-FAC's eigenbasis and uses the exact diagonal of G_W in it (George et al.
2018). The damping δ and the decay λ are added to every eigenvalue, exactly as the exact
Gauss-Newton solve adds them, so δ means the same for every method.

Output directions b_ik (`output_hessian`):
- `expected` (default): H_out,i = Σ_k b_ik b_ikᵀ from the Task's output-space Hessian
  (`task.output_hessian_product`, eigendecomposed per example: b_ik = √w_k v_k), so that
  Σ_k J_iᵀ b_ik b_ikᵀ J_i = J_iᵀ H_out,i J_i exactly. For a linear model with squared loss G is
  then exactly S ⊗ A and both methods equal the exact Gauss-Newton solve.
- `sampled`: b_i = ∇_h ℓ(h_i, ŷ_i) with ŷ_i drawn from the model (`task.sample_targets`,
  `samples` draws, each weighted 1/samples): the Fisher as kronfluence fits it; its expectation
  over ŷ is H_out for softmax cross-entropy and squared error.

Parameters of other layers (BatchNorm's affine parameters, a grouped convolution, ...) are not
dropped: `uncovered: diagonal` (default) inverts the exact diagonal of G there,
(diag(G) + λ + δ)⁻¹ with diag(G)_j = (1/n) Σ_{i,k} (J_iᵀ b_ik)_j² from per-example gradients;
`uncovered: identity` uses (λ + δ)⁻¹ (G taken as 0 there). The diagnostics list both groups,
and the modules that hold uncovered parameters (`uncovered_layers`: an `nn.Embedding` on token
ids, for instance, is not factored; it gets the fallback).
Factors are fitted once (`fit`) and reused for every right-hand side and damping.

The factors A and S are eigendecomposed in float64 whatever the model's dtype (as kronfluence
does), the results cast back. A factor from fewer samples than dimensions is rank-deficient, with
many equal eigenvalues, and an eigensolver may fail to converge on it: the decomposition is then
retried on A + jI with the jitter j = ε·max(mean(diag A), tiny) for ε = 1e-12, 1e-10, ..., 1e-4,
the eigenvalues shifted back by −j (the eigenvectors of A + jI are those of A), the jitter used
recorded in the diagnostics (`factor_jitter`). If every try fails the estimator does not stop the
job: its status for every test point is `factor_decomposition_failed` (scores NaN) and the
diagnostics name the layer and the error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .ihvp import InverseHessianSolver, SolveResult, SolverError
from .methods import OPTIONS_READ

OUTPUT_HESSIANS = ("expected", "sampled")
FALLBACKS = ("diagonal", "identity")
JITTERS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)  # relative to the mean diagonal (module docstring)
DECOMPOSITION_FAILED = "factor_decomposition_failed"


class FactorDecompositionError(SolverError):
    """A Kronecker factor could not be eigendecomposed, even with jitter."""


def decompose_factor(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(λ, Q, j) with matrix ≈ Q diag(λ) Qᵀ for a symmetric factor, computed in float64 and cast
    back to the factor's dtype; j is the relative jitter ε the decomposition needed (0: none; the
    module docstring). FactorDecompositionError if every jitter fails."""
    dtype = matrix.dtype
    wide = 0.5 * (matrix + matrix.T)
    wide = wide.to(torch.float64)  # the same tensor for a float64 model
    errors = []
    for eps in (0.0,) + JITTERS:
        try:
            if eps == 0.0:
                lam, q = torch.linalg.eigh(wide)
            else:
                scale = max(float(wide.diagonal().mean()), torch.finfo(torch.float64).tiny)
                jitter = eps * scale
                eye = torch.eye(len(wide), dtype=wide.dtype, device=wide.device)
                lam, q = torch.linalg.eigh(wide + jitter * eye)
                lam = lam - jitter
        except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")
            continue
        if not (torch.isfinite(lam).all() and torch.isfinite(q).all()):
            errors.append("non-finite eigenvalues or eigenvectors")
            continue
        return lam.to(dtype), q.to(dtype), eps
    raise FactorDecompositionError(f"eigendecomposition of a {len(matrix)} × {len(matrix)} factor failed with every "
                                   f"jitter up to {JITTERS[-1]:g} × its mean diagonal: {errors[-1]}")


class _Layer:
    """One covered module: where its weight (and bias) sit in θ, and its factors."""

    def __init__(self, name, module, weight_slice, bias_slice):
        self.name, self.module = name, module
        self.kind = "conv2d" if isinstance(module, nn.Conv2d) else "linear"
        self.weight_slice, self.bias_slice = weight_slice, bias_slice
        self.out_dim = module.weight.shape[0]
        self.in_dim = module.weight[0].numel() + (bias_slice is not None)

    def inputs(self, a: torch.Tensor) -> torch.Tensor:
        """Layer input → [m, L, in(+1)] (patches for a convolution, with a trailing 1 for the bias)."""
        m = a.shape[0]
        if self.kind == "conv2d":
            mod = self.module
            a = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
            a = a.transpose(1, 2)
        else:
            a = a.reshape(m, -1, a.shape[-1])
        if self.bias_slice is not None:
            a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
        return a

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        """∂/∂(layer output) → [m, L, out]."""
        m = g.shape[0]
        if self.kind == "conv2d":
            return g.reshape(m, self.out_dim, -1).transpose(1, 2)
        return g.reshape(m, -1, self.out_dim)

    def matrix(self, vectors: torch.Tensor) -> torch.Tensor:
        """[T, p] → [T, out, in(+1)]: this layer's slice of θ-shaped vectors as W = [W | b]."""
        t = len(vectors)
        w = vectors[:, self.weight_slice].reshape(t, self.out_dim, -1)
        if self.bias_slice is None:
            return w
        return torch.cat([w, vectors[:, self.bias_slice].reshape(t, self.out_dim, 1)], dim=2)

    def scatter(self, matrices: torch.Tensor, out: torch.Tensor) -> None:
        """Inverse of `matrix`: write [T, out, in(+1)] back into θ-shaped rows of `out`."""
        t = len(matrices)
        if self.bias_slice is None:
            out[:, self.weight_slice] = matrices.reshape(t, -1)
        else:
            out[:, self.weight_slice] = matrices[:, :, :-1].reshape(t, -1)
            out[:, self.bias_slice] = matrices[:, :, -1]


def _coverable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


class KroneckerSolver(InverseHessianSolver):
    """K-FAC (`method: kfac`); EK-FAC is the subclass with `eigenvalue_correction` (module docstring)."""

    name = "kfac"
    options_read = OPTIONS_READ["kfac"]
    supports_norms = True
    eigenvalue_correction = False

    def __init__(self, **options):
        hessian = options.setdefault("hessian", "gauss_newton")
        if hessian != "gauss_newton":
            raise ValueError(f"influence method '{self.name}': approximates the Gauss-Newton matrix; option 'hessian' "
                             f"may only be 'gauss_newton', got '{hessian}'")
        super().__init__(**options)
        self.output_hessian = options.get("output_hessian", "expected")
        if self.output_hessian not in OUTPUT_HESSIANS:
            raise ValueError(f"influence method '{self.name}': option 'output_hessian' must be one of "
                             f"{list(OUTPUT_HESSIANS)}, got '{self.output_hessian}'")
        self.fallback = options.get("uncovered", "diagonal")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"influence method '{self.name}': option 'uncovered' must be one of {list(FALLBACKS)}, "
                             f"got '{self.fallback}'")
        self.samples = int(options.get("samples", 1))
        if self.samples < 1:
            raise ValueError(f"influence method '{self.name}': option 'samples' must be at least 1")

    # ------------------------------------------------------------------ layout
    def _layout(self):
        net = self.objective.net
        offsets, start = {}, 0
        for name, size in zip(net.names, net.sizes):
            offsets[name] = slice(start, start + size)
            start += size
        layers, covered, own = [], set(), {}
        for name, module in net.model.named_modules():
            if not _coverable(module):
                continue
            w_name = f"{name}.weight" if name else "weight"
            b_name = f"{name}.bias" if name else "bias"
            if w_name not in offsets or (module.bias is not None and b_name not in offsets):
                continue  # a tied or frozen weight: its parameters stay with the fallback
            layers.append(_Layer(name, module, offsets[w_name], offsets[b_name] if module.bias is not None else None))
            own[name] = [w_name] + ([b_name] if module.bias is not None else [])
        called = self._called(layers)
        layers = [layer for layer in layers if layer.name in called]
        for layer in layers:
            covered.update(own[layer.name])
        self.layers = layers
        self.uncovered = [(n, offsets[n]) for n in net.names if n not in covered]
        uncovered_names = {n for n, _ in self.uncovered}
        self.uncovered_layers = []
        for name, module in net.model.named_modules():
            own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
            own = [p for p in own if p in uncovered_names]
            if own:
                self.uncovered_layers.append({"name": name, "kind": type(module).__name__, "parameters": own})
        if not layers:
            raise SolverError(f"influence method '{self.name}': the model has no Linear or Conv2d layer to factor")

    def _called(self, layers) -> set[str]:
        """The names of the `layers` whose forward runs in a forward pass of the model. A Linear
        module whose weight the model uses without calling the module (nn.MultiheadAttention's
        `out_proj`, passed to F.multi_head_attention_forward) is never seen by a forward hook:
        such a layer is left to the fallback, as an uncovered one."""
        net, seen = self.objective.net, set()
        handles = [layer.module.register_forward_hook(lambda m, a, o, name=layer.name: seen.add(name))
                   for layer in layers]
        devices = [self.theta.device] if self.theta.device.type == "cuda" else []
        try:  # leaves the random generators and the buffers (BatchNorm in train mode) as they were
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                net.logits(self.theta.detach(), self.objective.x[:2], {k: v.clone() for k, v in net.buffers.items()})
        finally:
            for h in handles:
                h.remove()
        return seen

    # ------------------------------------------------------------------ output directions
    def _directions(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """b_ik for the rows of one chunk: [K, m, C] with Σ_k b_ik b_ikᵀ = H_out,i (expected) or
        the sampled gradients ∇_h ℓ(h_i, ŷ), each weighted 1/√samples (sampled)."""
        task = self.objective.net.task
        h = logits.detach()
        if h.dim() != 2:
            raise SolverError(f"influence method '{self.name}': needs outputs of shape [n, C], got {tuple(h.shape)}")
        m, c = h.shape
        if self.output_hessian == "expected":
            eye = torch.eye(c, dtype=h.dtype, device=h.device).unsqueeze(1).expand(c, m, c)
            hess = task.output_hessian_product(h, eye).permute(1, 0, 2)  # [m, C, C]: row k = H_i e_k
            hess = 0.5 * (hess + hess.transpose(1, 2))
            w, v = torch.linalg.eigh(hess)
            w = w.clamp_min(0)
            # drop directions that are null for every row (softmax: the all-ones direction)
            keep = (w > 1e-12 * w.amax(dim=1, keepdim=True).clamp_min(1e-300)).any(dim=0)
            b = (v * w.sqrt()[:, None, :])[:, :, keep]  # [m, C, K]: columns √w_k v_k
            return b.permute(2, 0, 1)
        gen = torch.Generator(device="cpu").manual_seed(int(self.options.get("seed", 0)) * 1_000_003 + int(rows[0]))
        out = []
        for _ in range(self.samples):
            hh = h.clone().requires_grad_(True)
            with torch.enable_grad():
                # drawn on the CPU (the generator's device): the same draws on every device
                targets = task.sample_targets(h.cpu(), gen).to(h.device)
                (g,) = torch.autograd.grad(task.per_sample_loss(hh, targets).sum(), hh)
            out.append(g / math.sqrt(self.samples))
        return torch.stack(out)

    # ------------------------------------------------------------------ one pass over the data
    def _pass(self, theta, visit):
        """For each chunk: a forward pass recording every covered layer's input and a zero probe on
        its output; then for every direction k one backward pass of b_k, giving g_k at all layers;
        `visit(layer, a [m, L, in], g [K, m, L, out])` per layer and chunk."""
        obj = self.objective
        net = obj.net
        size = int(self.options.get("fit_chunk_size") or obj.chunk_size or 256)
        records, recording = {}, [False]

        def hook(layer):
            def fn(module, args, output):
                if not recording[0]:
                    return None
                if layer.name in records:
                    raise SolverError(f"influence method '{self.name}': layer '{layer.name}' is applied more than once "
                                      "per forward pass; K-FAC does not cover shared layers")
                probe = torch.zeros_like(output, requires_grad=True)
                records[layer.name] = (args[0].detach(), probe)
                return output + probe
            return fn

        handles = [layer.module.register_forward_hook(hook(layer)) for layer in self.layers]
        try:
            for start in range(0, obj.n, size):
                rows = torch.arange(start, min(start + size, obj.n), device=obj.y.device)
                records.clear()
                with torch.enable_grad():
                    recording[0] = True
                    logits = net.logits(theta.detach(), obj.x[rows])
                    recording[0] = False
                    directions = self._directions(logits, rows)
                    probes = [records[layer.name][1] for layer in self.layers]
                    grads = self._backward(logits, probes, directions)
                for j, layer in enumerate(self.layers):
                    a = layer.inputs(records[layer.name][0])
                    g = torch.stack([layer.output_grads(gk) for gk in grads[j]])
                    visit(layer, a, g)
                yield rows, logits.detach(), directions
        finally:
            recording[0] = False
            for h in handles:
                h.remove()

    def _backward(self, logits, probes, directions):
        """∂(b_kᵀ h)/∂(each probe) for every direction k: [K, m, ...] per probe. One batched
        backward pass (`is_grads_batched`) when `batched_backward`, else K passes."""
        batched = self.options.get("batched_backward")
        if batched is None:  # default: batched on CUDA; on CPU one pass each was as fast or faster
            batched = logits.device.type == "cuda"
        if batched and len(directions) > 1:
            out = torch.autograd.grad(logits, probes, directions, is_grads_batched=True, allow_unused=True)
        else:
            parts = [torch.autograd.grad(logits, probes, d, retain_graph=True, allow_unused=True) for d in directions]
            out = [None if parts[0][j] is None else torch.stack([p[j] for p in parts]) for j in range(len(probes))]
        return [torch.zeros((len(directions),) + p.shape, dtype=p.dtype, device=p.device) if g is None else g
                for g, p in zip(out, probes)]

    def _uncovered_diagonal(self, theta, rows, directions):
        """Σ_{i in rows, k} (J_iᵀ b_ik)² on the uncovered parameters, by per-example gradients."""
        net = self.objective.net
        params = net.unflatten(theta.detach())
        names = [n for n, _ in self.uncovered]
        fixed = {k: v for k, v in params.items() if k not in names}

        def directional(free, xi, bi):
            out = functional_call(net.model, ({**fixed, **free}, net.buffers), (xi[None],))
            return (out[0] * bi).sum()

        free = {n: params[n] for n in names}
        per_example = vmap(grad(directional), in_dims=(None, 0, 0))
        total = torch.zeros(sum(s.stop - s.start for _, s in self.uncovered), dtype=theta.dtype, device=theta.device)
        x = self.objective.x[rows]
        for k in range(len(directions)):
            g = per_example(free, x, directions[k])
            total += torch.cat([g[n].reshape(len(rows), -1) for n in names], dim=1).pow(2).sum(0)
        return total

    # ------------------------------------------------------------------ fit
    def _fit(self):
        theta = self.theta
        self._layout()
        n = self.objective.n
        dtype, device = theta.dtype, theta.device
        fac_a = {l.name: torch.zeros(l.in_dim, l.in_dim, dtype=dtype, device=device) for l in self.layers}
        fac_s = {l.name: torch.zeros(l.out_dim, l.out_dim, dtype=dtype, device=device) for l in self.layers}
        count_a = {l.name: 0 for l in self.layers}
        diag = None
        want_diag = bool(self.uncovered) and self.fallback == "diagonal"

        def accumulate(layer, a, g):
            fac_a[layer.name] += torch.einsum("mli,mlj->ij", a, a)
            count_a[layer.name] += a.shape[0] * a.shape[1]
            fac_s[layer.name] += torch.einsum("kmlo,kmlp->op", g, g)

        for rows, _, directions in self._pass(theta, accumulate):
            if want_diag:
                part = self._uncovered_diagonal(theta, rows, directions)
                diag = part if diag is None else diag + part
        self.factors, self.failure, jitters = {}, None, {}
        for layer in self.layers:
            a = fac_a[layer.name] / count_a[layer.name]  # A = (1/(nL)) Σ a aᵀ
            s = fac_s[layer.name] / n  # S = (1/n) Σ g gᵀ
            try:
                lam_a, q_a, jitter_a = decompose_factor(a)
                lam_s, q_s, jitter_s = decompose_factor(s)
            except FactorDecompositionError as err:
                self.failure = f"layer '{layer.name}': {err}"
                break
            if jitter_a or jitter_s:
                jitters[layer.name] = {"A": jitter_a, "S": jitter_s}
            self.factors[layer.name] = {"q_a": q_a, "q_s": q_s,
                                        "eigenvalues": lam_s.clamp_min(0)[:, None] * lam_a.clamp_min(0)[None, :]}
        if self.failure is not None:
            self.diagonal = None
            self.diagnostics.update(num_parameters=theta.numel(), status=DECOMPOSITION_FAILED, error=self.failure,
                                    uncovered_parameters=[n for n, _ in self.uncovered],
                                    uncovered_layers=self.uncovered_layers)
            return
        if self.eigenvalue_correction:
            corrected = {l.name: torch.zeros(l.out_dim, l.in_dim, dtype=dtype, device=device) for l in self.layers}
            budget = int(self.options.get("correction_chunk_elements", 2**24))

            def correct(layer, a, g):
                f = self.factors[layer.name]
                a_rot = a @ f["q_a"]  # [m, L, in]
                g_rot = g @ f["q_s"]  # [K, m, L, out]
                k, m = g_rot.shape[:2]
                step = max(1, budget // max(1, layer.out_dim * layer.in_dim))
                for s0 in range(0, m, step):
                    sl = slice(s0, min(m, s0 + step))
                    for kk in range(k):
                        dw = torch.einsum("mlo,mli->moi", g_rot[kk, sl], a_rot[sl])
                        corrected[layer.name] += dw.pow(2).sum(0)

            for _ in self._pass(theta, correct):
                pass
            for layer in self.layers:
                self.factors[layer.name]["eigenvalues"] = corrected[layer.name] / n
        self.diagonal = (diag / n) if diag is not None else None
        self.diagnostics.update(
            num_parameters=theta.numel(),
            iterations=2 if self.eigenvalue_correction else 1,  # passes over the training data
            output_hessian=self.output_hessian,
            covered_layers=[{"name": l.name, "kind": l.kind, "out": l.out_dim, "in": l.in_dim,
                             "bias": l.bias_slice is not None} for l in self.layers],
            covered_parameters=sum(l.out_dim * l.in_dim for l in self.layers),
            uncovered_parameters=[n for n, _ in self.uncovered],
            uncovered_layers=self.uncovered_layers,
            factor_jitter=jitters,
            uncovered_count=sum(s.stop - s.start for _, s in self.uncovered),
            uncovered_fallback=self.fallback if self.uncovered else None,
            eigenvalue_min=min(float(f["eigenvalues"].min()) for f in self.factors.values()) + self.objective.decay,
            eigenvalue_max=max(float(f["eigenvalues"].max()) for f in self.factors.values()) + self.objective.decay,
        )

    # ------------------------------------------------------------------ solve
    def _apply_inverse(self, vectors: torch.Tensor, damping: float) -> torch.Tensor:
        shift = self.objective.decay + damping
        out = torch.empty_like(vectors)
        for layer in self.layers:
            f = self.factors[layer.name]
            denominator = f["eigenvalues"] + shift
            if (denominator.abs() < 1e-12).any():
                raise SolverError(f"influence method '{self.name}': G + {damping}·I is singular in layer "
                                  f"'{layer.name}'; increase the damping")
            v = f["q_s"].T @ layer.matrix(vectors) @ f["q_a"]
            layer.scatter(f["q_s"] @ (v / denominator) @ f["q_a"].T, out)
        offset = 0
        for _, sl in self.uncovered:
            size = sl.stop - sl.start
            d = self.diagonal[offset: offset + size] if self.diagonal is not None else 0.0
            if shift == 0 and self.diagonal is None:
                raise SolverError(f"influence method '{self.name}': uncovered parameters with identity fallback need "
                                  "decay + damping > 0")
            out[:, sl] = vectors[:, sl] / (d + shift)
            offset += size
        return out

    def _solve(self, vectors, damping):
        if self.failure is not None:  # reported per test point, the scores NaN (module docstring)
            return SolveResult(torch.full_like(vectors, math.nan), [DECOMPOSITION_FAILED] * len(vectors),
                               [{"error": self.failure} for _ in vectors])
        sol = self._apply_inverse(vectors, damping)
        return SolveResult(sol, ["ok"] * len(vectors), [{"iterations": 0} for _ in vectors])

    def solution_norms(self, vectors, damping) -> torch.Tensor:
        if self.failure is not None:
            return torch.full((len(vectors),), math.nan, dtype=vectors.dtype, device=vectors.device)
        return torch.cat([self._apply_inverse(vectors[s: s + 256], damping).norm(dim=1)
                          for s in range(0, len(vectors), 256)])


class EigenvalueCorrectedKroneckerSolver(KroneckerSolver):
    """EK-FAC (`method: ekfac`): K-FAC's eigenbasis with the exact diagonal of each Gauss-Newton
    block in it (module docstring); one more pass over the training data than K-FAC."""

    name = "ekfac"
    options_read = OPTIONS_READ["ekfac"]
    eigenvalue_correction = True


class IdentitySolver(InverseHessianSolver):
    """`method: identity`: H replaced by I, so Δ̂(z) = (1/n) ∇ℓ(z_t)ᵀ ∇ℓ(z), the gradient dot
    product: the baseline that shows what curvature buys. The damping is ignored ((1+δ)⁻¹ would
    only rescale every score alike, which no correlation sees)."""

    name = "identity"
    options_read = OPTIONS_READ["identity"]
    supports_norms = True

    def __init__(self, **options):
        super().__init__(**options)
        self.diagnostics["hessian"] = "identity"

    def _fit(self):
        self.diagnostics.update(num_parameters=self.theta.numel(), iterations=0)

    def _solve(self, vectors, damping):
        return SolveResult(vectors.clone(), ["ok"] * len(vectors), [{"iterations": 0} for _ in vectors])

    def solution_norms(self, vectors, damping) -> torch.Tensor:
        return vectors.norm(dim=1)
