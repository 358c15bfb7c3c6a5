"""The one re-training of every ground truth: k copies of a trained cell, each with its own row
weights, from θ* or from the cell's seeded initialisation, on the training objective or on PBRF's.

Copy c removes the set U_c: its row weights are w_ci = `removal_weight` for i ∈ U_c (0: removed)
and 1 otherwise, and it minimises

    training objective:  R_c(θ) = (1/m) Σ_{i ∈ batch} w_ci ℓ(z_i, θ) + (λ/2) ‖θ‖²   (engine/training.py)
    PBRF objective:      (1/n) Σ_i D(h(θ, x_i), h(θ*, x_i)) + ε Σ_{j∈U_c} ℓ(z_j, θ) + (λ_p/2) ‖θ − θ*‖²
                         with ε = −s/n and λ_p = λ + δ                                 (engine/pbrf.py)

with the batched trainer (`train_in_passes`: the same minibatch order for every copy, checkpoints
with the run fingerprint) or, for PBRF with `solver: lbfgs`, L-BFGS to convergence. Then every
copy's measurement (the Task's; the loss by default) at the cell's tracked test points and its
distance ‖θ_c − θ*‖ are taken. The length is one resolution for every truth (`retraining_steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..data.split import Split
from ..engine.flat import FlatModel, differentiable_attention
from ..engine.training import TrainSettings, train_in_passes
from ..io import read_json, write_parquet
from ..models.registry import init_from_spec
from ..runtime import resolve_device
from ..study.grid import length_keys
from ..study.pipeline import _tensors, load_trained


def retraining_steps(length_cfg: dict, retrain_cfg: dict, n: int, block: str = "loo") -> int:
    """Length of a re-training: `steps`, or `epochs` passes over the n training points:
    ceil(epochs · ceil(n / b)) steps with b the re-training's batch size (full batch: b = n), as
    an epoch of `training.batch_rows` is ceil(n / b) minibatches of one permutation."""
    length = length_keys(length_cfg)
    if len(length) != 1:
        raise ValueError(f"{block}: set exactly one of {block}.steps and {block}.epochs")
    if length == ["steps"]:
        return int(length_cfg["steps"])
    batch = min(int(retrain_cfg.get("batch_size") or n), n)
    return max(1, math.ceil(float(length_cfg["epochs"]) * math.ceil(n / batch)))


def sets_length(cfg: dict) -> bool:
    """Whether a block sets the re-training length itself (`steps` or `epochs`, not null)."""
    return bool(length_keys(cfg))


def retraining_settings(train_cfg: dict, loo_cfg: dict, truth_cfg: dict, truth: str, n: int, order_seed: int,
                        seed: int) -> TrainSettings:
    """The optimiser and length of a truth's re-training. `start: theta_star` (default): train's
    settings with loo's optimiser keys over them and the truth's own over those; the length is the
    truth's `steps`/`epochs` if it sets one, else loo's; minibatch order `order_seed`. `start:
    scratch`: the original training (train's settings and steps, the cell's `seed` as order)."""
    if truth_cfg.get("start", "theta_star") == "scratch":
        return TrainSettings.from_config(train_cfg, order_seed=int(seed))
    keys = TrainSettings.CONFIG_KEYS
    merged = {**train_cfg, **{k: v for k, v in loo_cfg.items() if k in keys},
              **{k: v for k, v in truth_cfg.items() if k in keys}}
    length, block = (truth_cfg, truth) if sets_length(truth_cfg) else (loo_cfg, "loo")
    return TrainSettings.from_config(merged, steps=retraining_steps(length, merged, n, block), order_seed=order_seed)


def measurements(net: FlatModel, thetas, buffers, xt, yt, test_idx) -> torch.Tensor:
    """The Task's measurement at the tracked test points for every copy, [k, T]."""
    idx = torch.tensor(test_idx, device=xt.device)
    out = []
    with torch.no_grad():
        for c in range(len(thetas)):
            bufs = {name: b[c] for name, b in buffers.items()} if buffers else None
            out.append(net.task.measurement(net.logits(thetas[c], xt[idx], bufs), yt[idx]).cpu())
    return torch.stack(out)


@dataclass
class Retrained:
    """k re-trained copies: parameters [k, p], buffers (name → [k, ...], or None: the model's own),
    final objectives, the tracked test points and every copy's measurement there [k, T], ‖θ_c − θ*‖,
    θ*, the seconds the training took (NaN for L-BFGS) and, for PBRF, gradient norms and iterations."""

    thetas: torch.Tensor
    buffers: dict | None
    final_objectives: list
    test_index: list
    measured: torch.Tensor
    distances: list
    theta_star: torch.Tensor
    seconds: float
    gradient_norms: list = field(default_factory=list)
    iterations: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)

    def write(self, rows: list[dict], out_path) -> None:
        """Write a chunk's table, then remove the resume checkpoints (only once the table exists)."""
        write_parquet(pd.DataFrame(rows), out_path)
        for ckpt in self.checkpoints:
            if ckpt and Path(ckpt).exists():
                Path(ckpt).unlink()


@differentiable_attention()  # PBRF's Gauss-Newton terms and eval-mode forward: no fused attention kernels
def retrain(model_path, data_path, test_points_path, removed: list[list[int]], train_cfg: dict, loo_cfg: dict,
            truth_cfg: dict | None = None, truth: str = "loo", removal_weight: float = 0.0, objective: str = "training",
            damping: float = 0.0, device_name="auto", order_seed: int = 0, checkpoint_path=None, log=print) -> Retrained:
    """Re-train one copy per entry of `removed` (lists of training indices, [] removes nothing).
    `truth_cfg` (default: `loo_cfg`) is the truth's block: its optimiser keys, `steps`/`epochs`,
    `start` (theta_star | scratch), `copies_per_pass` (default loo's) and, for `objective: pbrf`,
    `epsilon_scale` s, `solver` (train | lbfgs), `lbfgs_iterations` and `tolerance`; λ_p = decay + `damping`."""
    truth_cfg = loo_cfg if truth_cfg is None else truth_cfg
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, theta.dtype, device)
    test_idx = sorted({p["index"] for p in read_json(test_points_path)["test_points"]})
    n, k = len(y), len(removed)
    for group in removed:
        for i in group:
            if not 0 <= int(i) < n:
                raise ValueError(f"training index {i} out of range (n = {n})")
    copies_per_pass = truth_cfg["copies_per_pass"] if "copies_per_pass" in truth_cfg else loo_cfg.get("copies_per_pass")
    start = truth_cfg.get("start", "theta_star")
    what = f"{k} {truth} copies of {record['arch']}"
    gradient_norms, iterations, checkpoints = [], [], []
    if objective == "pbrf":
        from ..engine.pbrf import objective_gradient_norms, removal_terms, solve_lbfgs

        scale = float(truth_cfg["epsilon_scale"])
        terms = removal_terms(net, theta, x, y, [[int(i) for i in group] for group in removed], scale,
                              float(record["decay"]) + float(damping))
        iterations = [math.nan] * k
        if truth_cfg["solver"] == "lbfgs":
            log(f"{what}: PBRF by L-BFGS, ε = −{scale:g}/n")
            thetas, values, gradient_norms, iterations = solve_lbfgs(
                net, x, terms, theta.repeat(k, 1), int(truth_cfg["lbfgs_iterations"]), float(truth_cfg["tolerance"]))
            seconds = math.nan
        else:
            settings = retraining_settings(train_cfg, loo_cfg, truth_cfg, truth, n, order_seed, int(record["seed"]))
            log(f"{what}: PBRF for {settings.steps} steps, ε = −{scale:g}/n")
            result, checkpoints = train_in_passes(net, x, y, 0.0, theta.repeat(k, 1),
                                                  torch.ones(k, n, dtype=theta.dtype, device=device), settings,
                                                  copies_per_pass, checkpoint_path=checkpoint_path, log=log, pbrf=terms)
            thetas, values, seconds = result.thetas, result.final_losses, result.seconds
            # the full-batch gradient of every copy costs about n/batch steps: only for small nets
            gradient_norms = (objective_gradient_norms(net, x, terms, thetas) if n * net.num_parameters <= 10**6
                              else [math.nan] * k)
        buffers = None  # PBRF sees the network in eval mode: the model's own BatchNorm statistics
    elif objective == "training":
        weights = torch.ones(k, n, dtype=theta.dtype, device=device)
        for c, group in enumerate(removed):
            weights[c, torch.tensor([int(i) for i in group], dtype=torch.long, device=device)] = float(removal_weight)
        settings = retraining_settings(train_cfg, loo_cfg, truth_cfg, truth, n, order_seed, int(record["seed"]))
        begin = theta
        if start == "scratch":
            spec, options, key = record["factory"]
            model = init_from_spec(spec, options, key, tuple(record["input_shape"]), record["n_classes"],
                                   seed=int(record["seed"]), dtype=theta.dtype).to(device)
            net = FlatModel(model, net.task)
            begin = net.flatten()
        log(f"re-training {what} from {start} for {settings.steps} steps")
        result, checkpoints = train_in_passes(net, x, y, record["decay"], begin.repeat(k, 1), weights, settings,
                                              copies_per_pass, checkpoint_path=checkpoint_path, log=log)
        thetas, buffers, values, seconds = result.thetas, result.buffers, result.final_losses, result.seconds
    else:
        raise ValueError(f"{truth}: unknown re-training objective '{objective}' (training or pbrf)")
    measured = measurements(net, thetas, buffers, xt, yt, test_idx)
    distances = [float((thetas[c] - theta).norm()) for c in range(k)]
    return Retrained(thetas, buffers, [float(v) for v in values], test_idx, measured, distances, theta, seconds,
                     list(gradient_norms), list(iterations), list(checkpoints))
