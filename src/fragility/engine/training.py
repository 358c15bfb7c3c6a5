"""Training of k parameter copies at once, for the original model and for leave-one-out re-training.

Each copy c minimises its own objective on the same minibatch sequence,

    R_c(θ_c) = (1/m) Σ_{i ∈ batch} w_ci ℓ(z_i, θ_c) + (λ/2) ‖θ_c‖²,

where the weights w_c ∈ {0,1}^n mark which training points copy c may see (all ones for θ* and
for the no-removal drift control; zero at index j for the copy that leaves j out), and m is the
number of rows the copy sees (`loss_mean_over: kept`, the default: the mean loss of the training
set minus z) or of all rows of the batch (`all`: full-batch, (1/n) Σ_{i≠j} ℓ_i + (λ/2)‖θ‖², the
objective whose change influence functions linearise). With decay the two re-trained optima
differ by a vector common to every copy, H⁻¹λθ*/n to first order (the decay term weighs n/(n−1)
more under `kept`): loss-change correlations do not see it, ‖θ₋z − θ*‖ does. The copies
are stacked into one leaf tensor Θ ∈ R^{k×p}, their objectives are evaluated under
`torch.func.vmap` and summed; because the optimisers used here (gradient descent, SGD with
momentum, Adam) act element-wise and decay is part of the loss, one optimiser step on Θ is
exactly k independent steps. Decay is in the loss, not the optimiser, so θ* minimises R(θ).
For a plain MLP chain (FlatModel.chain) and a Task that scores rows independently, the k
objectives are evaluated on CPU as broadcast matrix products on the stacked weights instead of
under vmap: the same operations, the same bits (tested), less per-operation overhead. For such a
chain and a built-in task the gradient ∇Σ_c R_c is written out (flat.ChainGradient: the kernels
autograd's backward runs, the same bits, tested) instead of recording a graph every step, and the
loss is evaluated only at the logged steps.

BatchNorm in train mode normalises with the statistics of the minibatch rows copy c may see,

    μ_c = Σ_b w_cb x_b / Σ_b w_cb,   σ²_c = Σ_b w_cb (x_b − μ_c)² / Σ_b w_cb,

so a removed point leaves no trace in the batch statistics either, and every copy keeps its own
running statistics (buffers stacked [k, ...], updated in place under vmap).

Random operations in `forward` (dropout) draw from the global generator seeded, for the duration
of each step, with a hash of (order seed, step) (`step_seed`; the global state is restored when
training ends), and the copies share the draws (vmap's `randomness="same"`). Every copy of a chunk,
the drift control (trained alone) and a rerun thus see the same masks at each step, as they see
the same minibatches (common random numbers): a copy that leaves nothing out equals the drift
control. Models without random operations compute exactly what they computed without the seeding.

With `pbrf` (a `ProximalBregman`) each copy minimises the proximal Bregman response objective
instead (engine/pbrf.py): the same loop, batches and checkpoints, the model in eval mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.func import vmap

from ..io import load_torch, save_torch
from .flat import ChainGradient, FlatModel
from .pbrf import ProximalBregman


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainSettings:
    """Optimiser and schedule. `batch_size: None` means full-batch gradient descent."""

    steps: int
    lr: float
    optimizer: str = "gd"  # gd | sgd | adam
    momentum: float = 0.0
    batch_size: int | None = None
    schedule: str = "constant"  # constant | cosine
    order_seed: int = 0  # seeds the minibatch order (shared by all copies)
    check_every: int = 100
    checkpoint_every: int = 0  # 0: never
    loss_mean_over: str = "kept"  # kept | all: the rows a copy's batch loss is averaged over (module docstring)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.loss_mean_over not in ("kept", "all"):
            raise ValueError(f"loss_mean_over must be 'kept' or 'all', got '{self.loss_mean_over}'")

    # the config keys (of a `train` or `loo` block) that set a field of the same name
    CONFIG_KEYS = ("lr", "optimizer", "momentum", "batch_size", "schedule", "check_every", "checkpoint_every",
                   "loss_mean_over")

    @classmethod
    def from_config(cls, cfg: dict, steps: int | None = None, order_seed: int = 0) -> "TrainSettings":
        known = {k: cfg[k] for k in cls.CONFIG_KEYS if k in cfg}
        return cls(steps=int(steps if steps is not None else cfg["steps"]), order_seed=order_seed, **known)


def batch_rows(step: int, n: int, batch_size: int | None, seed: int, device) -> torch.Tensor | None:
    """Rows of the minibatch at `step`: a seeded permutation per epoch, so any step's batch can be
    recomputed after a restart. None means the full batch."""
    if not batch_size or batch_size >= n:
        return None
    per_epoch = math.ceil(n / batch_size)
    epoch, position = divmod(step, per_epoch)
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return perm[position * batch_size : (position + 1) * batch_size].to(device)


def run_fingerprint(x: torch.Tensor, y: torch.Tensor, decay: float, theta_init: torch.Tensor, weights: torch.Tensor,
                    settings: TrainSettings) -> str:
    """A digest of what determines a run's numbers: the settings (less the logging and checkpoint
    intervals), the decay, the starting parameters, the row weights (which points each copy
    leaves out), the labels, and the shape and 4,096 evenly spaced values of the inputs. A
    checkpoint whose digest differs belongs to another run and is not resumed."""
    fields = {key: value for key, value in asdict(settings).items() if key not in ("check_every", "checkpoint_every")}
    digest = hashlib.sha256(json.dumps({"settings": fields, "decay": float(decay), "x": [list(x.shape), str(x.dtype)]},
                                       sort_keys=True, default=str).encode())
    flat_x = x.detach().reshape(-1)
    sample = flat_x[:: max(1, flat_x.numel() // 4096)]
    for tensor in (theta_init, weights, y, sample):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def step_seed(order_seed: int, step: int) -> int:
    """The seed of the random operations (dropout masks) at `step` of a run with minibatch order
    `order_seed`: the first 63 bits of SHA-256("random-ops <order_seed> <step>")."""
    digest = hashlib.sha256(f"random-ops {int(order_seed)} {int(step)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _cuda_devices(device) -> list[int]:
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def seed_random_ops(seed: int, device) -> None:
    """Seed the CPU generator (and that of `device` if it is a GPU) with `seed`."""
    torch.default_generator.manual_seed(seed)
    for index in _cuda_devices(device):
        with torch.cuda.device(index):
            torch.cuda.manual_seed(seed)


def restored_generators(device, enabled: bool = True):
    """A context that restores the CPU generator's (and `device`'s) state on exit, so nothing
    outside sees the seeding inside."""
    return torch.random.fork_rng(devices=_cuda_devices(device), enabled=enabled, device_type="cuda")


@contextlib.contextmanager
def seeded_random_ops(seed: int, device):
    """Run the body with the generators seeded with `seed`, their states restored on exit."""
    with restored_generators(device):
        seed_random_ops(seed, device)
        yield


class _PlainStep:
    """θ ← θ − η ∇R(θ): torch.optim.SGD with momentum 0 under a constant schedule on CPU, the same
    operation (`add_(grad, alpha=-lr)`, so the same bits) without the optimiser's and scheduler's
    per-step bookkeeping, and without the import of torch._dynamo that constructing any
    torch.optim optimiser triggers (about 2 s of CPU per job). Stateless, so its checkpoint entries
    are empty and a resume needs only the step."""

    def __init__(self, params, lr: float):
        self.params, self.lr = list(params), float(lr)

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class _NoSchedule:
    def step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


PLAIN_STEP = True  # use _PlainStep where it computes what torch.optim.SGD computes (tests compare both)
STACKED_CHAIN = True  # k > 1 copies of a plain MLP chain: batched products instead of vmap (tests compare both)
CHAIN_GRADIENT = True  # plain MLP chains: the gradient written out instead of autograd (tests compare both)


def _chain_gradient_applies(net: FlatModel, thetas: torch.Tensor, x: torch.Tensor, k: int, pbrf) -> bool:
    """The written-out gradient (ChainGradient) stands in for autograd's where its bits are
    tested: a plain chain with weights and without hooks on 2-D inputs, a task that writes out
    ∂ℓ/∂h, not PBRF, on CPU, one copy or the stacked path (`STACKED_CHAIN`) for k > 1."""
    return (CHAIN_GRADIENT and pbrf is None and net.chain is not None and not net.hooked() and x.dim() == 2
            and any(kind == "linear" for kind, _ in net.chain)
            and net.task.writes_out_gradient() and thetas.device.type == "cpu"
            and (k == 1 or (STACKED_CHAIN and net.task.rows_independent)))


def _plain_step_applies(params, settings: TrainSettings) -> bool:
    """GD/SGD with momentum 0 and a constant schedule, on CPU: there torch.optim.SGD takes its
    single-tensor path, `param.add_(grad, alpha=-lr)` (on CUDA its foreach kernel, not checked
    against this step, so CUDA keeps torch.optim)."""
    return (PLAIN_STEP and settings.optimizer in ("gd", "sgd") and settings.momentum == 0
            and settings.schedule == "constant" and all(p.device.type == "cpu" for p in params))


def _make_optimizer(params, settings: TrainSettings):
    if _plain_step_applies(params, settings):
        return _PlainStep(params, settings.lr)
    if settings.optimizer in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr)
    raise ValueError(f"train.optimizer must be gd, sgd or adam, got '{settings.optimizer}'")


def _make_schedule(optimizer, settings: TrainSettings):
    if isinstance(optimizer, _PlainStep):
        return _NoSchedule()
    if settings.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if settings.schedule == "cosine":
        total = max(settings.steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    raise ValueError(f"train.schedule must be constant or cosine, got '{settings.schedule}'")


class _RowWeights:
    """Holds the row weights of the copy being evaluated, for the masked BatchNorm below."""

    value: torch.Tensor | None = None


def _masked_batch_norm_forward(module: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor, holder: _RowWeights):
    """BatchNorm with weighted batch statistics (weights = the copy's row weights), the running
    statistics updated as torch does (momentum, or a cumulative average when momentum is None;
    unbiased variance for the running estimate)."""
    if not module.training or holder.value is None:
        return type(module).forward(module, x)
    dims = [0] + list(range(2, x.dim()))
    w = holder.value.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    per_row = x[0, 0].numel() if x.dim() > 2 else 1
    count = w.sum() * per_row
    mean = (w * x).sum(dims) / count
    shape = [1, -1] + [1] * (x.dim() - 2)
    centred = x - mean.reshape(shape)
    var = (w * centred.pow(2)).sum(dims) / count
    if module.track_running_stats and module.running_mean is not None:
        with torch.no_grad():
            module.num_batches_tracked.add_(1)
            factor = module.momentum if module.momentum is not None else 1.0 / module.num_batches_tracked.to(x.dtype)
            unbiased = var.detach() * count / (count - 1).clamp_min(1.0)
            module.running_mean.mul_(1 - factor).add_(factor * mean.detach())
            module.running_var.mul_(1 - factor).add_(factor * unbiased)
    out = centred / torch.sqrt(var.reshape(shape) + module.eps)
    if module.affine:
        out = out * module.weight.reshape(shape) + module.bias.reshape(shape)
    return out


@contextlib.contextmanager
def _masked_batch_norm(model: torch.nn.Module, holder: _RowWeights):
    """Route every BatchNorm layer of `model` through `_masked_batch_norm_forward` for the duration."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.forward = types.MethodType(lambda self, x: _masked_batch_norm_forward(self, x, holder), m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


@dataclass
class TrainResult:
    thetas: torch.Tensor  # [k, p] final parameters
    buffers: dict  # name -> [k, ...] final buffers (BatchNorm statistics)
    final_losses: list[float]
    seconds: float
    history: list[dict]
    # with `keep_steps`: {"step", "lr" (the learning rate of the step that follows it), "thetas" [k, p],
    # "buffers"} at each kept step
    kept: list[dict] = field(default_factory=list)


def train_copies(
    net: FlatModel,
    x: torch.Tensor,
    y: torch.Tensor,
    decay: float,
    theta_init: torch.Tensor,
    weights: torch.Tensor,
    settings: TrainSettings,
    checkpoint_path: str | Path | None = None,
    log=print,
    pbrf: ProximalBregman | None = None,
    keep_steps: tuple[int, ...] = (),
) -> TrainResult:
    """Train k copies (rows of `theta_init` [k, p], weights [k, n]) for `settings.steps` steps.

    If `checkpoint_path` is set, the state is saved atomically every `checkpoint_every` steps and
    a run that finds a checkpoint of the same run (`run_fingerprint`) resumes from it, with the
    result of an uninterrupted run. A checkpoint of another run (say, the config's learning rate
    changed after a killed job) is reported and replaced, never resumed.

    With `pbrf` the copies minimise `pbrf.copy_objective` (the decay is then part of its proximal
    term, `decay` is not used) with the model in eval mode (BatchNorm on running statistics, as
    influence functions see the network).
    """
    k, n = weights.shape
    model = net.model
    model.train(pbrf is None)
    thetas = torch.nn.Parameter(theta_init.detach().clone())
    buffers = {name: b.detach().clone().unsqueeze(0).repeat(k, *[1] * b.dim()) for name, b in net.buffers.items()}
    optimizer = _make_optimizer([thetas], settings)
    schedule = _make_schedule(optimizer, settings)
    start_step, history, kept = 0, [], []

    fingerprint = run_fingerprint(x, y, decay, theta_init, weights, settings) if checkpoint_path else None
    if fingerprint and pbrf is not None:
        fingerprint = hashlib.sha256((fingerprint + pbrf.fingerprint()).encode()).hexdigest()
    state = None
    if checkpoint_path and Path(checkpoint_path).exists():
        state = load_torch(checkpoint_path, required_keys=("step", "thetas", "optimizer", "schedule", "buffers"),
                           remedy="delete it: it is only a resume checkpoint, and the job starts from step 0 without it")
        if state.get("fingerprint") != fingerprint:
            log(f"checkpoint {checkpoint_path} was written by another run (different settings, data, starting point "
                "or removed points); starting from step 0 and replacing it")
            state = None
        elif keep_steps and "kept" not in state and min(keep_steps) <= int(state["step"]):
            log(f"checkpoint {checkpoint_path} was written without the parameters this run keeps (train.keep_checkpoints); "
                "starting from step 0 and replacing it")
            state = None
    if state is not None:
        if state["thetas"].shape != thetas.shape:
            raise RuntimeError(f"checkpoint {checkpoint_path} holds parameters of shape {tuple(state['thetas'].shape)}, expected {tuple(thetas.shape)}; delete it")
        with torch.no_grad():
            thetas.copy_(state["thetas"].to(thetas.device))
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        buffers = {n_: b.to(thetas.device) for n_, b in state["buffers"].items()}
        start_step, history = int(state["step"]), state.get("history", [])
        kept = state.get("kept", [])
        log(f"resuming from checkpoint {checkpoint_path} at step {start_step}")

    row_weights = _RowWeights()

    def copy_objective(theta, bufs, w, xb, yb):
        row_weights.value = w
        logits = net.logits(theta, xb, bufs)
        losses = net.task.per_sample_loss(logits, yb)
        count = w.sum().clamp_min(1.0) if settings.loss_mean_over == "kept" else w.shape[-1]
        return (losses * w).sum() / count + 0.5 * decay * theta.pow(2).sum()

    if pbrf is not None:
        def copy_objective(theta, bufs, w, xb, yb, rows=None, removal=None):  # noqa: F811
            return pbrf.copy_objective(net, theta, bufs, xb, rows, removal)

    if k == 1:  # a single copy: the same objective without vmap's per-operation overhead (~1.6x faster)

        def batched(thetas, buffers, wb, xb, yb, rows=None):
            extra = (rows, pbrf.removal(0)) if pbrf is not None else ()
            return copy_objective(thetas[0], {n_: b[0] for n_, b in buffers.items()}, wb[0], xb, yb, *extra)[None]

    elif pbrf is not None:
        def batched(thetas, buffers, wb, xb, yb, rows=None):
            return vmap(lambda th, bu, w, rx, ry, rw: copy_objective(th, bu, w, xb, yb, rows, (rx, ry, rw)),
                        in_dims=0, randomness="same")(thetas, buffers, wb, pbrf.removal_x, pbrf.removal_y, pbrf.removal_weights)
    elif (STACKED_CHAIN and net.chain is not None and net.task.rows_independent and not net.hooked()
          and thetas.device.type == "cpu"):
        # a plain MLP chain: the copies' objectives as batched products, the numbers of the vmap
        # below to the bit on CPU (tested), without its per-operation overhead (~1.5x faster);
        # CUDA keeps vmap (its batched kernels are not checked against these bits)
        def batched(thetas, buffers, wb, xb, yb, rows=None):
            logits = net.stacked_logits(thetas, xb)
            losses = net.task.per_sample_loss(logits.reshape(-1, *logits.shape[2:]), yb.repeat(k, *[1] * (yb.dim() - 1)))
            losses = losses.reshape(k, -1)
            count = wb.sum(1).clamp_min(1.0) if settings.loss_mean_over == "kept" else wb.shape[-1]
            return (losses * wb).sum(1) / count + 0.5 * decay * thetas.pow(2).sum(1)
    else:
        vmapped = vmap(copy_objective, in_dims=(0, 0, 0, None, None), randomness="same")  # shared dropout masks

        def batched(thetas, buffers, wb, xb, yb, rows=None):
            return vmapped(thetas, buffers, wb, xb, yb)
    chain_gradient = (ChainGradient(net, thetas, decay, settings.loss_mean_over == "kept")
                      if _chain_gradient_applies(net, thetas, x, k, pbrf) else None)
    # a plain chain has no random operation: it skips the per-step seeding (its numbers would not change)
    random_ops = net.chain is None
    began = time.perf_counter()
    losses = torch.full((k,), math.nan)
    with _masked_batch_norm(model, row_weights), restored_generators(thetas.device, enabled=random_ops):
        for step in range(start_step, settings.steps):
            rows = batch_rows(step, n, settings.batch_size, settings.order_seed, x.device)
            xb, yb, wb = (x, y, weights) if rows is None else (x[rows], y[rows], weights[:, rows])
            done = step + 1
            logged = done % settings.check_every == 0 or done == settings.steps
            optimizer.zero_grad(set_to_none=True)
            if chain_gradient is not None:  # the same gradient, written out (ChainGradient); the loss only when logged
                thetas.grad = chain_gradient(xb, yb, wb)
                if logged:
                    with torch.no_grad():
                        losses = batched(thetas, buffers, wb, xb, yb, rows)
            else:
                if random_ops:  # the step's dropout masks: from (order seed, step) only
                    seed_random_ops(step_seed(settings.order_seed, step), thetas.device)
                losses = batched(thetas, buffers, wb, xb, yb, rows)
                losses.sum().backward()
            optimizer.step()
            schedule.step()
            if done in keep_steps:
                lr = optimizer.lr if isinstance(optimizer, _PlainStep) else optimizer.param_groups[0]["lr"]
                kept.append({"step": done, "lr": float(lr),
                             "thetas": thetas.detach().cpu().clone(),
                             "buffers": {n_: b.detach().cpu().clone() for n_, b in buffers.items()}})
            if logged:
                values = losses.detach().cpu()
                if not torch.isfinite(values).all():
                    bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
                    raise NonFiniteLossError(
                        f"training loss became non-finite ({values[bad[0]].item()}) at step {done} for copy {bad[0]}; "
                        f"lower train.lr (now {settings.lr}) or check the data"
                    )
                history.append({"step": done, "loss_mean": float(values.mean()), "loss_max": float(values.max())})
                elapsed = time.perf_counter() - began
                left = elapsed / (done - start_step) * (settings.steps - done)
                log(f"step {done}/{settings.steps}: loss {values.mean():.6g}" + (f" (max over {k} copies {values.max():.6g})"
                    if k > 1 else "") + f", {elapsed:.0f} s so far, about {left:.0f} s left")
            if checkpoint_path and settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
                save_torch({"step": done, "fingerprint": fingerprint, "thetas": thetas.detach().cpu(),
                            "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "buffers": {n_: b.cpu() for n_, b in buffers.items()},
                            "history": history, **({"kept": kept} if keep_steps else {})}, checkpoint_path)
    if not torch.isfinite(thetas).all():  # the loss checked above was taken before the last step
        bad = torch.nonzero(~torch.isfinite(thetas).all(dim=1)).flatten().tolist()
        raise NonFiniteLossError(f"parameters became non-finite in the last step for copy {bad[0]}; "
                                 f"lower train.lr (now {settings.lr}) or check the data")
    model.eval()
    return TrainResult(thetas.detach(), {n_: b.detach() for n_, b in buffers.items()},
                       [float(v) for v in losses.detach().cpu()], time.perf_counter() - began, history, kept)


def train_in_passes(net: FlatModel, x, y, decay: float, theta_init, weights, settings: TrainSettings,
                    copies_per_pass: int | None, checkpoint_path: str | Path | None = None, log=print,
                    pbrf: ProximalBregman | None = None):
    """`train_copies` on groups of `copies_per_pass` copies, one group after another (None: all at
    once). The copies are independent, so the numbers are those of one pass; on CPU a few copies
    per pass keep the work in cache. Returns the joined result and the checkpoint path of each pass."""
    k = len(weights)
    per_pass = int(copies_per_pass or k)
    starts = range(0, k, per_pass)
    checkpoints = [checkpoint_path if per_pass >= k or not checkpoint_path else f"{checkpoint_path}.pass{i}"
                   for i in range(len(starts))]
    passes = [train_copies(net, x, y, decay, theta_init[s : s + per_pass], weights[s : s + per_pass], settings,
                           checkpoint_path=ckpt, log=log,
                           pbrf=None if pbrf is None else pbrf.copies(slice(s, s + per_pass)))
              for s, ckpt in zip(starts, checkpoints)]
    joined = TrainResult(torch.cat([r.thetas for r in passes]),
                         {name: torch.cat([r.buffers[name] for r in passes]) for name in passes[0].buffers},
                         [loss for r in passes for loss in r.final_losses], sum(r.seconds for r in passes),
                         [h for r in passes for h in r.history])
    return joined, checkpoints
