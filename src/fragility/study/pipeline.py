"""The workflow's steps as plain functions: each reads its inputs, computes, writes its outputs.

The Snakemake scripts in `workflow/scripts/` only unpack `snakemake.input/params/output` and call
one of these, so every step can be run and tested without Snakemake.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from ..engine import health
from ..data.split import Split, model_inputs
from ..data.registry import load_split
from ..io import load_torch, read_json, save_torch, write_json, write_parquet
from ..models.registry import init_from_spec, model_spec
from ..engine.flat import FlatModel
from ..engine.task import make_task
from ..engine.objective import Objective
from ..estimators.base import Context, TrainedModel, check_requirements
from ..estimators.registry import make_estimator
from ..runtime import resolve_device, resolve_dtype
from .grid import read_selected
from .selection import choose_test_points
from ..engine.training import TrainSettings, train_copies, train_in_passes

MODEL_KEYS = ("arch", "factory", "task", "input_shape", "n_classes", "dtype", "theta", "buffers", "decay", "seed")


# --------------------------------------------------------------------------- data
def prepare_data(dataset_id: str, dataset_cfg: dict, data_dir: str, out_path: str, check=None) -> dict:
    """Load the split and save it to `out_path`; `check(n_train, n_test)` runs before anything is
    written (grid.check_sizes: are the test points and selection rules within the split's sizes)."""
    split = load_split(dataset_id, dataset_cfg, data_dir=data_dir)
    if check is not None:
        check(len(split.y_train), len(split.y_test))
    split.save(out_path)
    return {"n_train": len(split.y_train), "n_test": len(split.y_test), "input_shape": split.input_shape}


def _tensors(split: Split, dtype, device):
    """(x, y, x_test, y_test) on `device`; float inputs in `dtype`, integer ones (token ids) as they are."""
    return (model_inputs(split.x_train, dtype, device), split.y_train.to(device),
            model_inputs(split.x_test, dtype, device), split.y_test.to(device))


# --------------------------------------------------------------------------- models
def load_trained(model_path: str, device="cpu"):
    """Rebuild (FlatModel, θ*, record) from a `model.pt` written by `train`."""
    record = load_torch(model_path, required_keys=MODEL_KEYS)
    dtype = resolve_dtype(record["dtype"])
    spec, options, key = record["factory"]
    model = init_from_spec(spec, options, key, tuple(record["input_shape"]), record["n_classes"], seed=0,
                           dtype=dtype).to(device)
    net = FlatModel(model, make_task(record["task"]))
    theta = record["theta"].to(device=device, dtype=dtype)
    if theta.numel() != net.num_parameters:
        raise RuntimeError(f"{model_path}: θ has {theta.numel()} entries but '{record['arch']}' has {net.num_parameters} parameters")
    with torch.no_grad():
        for name, value in record["buffers"].items():
            net.buffers[name].copy_(value.to(device))
    net.load_into_model(theta)
    model.eval()
    return net, theta, record


def check_outputs(model, x, n_outputs: int, key: str) -> None:
    """ValueError naming `key` unless the model maps a batch [m, ...] to outputs [m, n_outputs].
    Run in eval mode, so that no BatchNorm statistic moves."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            out = model(x)
        except Exception as err:
            raise ValueError(f"{key}: the model fails on a batch of inputs of shape {tuple(x.shape)}: "
                             f"{type(err).__name__}: {err}") from err
        finally:
            model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), n_outputs):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{key}: the model maps inputs {tuple(x.shape)} to {shape}; expected ({len(x)}, {n_outputs}) "
                         f"(one output per class, or per regression target)")


def train(data_path, arch, decay, seed, train_cfg, dtype_name, device_name, model_out, metrics_out, checkpoint_path=None,
          models_cfg=None, task_name="cross_entropy", log=print):
    """Train θ* from a seeded initialisation; record losses, accuracies, gradient norm and flags.
    `models_cfg` is the config's `models` block (architectures of the user's own); `task_name`
    the study's `task` (engine/task.py)."""
    device, dtype = resolve_device(device_name), resolve_dtype(dtype_name)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, dtype, device)
    factory = model_spec(arch, models_cfg)
    model = init_from_spec(*factory, split.input_shape, split.n_classes, seed=seed, dtype=dtype).to(device)
    task = make_task(task_name)
    task.check_targets(split.y_train, split.n_classes, "task")
    check_outputs(model, x[:2], split.n_classes, factory[2])
    net = FlatModel(model, task)
    settings = TrainSettings.from_config(train_cfg, order_seed=seed)
    keep = checkpoint_steps(settings.steps, int(train_cfg.get("keep_checkpoints") or 0))
    log(f"training {arch} ({net.num_parameters} parameters) with decay {decay} for {settings.steps} steps on {device}")
    result = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=dtype, device=device),
                          settings, checkpoint_path=checkpoint_path, log=log, keep_steps=keep)
    theta = result.thetas[0]
    buffers = {k: v[0] for k, v in result.buffers.items()}
    with torch.no_grad():
        for name, value in buffers.items():
            net.buffers[name].copy_(value)
    model.eval()
    train_eval, test_eval = health.evaluate(net, theta, x, y), health.evaluate(net, theta, xt, yt)
    gradient_norm = float(Objective(net, x, y, decay, chunk_size=1024).gradient(theta).norm())
    metrics = {
        "arch": arch, "decay": decay, "seed": seed, "num_parameters": net.num_parameters,
        "task": task.name, "train_loss": train_eval["loss"], "train_accuracy": train_eval.get("accuracy", math.nan),
        "test_loss": test_eval["loss"], "test_accuracy": test_eval.get("accuracy", math.nan),
        **({"train_explained_variance": train_eval["explained_variance"],
            "test_explained_variance": test_eval["explained_variance"]} if "explained_variance" in train_eval else {}),
        "final_objective_gradient_norm": gradient_norm, "logit_spread": train_eval["output_spread"],
        "flags": health.training_flags(net, train_eval, y.cpu(), split.n_classes),
        "train_seconds": result.seconds, "steps": settings.steps, "device": str(device),
        "history": result.history,
    }
    save_torch({"arch": arch, "factory": list(factory), "task": task_name, "input_shape": list(split.input_shape), "n_classes": split.n_classes, "dtype": dtype_name,
                "theta": theta.cpu(), "buffers": {k: v.cpu() for k, v in buffers.items()}, "decay": decay, "seed": seed,
                "train_config": train_cfg, "metrics": {k: v for k, v in metrics.items() if k != "history"},
                **({"checkpoints": [{"step": c["step"], "lr": c["lr"], "theta": c["thetas"][0],
                                     "buffers": {k: v[0] for k, v in c["buffers"].items()}} for c in result.kept]}
                   if keep else {})}, model_out)
    write_json(metrics, metrics_out)
    if checkpoint_path and Path(checkpoint_path).exists():
        Path(checkpoint_path).unlink()
    return metrics


def checkpoint_steps(steps: int, count: int) -> tuple[int, ...]:
    """The steps after which `train.keep_checkpoints: C` keeps θ: C evenly spaced, the last
    being the final step (θ*): round(j·T/C), j = 1..C."""
    if count < 0 or count > steps:
        raise ValueError(f"train.keep_checkpoints: {count} checkpoints of a run of {steps} steps")
    return tuple(sorted({round(j * steps / count) for j in range(1, count + 1)})) if count else ()


def checkpoint_models(model_path, record, device) -> list:
    """The checkpoints a training run kept (`train.keep_checkpoints`) as TrainedModels, each with
    its own model (its BatchNorm statistics) and the learning rate of the step that followed it."""
    from ..estimators.base import TrainedModel

    models = []
    for c in record.get("checkpoints", []):
        net, _, _ = load_trained(model_path, device)
        theta = c["theta"].to(device=device, dtype=net.flatten().dtype)
        with torch.no_grad():
            for name, value in c["buffers"].items():
                net.buffers[name].copy_(value.to(device))
        net.load_into_model(theta)
        models.append(TrainedModel(net, theta, f"step {c['step']}", learning_rate=float(c["lr"])))
    return models


def retraining_steps(loo_cfg: dict, retrain_cfg: dict, n: int) -> int:
    """Length of a re-training: `loo.steps`, or `loo.epochs` passes over the n training points:
    ceil(epochs · ceil(n / b)) steps with b the re-training's batch size (full batch: b = n), as
    an epoch of `training.batch_rows` is ceil(n / b) minibatches of one permutation."""
    steps, epochs = loo_cfg.get("steps"), loo_cfg.get("epochs")  # null = not set (an overlay's way to drop one)
    if (steps is None) == (epochs is None):
        raise ValueError("loo: set exactly one of loo.steps and loo.epochs")
    if steps is not None:
        return int(steps)
    batch = min(int(retrain_cfg.get("batch_size") or n), n)
    return max(1, math.ceil(float(epochs) * math.ceil(n / batch)))


# --------------------------------------------------------------------------- test points
def pick_test_points(model_path, data_path, specs, out_path, device_name="auto"):
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    _, _, xt, yt = _tensors(split, theta.dtype, device)
    losses = health.evaluate(net, theta, xt, yt)["measurements"].cpu().numpy()
    points = choose_test_points(losses, specs, seed=int(record.get("seed", 0)))
    write_json({"test_points": points, "test_losses": losses.tolist()}, out_path)
    return points


# --------------------------------------------------------------------------- influence
def compute_influence(model_path, data_path, test_points_path, method_name, method_cfg, damping, table_out, diagnostics_out,
                      device_name="auto", chunk_size=1024, scoring_chunk_size=None, extra_models=(), log=print):
    """Fit estimator `method_name` (its config block `method_cfg`: estimators/registry.py) on the
    trained model and write its influence table (Δ̂ of every training point for each test point)
    and its diagnostics. `extra_models`: further `model.pt` files for the context (an estimator
    that requires "several_models": the other seeds of the cell, grid.estimator_model_cells)."""
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, theta.dtype, device)
    points = read_json(test_points_path)["test_points"]
    key = f"influence.methods.{method_name}"
    estimator = make_estimator(method_name, method_cfg, key)
    if hasattr(estimator, "solver"):
        estimator.solver.log = log  # progress lines of long solver phases
    context = Context(net, theta, x, y, xt, yt, decay=record["decay"], damping=damping, device=device,
                      chunk_size=chunk_size, scoring_chunk_size=scoring_chunk_size, cell=str(Path(model_path).parent),
                      models=checkpoint_models(model_path, record, device) if "checkpoints" in estimator.requires else [])
    for path in extra_models:
        other_net, other_theta, other = load_trained(path, device)
        context.models.append(TrainedModel(other_net, other_theta, label=f"seed {other['seed']}"))
    check_requirements(estimator, context, key)
    scores = estimator.fit(context).scores(points).checked()
    table, outcomes = scores.table(points), scores.outcomes(points)
    diagnostics = {"method": method_cfg.get("method", method_name), **estimator.diagnostics, "estimator": method_name,
                   "damping": damping, "test_points": outcomes, "num_parameters": net.num_parameters, "n_train": len(y)}
    diagnostics.pop("solves", None)
    for outcome in outcomes:
        log(f"{method_name} {outcome['test_point']}: {outcome['status']}")
    write_parquet(table, table_out)
    write_json(diagnostics, diagnostics_out)
    return diagnostics


# --------------------------------------------------------------------------- leave-one-out
def run_loo(model_path, data_path, test_points_path, removed, loo_cfg, train_cfg, out_path, device_name="auto",
            order_seed=0, checkpoint_path=None, drift_theta_path=None, theta_out=None, log=print):
    """Re-train from θ* once per entry of `removed` (a training index, or -1 for no removal: the
    drift control), all copies in one batch; record every tracked test point's loss, ‖θ₋z − θ*‖
    and, given the drift control's parameters, ‖θ₋z − θ_drift‖. `theta_out` saves the parameters
    (used for the drift control)."""
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, theta.dtype, device)
    points = read_json(test_points_path)["test_points"]
    test_idx = sorted({p["index"] for p in points})
    n, k = len(y), len(removed)
    weights = torch.ones(k, n, dtype=theta.dtype, device=device)
    for c, i in enumerate(removed):
        if i >= n:
            raise ValueError(f"training index {i} out of range (n = {n})")
        if i >= 0:
            weights[c, i] = 0.0
    # the training settings loo sets itself (optimiser, checkpoint interval, ...) replace train's
    retrain_cfg = {**train_cfg, **{key: v for key, v in loo_cfg.items() if key in TrainSettings.CONFIG_KEYS}}
    settings = TrainSettings.from_config(retrain_cfg, steps=retraining_steps(loo_cfg, retrain_cfg, n),
                                         order_seed=order_seed)
    log(f"re-training {k} copies of {record['arch']} for {settings.steps} steps (removed: {removed})")
    result, checkpoints = train_in_passes(net, x, y, record["decay"], theta.repeat(k, 1), weights, settings,
                                          loo_cfg.get("copies_per_pass"), checkpoint_path=checkpoint_path, log=log)
    rows = []
    idx = torch.tensor(test_idx, device=device)
    drift_theta = None
    if drift_theta_path:
        drift_theta = load_torch(drift_theta_path, required_keys=("theta",))["theta"].to(device=device, dtype=theta.dtype)
    if theta_out:
        save_torch({"theta": result.thetas.cpu(), "removed": list(removed),
                    "buffers": {name: b.cpu() for name, b in result.buffers.items()}}, theta_out)
    for c, i in enumerate(removed):
        th = result.thetas[c]
        bufs = {name: b[c] for name, b in result.buffers.items()}
        with torch.no_grad():
            losses = net.task.measurement(net.logits(th, xt[idx], bufs), yt[idx]).cpu()
        distance = float((th - theta).norm())
        to_drift = float((th - drift_theta[0]).norm()) if drift_theta is not None else math.nan
        for j, ti in enumerate(test_idx):
            rows.append({"removed_index": int(i), "test_index": int(ti), "test_loss": float(losses[j]),
                         "param_distance": distance, "param_distance_vs_drift": to_drift,
                         "final_objective": result.final_losses[c]})
    write_parquet(pd.DataFrame(rows), out_path)
    for ckpt in checkpoints:
        if ckpt and Path(ckpt).exists():
            Path(ckpt).unlink()
    return result.seconds


def repeat_loo(model_path, data_path, test_points_path, selection_path, count, loo_cfg, train_cfg, out_path,
               device_name="auto", order_seed=0, checkpoint_prefix=None, log=print):
    """Re-train the first `count` selected points (in the order of `selected.json`'s indices) and a
    no-removal drift control with minibatch order `order_seed`; one table like `run_loo`'s, the
    drift row having removed_index −1 and distances to this repeat's own drift control."""
    indices = read_selected(selection_path)[: int(count)]
    folder = Path(out_path).parent
    drift_table, drift_theta = folder / ".repeat_drift.parquet", folder / ".repeat_drift_theta.pt"
    removal_table = folder / ".repeat_removals.parquet"
    checkpoint = (lambda part: f"{checkpoint_prefix}.{part}.pt") if checkpoint_prefix else (lambda part: None)
    seconds = run_loo(model_path, data_path, test_points_path, [-1], loo_cfg, train_cfg, drift_table,
                      device_name=device_name, order_seed=order_seed, checkpoint_path=checkpoint("drift"),
                      theta_out=drift_theta, log=log)
    frames = [pd.read_parquet(drift_table)]
    if indices:
        seconds += run_loo(model_path, data_path, test_points_path, indices, loo_cfg, train_cfg, removal_table,
                           device_name=device_name, order_seed=order_seed, checkpoint_path=checkpoint("removals"),
                           drift_theta_path=drift_theta, log=log)
        frames.append(pd.read_parquet(removal_table))
    table = pd.concat(frames, ignore_index=True).assign(order_seed=int(order_seed))
    write_parquet(table, out_path)
    for path in (drift_table, drift_theta, removal_table):
        Path(path).unlink(missing_ok=True)
    return seconds, indices


# --------------------------------------------------------------------------- other ground truths (study/targets.py)
def _test_losses(net, thetas, buffers, xt, yt, test_idx):
    """The task's measurement at the tracked test points for every copy, [k, T]."""
    idx = torch.tensor(test_idx, device=xt.device)
    out = []
    with torch.no_grad():
        for c in range(len(thetas)):
            bufs = {name: b[c] for name, b in buffers.items()} if buffers else None
            out.append(net.task.measurement(net.logits(thetas[c], xt[idx], bufs), yt[idx]).cpu())
    return torch.stack(out)


def plan_targets(data_path, influence_path, targets, groups_cfg, lds_cfg, seed_keys, out_path):
    """Draw and write the groups and LDS subsets of one cell (study/targets.py: make_plan)."""
    from . import targets as target_defs

    split = Split.load(data_path)
    plan = target_defs.make_plan(pd.read_parquet(influence_path), split.y_train.numpy(), list(targets), groups_cfg,
                                 lds_cfg, tuple(seed_keys))
    write_json(plan, out_path)
    return plan


def run_pbrf(model_path, data_path, test_points_path, removed, pbrf_cfg, loo_cfg, train_cfg, damping, out_path,
             device_name="auto", order_seed=0, checkpoint_path=None, log=print):
    """The PBRF optimum (engine/pbrf.py) for removing each entry of `removed` (a training index, or
    −1: nothing removed, whose optimum is θ*), with ε = −s/n (`pbrf.epsilon_scale` s) and
    λ_p = decay + `damping`; by the batched trainer (`solver: train`, loo's optimiser settings,
    `pbrf.steps` or loo.steps) or by L-BFGS to convergence (`solver: lbfgs`). Records each test
    point's loss, ‖θ_PBRF − θ*‖ and the norm of the PBRF objective's gradient (0 at the optimum)."""
    from ..engine.pbrf import objective_gradient_norms, removal_terms, solve_lbfgs

    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, theta.dtype, device)
    test_idx = sorted({p["index"] for p in read_json(test_points_path)["test_points"]})
    scale, k = float(pbrf_cfg["epsilon_scale"]), len(removed)
    terms = removal_terms(net, theta, x, y, [[int(i)] if i >= 0 else [] for i in removed], scale,
                          float(record["decay"]) + float(damping))
    iterations = [math.nan] * k
    if pbrf_cfg["solver"] == "lbfgs":
        thetas, values, norms, iterations = solve_lbfgs(net, x, terms, theta.repeat(k, 1),
                                                        int(pbrf_cfg["lbfgs_iterations"]), float(pbrf_cfg["tolerance"]))
        buffers, seconds = {}, math.nan
    else:
        retrain_cfg = {**train_cfg, **{key: v for key, v in loo_cfg.items() if key in TrainSettings.CONFIG_KEYS},
                       **{key: v for key, v in pbrf_cfg.items() if key in TrainSettings.CONFIG_KEYS}}
        settings = TrainSettings.from_config(retrain_cfg, steps=int(pbrf_cfg.get("steps", loo_cfg["steps"])),
                                             order_seed=order_seed)
        log(f"PBRF for {k} removals of {record['arch']}: {settings.steps} steps, ε = −{scale:g}/n")
        result, checkpoints = train_in_passes(net, x, y, 0.0, theta.repeat(k, 1), torch.ones(k, len(y), dtype=theta.dtype,
                                              device=device), settings, loo_cfg.get("copies_per_pass"),
                                              checkpoint_path=checkpoint_path, log=log, pbrf=terms)
        thetas, buffers, values, seconds = result.thetas, None, result.final_losses, result.seconds
        # the full-batch gradient of every copy costs about n/batch steps: only for small nets
        norms = (objective_gradient_norms(net, x, terms, thetas) if len(y) * net.num_parameters <= 10**6
                 else [math.nan] * k)
        for ckpt in checkpoints:
            if ckpt and Path(ckpt).exists():
                Path(ckpt).unlink()
    losses = _test_losses(net, thetas, buffers, xt, yt, test_idx)
    rows = [{"removed_index": int(i), "test_index": int(ti), "test_loss": float(losses[c, j]),
             "param_distance": float((thetas[c] - theta).norm()), "final_objective": float(values[c]),
             "gradient_norm": float(norms[c]), "iterations": iterations[c], "epsilon_scale": scale}
            for c, i in enumerate(removed) for j, ti in enumerate(test_idx)]
    write_parquet(pd.DataFrame(rows), out_path)
    log(f"PBRF: largest gradient norm {max(norms):.3g}")  # NaN where not computed
    return seconds


def run_removal_sets(model_path, data_path, test_points_path, sets, set_ids, cfg, loo_cfg, train_cfg, out_path,
                     device_name="auto", order_seed=0, checkpoint_path=None, log=print):
    """Re-train once per set of removed training indices (groups, LDS subsets' left-out points),
    all sets batched (row weights 0 on the removed points). `cfg.start`: `theta_star` (default)
    warm-starts from θ* with loo's settings for `cfg.steps` (default loo.steps); `scratch`
    trains from the cell's seeded initialisation with the original training settings."""
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, theta.dtype, device)
    test_idx = sorted({p["index"] for p in read_json(test_points_path)["test_points"]})
    n, k = len(y), len(sets)
    weights = torch.ones(k, n, dtype=theta.dtype, device=device)
    for c, removed in enumerate(sets):
        if any(not 0 <= int(i) < n for i in removed):
            raise ValueError(f"set {set_ids[c]}: a training index is out of range (n = {n})")
        weights[c, torch.tensor([int(i) for i in removed], dtype=torch.long, device=device)] = 0.0
    if cfg.get("start", "theta_star") == "scratch":
        spec, options, key = record["factory"]
        model = init_from_spec(spec, options, key, tuple(record["input_shape"]), record["n_classes"],
                               seed=int(record["seed"]), dtype=theta.dtype).to(device)
        net = FlatModel(model, net.task)
        start = net.flatten()
        settings = TrainSettings.from_config(train_cfg, order_seed=int(record["seed"]))
    else:
        start = theta
        retrain_cfg = {**train_cfg, **{key: v for key, v in loo_cfg.items() if key in TrainSettings.CONFIG_KEYS}}
        settings = TrainSettings.from_config(retrain_cfg, steps=int(cfg.get("steps", loo_cfg["steps"])),
                                             order_seed=order_seed)
    log(f"re-training {k} sets of {record['arch']} from {cfg.get('start', 'theta_star')} for {settings.steps} steps")
    result, checkpoints = train_in_passes(net, x, y, record["decay"], start.repeat(k, 1), weights, settings,
                                          loo_cfg.get("copies_per_pass"), checkpoint_path=checkpoint_path, log=log)
    losses = _test_losses(net, result.thetas, result.buffers, xt, yt, test_idx)
    rows = [{"set_id": int(set_ids[c]), "removed_count": len(sets[c]), "test_index": int(ti),
             "test_loss": float(losses[c, j]), "param_distance": float((result.thetas[c] - theta).norm()),
             "final_objective": result.final_losses[c]}
            for c in range(k) for j, ti in enumerate(test_idx)]
    write_parquet(pd.DataFrame(rows), out_path)
    for ckpt in checkpoints:
        if ckpt and Path(ckpt).exists():
            Path(ckpt).unlink()
    return result.seconds
