"""Inverse-Hessian-vector products: s = (H + δI)⁻¹ v for the training objective's Hessian H.

One small class per method, one interface:

    solver = make_solver(name, **options)   # engine/solvers.py: the registry of every method
    solver.fit(objective, theta)             # once per trained model
    result = solver.solve(V, damping)        # V: [T, p] right-hand sides → result.solutions [T, p]

`result.status[t]` is "ok" or a reason ("diverged", "not_converged", ...); a solution that is not
"ok" is NaN, never a number. `solver.diagnostics` records what was measured (eigenvalues or their
estimates, iterations, residuals or divergence, seconds).

Every method takes the option `hessian: full | gauss_newton`: H is then either ∇²R(θ) or the
Gauss-Newton matrix G = (1/n) Σ J_iᵀ H_out,i J_i + λI, which is positive semi-definite
(see `objective.Objective`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

import torch

from .methods import OPTIONS_READ
from .objective import HESSIANS, Objective


class SolverError(RuntimeError):
    pass


@dataclass
class SolveResult:
    solutions: torch.Tensor  # [T, p]; rows whose status is not "ok" are NaN
    status: list[str]
    details: list[dict] = field(default_factory=list)


PROGRESS_SECONDS = 30.0  # long solver phases log a line at most this often (and when they end)


class Progress:
    """`log` lines like the trainer's for a loop of `total` steps: `<what> i/total, s so far, about s
    left`, at most one per PROGRESS_SECONDS, and one at the last step if any was written before."""

    def __init__(self, what: str, total: int, log):
        self.what, self.total, self.log = what, int(total), log
        self.began = self.last = time.perf_counter()
        self.written = False

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_SECONDS and not (self.written and done == self.total):
            return
        self.last, self.written = now, True
        elapsed = now - self.began
        left = elapsed / max(done, 1) * (self.total - done)
        self.log(f"{self.what} {done}/{self.total}: {elapsed:.0f} s so far, about {left:.0f} s left")


def unsupported_status(err: BaseException) -> str | None:
    """`unsupported: derivative of <op>` for PyTorch's error on a derivative it does not implement
    ("the derivative for '<op>' is not implemented", e.g. the double backward of nn.EmbeddingBag;
    "derivative for aten::<op> is not implemented", a RuntimeError, e.g. the double backward of a
    fused attention kernel; "forward AD with <op>"), else None."""
    match = re.search(r"derivative for '?(?:aten::)?([^' ]+)'? is not implemented", str(err))
    if match:
        return f"unsupported: derivative of {match.group(1)}"
    match = re.search(r"forward AD with (?:aten::)?(\S+)", str(err))
    if match:
        return f"unsupported: forward-mode derivative of {match.group(1)}"
    return None


class InverseHessianSolver:
    """Common part: option handling, the choice of curvature matrix, timing of fit and solve.
    `log` (print unless the caller sets it) receives the progress lines of long phases."""

    log = staticmethod(print)

    name = "base"
    options_read = ("hessian",)  # the config options this method reads (others are not passed to it)
    supports_norms = False  # can it return ‖(H+δI)⁻¹ g_i‖ for many g_i cheaply?
    unsupported = None  # the status `unsupported: ...` once a derivative it needs turned out missing (`_refuse`)

    def __init__(self, **options):
        self.options = options
        hessian = options.get("hessian", "full")
        if hessian not in HESSIANS:
            raise ValueError(f"influence method '{self.name}': option 'hessian' must be one of {list(HESSIANS)}, got '{hessian}'")
        self.hessian = hessian
        self.diagnostics: dict = {"method": self.name, "hessian": hessian}

    def fit(self, objective: Objective, theta: torch.Tensor) -> "InverseHessianSolver":
        start = time.perf_counter()
        self.objective, self.theta = objective.with_hessian(self.hessian), theta
        self._product = None
        self.unsupported = None
        try:
            self._fit()
        except (NotImplementedError, RuntimeError) as err:
            self._refuse(err)
        self.diagnostics["fit_seconds"] = time.perf_counter() - start
        return self

    def _refuse(self, err: Exception) -> None:
        """The model lacks a derivative this method needs (PyTorch implements no second derivative
        of some layers, nn.EmbeddingBag's for one): every solve is then NaN with the status
        `unsupported: derivative of <op>`, the job goes on. Other errors propagate."""
        status = unsupported_status(err)
        if status is None:
            raise err
        self.unsupported = status
        self.supports_norms = False  # the instance's: the parameter-change norms are NaN too
        self.diagnostics.update(status=status, error=str(err).splitlines()[0])

    def solve(self, vectors: torch.Tensor, damping: float) -> SolveResult:
        start = time.perf_counter()
        result = None
        if self.unsupported is None:
            try:
                result = self._solve(vectors, float(damping))
            except (NotImplementedError, RuntimeError) as err:
                self._refuse(err)
        if result is None:
            result = SolveResult(torch.full_like(vectors, math.nan), [self.unsupported] * len(vectors),
                                 [{"error": self.diagnostics["error"]} for _ in vectors])
        self.diagnostics.update(damping=float(damping), solve_seconds=time.perf_counter() - start,
                                solved=len(vectors), failed=sum(s != "ok" for s in result.status))
        return result

    def _fit(self) -> None:
        """Work done once per trained model (nothing by default)."""

    def _solve(self, vectors: torch.Tensor, damping: float) -> SolveResult:
        raise NotImplementedError

    def _damped_hvp_many(self, vectors: torch.Tensor, damping: float, rows=None) -> torch.Tensor:
        """(H + δI) V; on all the data through a cached operator: for p ≤ `dense_max_parameters`
        (default 256) H itself, formed once from ⌈p/256⌉ batched products (each later product is
        then a p × p matrix product instead of a pass over the data); else the objective's
        Hessian-vector product. Minibatch products (`rows`) always go through the data."""
        if rows is not None:
            return self.objective.hvp_many(self.theta, vectors, rows) + damping * vectors
        if self._product is None:
            if self.theta.numel() <= int(self.options.get("dense_max_parameters", 256)):
                matrix = self.objective.hessian(self.theta)  # symmetric: V H = (H V)ᵀ row by row
                self._product = lambda v: v @ matrix
                self.diagnostics["products"] = "dense"
            else:
                self._product = self.objective.operator(self.theta)
                self.diagnostics["products"] = "hvp"
        return self._product(vectors) + damping * vectors


def top_eigenvalue(hvp, p: int, like: torch.Tensor, iterations: int = 100, tol: float = 1e-6, seed: int = 0,
                   progress=None) -> float:
    """Largest-magnitude eigenvalue of H by power iteration on v ↦ Hv; `progress(i)` after step i."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(p, generator=gen, dtype=like.dtype).to(like.device)
    v /= v.norm()
    value = 0.0
    for step in range(iterations):
        hv = hvp(v)
        if progress is not None:
            progress(step + 1)
        new_value = float(v @ hv)
        norm = hv.norm()
        if norm == 0 or not torch.isfinite(norm):
            return new_value
        v = hv / norm
        if abs(new_value - value) <= tol * max(1.0, abs(new_value)):
            return new_value
        value = new_value
    return value


def _inverse_shifted(eigenvalues: torch.Tensor, damping: float) -> torch.Tensor:
    shifted = eigenvalues + damping
    if (shifted.abs() < 1e-12).any():
        raise SolverError(f"H + {damping}·I is singular; increase the damping")
    return 1.0 / shifted


class ExactSolver(InverseHessianSolver):
    """H = Q Λ Qᵀ formed once from batched Hessian-vector products and eigendecomposed (float64);
    then for any damping δ

        (H + δI)⁻¹ v = Q (Λ + δ)⁻¹ Qᵀ v.

    Affordable up to a few ten thousand parameters (`max_parameters`); `block` basis vectors per
    batched product. As in the paper, the inverse is used even where H + δI is indefinite (a
    network away from a minimum); `damped_positive_definite` in the diagnostics says whether it is.
    """

    name = "exact"
    options_read = OPTIONS_READ["exact"]
    supports_norms = True

    def _fit(self):
        p = self.theta.numel()
        limit = int(self.options.get("max_parameters", 20000))
        if p > limit:
            raise SolverError(f"exact Hessian: model has {p} parameters > max_parameters={limit}; use cg, lissa or arnoldi")
        hessian = self.objective.hessian(self.theta, block=int(self.options.get("block", 256))).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors
        self.diagnostics.update(
            num_parameters=p,
            iterations=p,  # Hessian-vector products used to form H
            eigenvalue_min=float(eigenvalues[0]),
            eigenvalue_max=float(eigenvalues[-1]),
            top_eigenvalue=float(eigenvalues.abs().max()),
            negative_eigenvalues=int((eigenvalues < 0).sum()),
        )

    def _solve(self, vectors, damping):
        inv = _inverse_shifted(self.eigenvalues, damping)
        q = self.eigenvectors
        sol = ((vectors.double() @ q) * inv) @ q.T
        self.diagnostics.update(damped_eigenvalue_min=float(self.eigenvalues[0] + damping),
                                damped_positive_definite=bool(self.eigenvalues[0] + damping > 0))
        return SolveResult(sol.to(vectors.dtype), ["ok"] * len(vectors), [{"relative_residual": 0.0} for _ in vectors])

    def solution_norms(self, vectors, damping) -> torch.Tensor:
        """‖(H + δI)⁻¹ g‖ for each row g of `vectors` (= ‖(Λ+δ)⁻¹ Qᵀ g‖)."""
        inv = _inverse_shifted(self.eigenvalues, damping)
        return ((vectors.double() @ self.eigenvectors) * inv).norm(dim=1).to(vectors.dtype)


def _cg_ritz_values(alphas: list[float], betas: list[float]) -> tuple[float, float]:
    """Extreme eigenvalues of the Lanczos tridiagonal matrix that CG builds implicitly:
    T_jj = 1/α_j + β_{j−1}/α_{j−1},  T_{j,j+1} = √β_j / α_j (Ritz values of the solved matrix)."""
    k = len(alphas)
    if k == 0:
        return math.nan, math.nan
    diag = [1.0 / alphas[0]] + [1.0 / alphas[j] + betas[j - 1] / alphas[j - 1] for j in range(1, k)]
    off = [math.sqrt(max(betas[j], 0.0)) / alphas[j] for j in range(k - 1)]
    t = torch.diag(torch.tensor(diag, dtype=torch.float64))
    if off:
        o = torch.tensor(off, dtype=torch.float64)
        t = t + torch.diag(o, 1) + torch.diag(o, -1)
    values = torch.linalg.eigvalsh(t)
    return float(values[0]), float(values[-1])


class ConjugateGradientSolver(InverseHessianSolver):
    """Solves (H + δI) s = v by conjugate gradients with Hessian-vector products only, all right-hand
    sides at once (one batched product per iteration):

        α = rᵀr / pᵀ(H+δI)p,  s ← s + αp,  r ← r − α(H+δI)p,  p ← r + (r'ᵀr'/rᵀr) p.

    Stops when the updated residual ‖r‖ ≤ tol·‖v‖ or after `max_iterations` ("not_converged");
    stops early with "negative_curvature" when pᵀ(H+δI)p ≤ 0 (CG needs a positive definite system)
    and with "non_finite" when a product is NaN or infinite. The updated r drifts from the true
    residual in finite precision, so the true one, ‖v − (H+δI)s‖/‖v‖, is computed once at the end
    (one more batched product) and reported as `relative_residual`; a solve is "ok" only if it is
    at most max(10·tol, √ε) (ε: the working precision's epsilon; float32 cannot do better than
    about √ε on an ill-conditioned system). The Ritz values of the implicit Lanczos matrix
    estimate the eigenvalue range of H.
    """

    name = "cg"
    options_read = OPTIONS_READ["cg"]

    def _solve(self, vectors, damping):
        tol = float(self.options.get("tol", 1e-8))
        max_iter = int(self.options.get("max_iterations", 1000))
        t_count, device = len(vectors), vectors.device
        x = torch.zeros_like(vectors)
        r = vectors.clone()
        p = r.clone()
        rs = (r * r).sum(1)
        v_norm = vectors.norm(dim=1)
        codes = {"not_converged": 0, "ok": 1, "negative_curvature": 2, "non_finite": 3}
        state = torch.where(v_norm == 0, codes["ok"], codes["not_converged"])
        active = state == codes["not_converged"]
        iterations = torch.zeros(t_count, dtype=torch.long, device=device)
        alphas, betas = [], []  # per iteration, [T] with NaN where a system was not iterated
        nan = torch.full((t_count,), math.nan, dtype=torch.float64, device=device)
        progress = Progress(f"{self.name}: iteration (at most)", max_iter, self.log)
        for iteration in range(max_iter):
            if not bool(active.any()):  # the loop's only host synchronisation
                break
            # every system takes the step; masks keep finished ones where they are (no re-indexing)
            ap = self._damped_hvp_many(p, damping)
            progress(iteration + 1)
            curvature = (p * ap).sum(1)
            finite = torch.isfinite(ap).all(1)
            good = (curvature > 0) & finite
            step = active & good
            alpha = torch.where(step, rs / torch.where(good, curvature, 1.0), 0.0)
            x += alpha[:, None] * p
            r -= alpha[:, None] * ap
            rs_new = (r * r).sum(1)
            beta = torch.where(step, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
            p = torch.where(step[:, None], r + beta[:, None] * p, p)
            rs = torch.where(step, rs_new, rs)
            iterations += active.long()
            alphas.append(torch.where(step, alpha.double(), nan))
            betas.append(torch.where(step, beta.double(), nan))
            converged = step & (rs_new.sqrt() <= tol * v_norm)
            state = torch.where(active & ~good, codes["negative_curvature"], state)
            state = torch.where(active & ~finite, codes["non_finite"], state)
            state = torch.where(converged, codes["ok"], state)
            active = step & ~converged
        true_residuals = (vectors - self._damped_hvp_many(x, damping)).norm(dim=1)
        residuals = torch.where(v_norm > 0, true_residuals / v_norm.clamp_min(1e-300), torch.zeros_like(v_norm))
        recurrence = torch.where(v_norm > 0, r.norm(dim=1) / v_norm.clamp_min(1e-300), torch.zeros_like(v_norm)).cpu()
        accepted = max(10 * tol, torch.finfo(vectors.dtype).eps ** 0.5)
        state = torch.where((state == codes["ok"]) & ~(residuals <= accepted), codes["not_converged"], state)
        residuals = residuals.cpu()
        names = {code: name for name, code in codes.items()}
        status = [names[int(c)] for c in state.cpu()]
        alpha_table = torch.stack(alphas, 1).cpu() if alphas else torch.zeros(t_count, 0, dtype=torch.float64)
        beta_table = torch.stack(betas, 1).cpu() if betas else torch.zeros(t_count, 0, dtype=torch.float64)
        details, low, high = [], [], []
        for t in range(t_count):
            keep = ~torch.isnan(alpha_table[t])
            ritz_min, ritz_max = _cg_ritz_values(alpha_table[t][keep].tolist(), beta_table[t][keep].tolist())
            details.append({"iterations": int(iterations[t]), "relative_residual": float(residuals[t]),
                            "updated_relative_residual": float(recurrence[t]), "status": status[t],
                            "eigenvalue_min_estimate": ritz_min - damping, "eigenvalue_max_estimate": ritz_max - damping})
            low.append(ritz_min - damping)
            high.append(ritz_max - damping)
        x[state != codes["ok"]] = math.nan
        self.diagnostics.update(solves=details, iterations=int(iterations.max()) if t_count else 0,
                                relative_residual_max=float(residuals.max()) if t_count else 0.0,
                                eigenvalue_min_estimate=min(low, default=math.nan),
                                eigenvalue_max_estimate=max(high, default=math.nan))
        return SolveResult(x, status, details)


class LissaSolver(InverseHessianSolver):
    """LiSSA (Agarwal et al. 2017), as used by Koh & Liang:

        h_0 = v,   h_j = v + (I − (H̃_j + δI)/σ) h_{j−1},   (H + δI)⁻¹ v ≈ h_J / σ,

    with H̃_j the Hessian of the objective on a random minibatch (`batch_size`; null = full batch),
    depth J, scale σ (a number, or `auto` = `scale_factor`·|λ_max(H + δI)| by power iteration),
    averaged over `repeats` runs. The series converges only if every eigenvalue of (H + δI)/σ lies
    in (0, 2); then each term is at most ‖v‖ and ‖h_j‖ ≤ (j+1)‖v‖. An iterate that turns non-finite
    or grows past `growth_limit`·(j+1)·‖v‖ (default 2) is reported "diverged", never returned: it
    is dominated by a direction of negative curvature (or σ too small), not by (H + δI)⁻¹v.
    `growth_ratio` = max_j ‖h_j‖ / ((j+1)‖v‖) is recorded for every solve.
    All right-hand sides run together (one batched product per step, the same minibatch for all).
    """

    name = "lissa"
    options_read = OPTIONS_READ["lissa"]

    def _solve(self, vectors, damping):
        depth = int(self.options.get("depth", 1000))
        scale_option = self.options.get("scale", "auto")
        repeats = int(self.options.get("repeats", 1))
        batch_size = self.options.get("batch_size")
        growth_limit = float(self.options.get("growth_limit", 2.0))
        seed = int(self.options.get("seed", 0))
        obj, theta = self.objective, self.theta
        n = obj.n
        gen = torch.Generator(device="cpu").manual_seed(seed)
        power_iterations = int(self.options.get("power_iterations", 50))
        top = top_eigenvalue(lambda u: self._damped_hvp_many(u[None], damping)[0], theta.numel(), theta,
                             iterations=power_iterations,
                             progress=Progress(f"{self.name}: power iteration (at most)", power_iterations, self.log))
        # "auto": σ = scale_factor · |λ_max(H + δI)| from power iteration (a safe margin)
        scale = float(self.options.get("scale_factor", 1.5)) * abs(top) if scale_option == "auto" else float(scale_option)
        self.diagnostics.update(top_eigenvalue_damped=top, eigenvalue_max_estimate=top - damping, scale=scale,
                                scale_exceeds_top_eigenvalue=bool(scale > abs(top)), depth=depth, repeats=repeats,
                                iterations=depth * repeats)
        t_count = len(vectors)
        alive = torch.ones(t_count, dtype=torch.bool, device=vectors.device)
        v_norm = vectors.norm(dim=1).clamp_min(1e-30)
        growth = torch.zeros(t_count, dtype=vectors.dtype, device=vectors.device)  # max_j ‖h_j‖ / ((j+1)‖v‖)
        diverged_at = [None] * t_count
        total = torch.zeros_like(vectors)
        last_change = torch.full((t_count,), math.nan, dtype=torch.float64)
        progress = Progress(f"{self.name}: series step", depth * repeats, self.log)
        for repeat in range(repeats):
            h = vectors.clone()
            for j in range(depth):
                rows = None
                if batch_size and batch_size < n:
                    rows = torch.randint(0, n, (int(batch_size),), generator=gen).to(vectors.device)
                idx = torch.nonzero(alive).flatten()
                if len(idx) == 0:
                    break
                hi = h[idx]
                new_h = vectors[idx] + hi - self._damped_hvp_many(hi, damping, rows) / scale
                last_change[idx.cpu()] = ((new_h - hi).norm(dim=1) / new_h.norm(dim=1).clamp_min(1e-30)).double().cpu()
                ratio = new_h.norm(dim=1) / ((j + 2) * v_norm[idx])  # h_{j+1} has j + 2 terms
                growth[idx] = torch.maximum(growth[idx], ratio)
                h[idx] = new_h
                bad = ~torch.isfinite(new_h).all(dim=1) | (ratio > growth_limit)
                for t in idx[bad].tolist():
                    alive[t] = False
                    diverged_at[t] = j + 1
                progress(repeat * depth + j + 1)
            total += torch.where(alive[:, None], h / scale, torch.zeros_like(h))
        status = ["ok" if bool(a) else "diverged" for a in alive]
        solutions = total / repeats
        solutions[~alive] = math.nan
        details = [{"status": status[t], "iterations": depth * repeats if diverged_at[t] is None else diverged_at[t],
                    "diverged_at_step": diverged_at[t], "last_relative_change": float(last_change[t]),
                    "growth_ratio": float(growth[t])}
                   for t in range(t_count)]
        self.diagnostics.update(solves=details)
        return SolveResult(solutions, status, details)


class ArnoldiSolver(InverseHessianSolver):
    """Arnoldi (Schioppa et al. 2022): `iterations` steps of Arnoldi with Hessian-vector products
    build an orthonormal Krylov basis Q_m and the projected matrix T = Q_mᵀ H Q_m (Hessenberg,
    symmetrised since H is symmetric); its eigenpairs T = W Λ Wᵀ give Ritz vectors U = Q_m W.
    Keeping the top-`rank` pairs by |λ|,

        (H + δI)⁻¹ v ≈ U_r diag(1/(λ_r + δ)) U_rᵀ v.

    A breakdown (the new direction lies in the span, relative norm < `tol`) restarts from a fresh
    random vector orthogonal to the basis, so `iterations = rank = p` recovers the exact solve.
    The Ritz residual ‖HU_i − λ_i U_i‖ = |T_{m+1,m}|·|W_{m,i}| is recorded for every kept pair.
    """

    name = "arnoldi"
    options_read = OPTIONS_READ["arnoldi"]
    supports_norms = True

    def _fit(self):
        theta = self.theta
        p = theta.numel()
        m = min(int(self.options.get("iterations", 100)), p)
        rank = min(int(self.options.get("rank", 50)), m)
        tol = float(self.options.get("tol", 1e-6))
        gen = torch.Generator(device="cpu").manual_seed(int(self.options.get("seed", 0)))

        def random_unit():
            v = torch.randn(p, generator=gen, dtype=theta.dtype).to(theta.device)
            return v / v.norm()

        basis = torch.zeros(m, p, dtype=theta.dtype, device=theta.device)
        hess = torch.zeros(m + 1, m, dtype=torch.float64)
        basis[0] = random_unit()
        restarts = 0
        progress = Progress(f"{self.name}: iteration", m, self.log)
        for j in range(m):
            w = self._damped_hvp_many(basis[j][None], 0.0)[0]
            progress(j + 1)
            w_norm = w.norm()
            for _ in range(2):  # orthogonalise twice: "twice is enough"
                coeffs = basis[: j + 1] @ w
                w = w - coeffs @ basis[: j + 1]
                hess[: j + 1, j] += coeffs.double().cpu()
            beta = w.norm()
            hess[j + 1, j] = float(beta)
            if j + 1 == m:
                break
            if beta > tol * max(float(w_norm), 1e-30):
                basis[j + 1] = w / beta
                continue
            restarts += 1  # invariant subspace found: continue from a new orthogonal direction
            hess[j + 1, j] = 0.0
            r = random_unit()
            for _ in range(2):
                r = r - (basis[: j + 1] @ r) @ basis[: j + 1]
            basis[j + 1] = r / r.norm()
        projected = hess[:m, :m]
        projected = 0.5 * (projected + projected.T)
        values, vectors = torch.linalg.eigh(projected)
        keep = torch.argsort(values.abs(), descending=True)[:rank]
        values, vectors = values[keep], vectors[:, keep]
        self.eigenvalues = values.to(theta.device)  # on θ's device, like the exact solver's
        self.ritz_vectors = vectors.T.to(device=theta.device) @ basis.double()  # [rank, p]
        ritz_residuals = hess[m, m - 1].abs() * vectors[m - 1].abs()
        self.diagnostics.update(
            num_parameters=p, iterations=m, rank=len(values), restarts=restarts,
            eigenvalue_min=float(values.min()), eigenvalue_max=float(values.max()),
            top_eigenvalue=float(values.abs().max()), negative_eigenvalues=int((values < 0).sum()),
            ritz_residual_max=float(ritz_residuals.max()),
        )

    def _solve(self, vectors, damping):
        inv = _inverse_shifted(self.eigenvalues, damping)
        u = self.ritz_vectors
        sol = ((vectors.double() @ u.T) * inv) @ u
        return SolveResult(sol.to(vectors.dtype), ["ok"] * len(vectors),
                           [{"iterations": self.diagnostics["iterations"]} for _ in vectors])

    def solution_norms(self, vectors, damping) -> torch.Tensor:
        """‖U diag(1/(λ+δ)) Uᵀ g‖ = ‖diag(1/(λ+δ)) Uᵀ g‖ (U has orthonormal rows)."""
        inv = _inverse_shifted(self.eigenvalues, damping)
        return ((vectors.double() @ self.ritz_vectors.T) * inv).norm(dim=1).to(vectors.dtype)
