"""The workflow's steps as plain functions: each reads its inputs, computes, writes its outputs.

The Snakemake scripts in `workflow/scripts/` only unpack `snakemake.input/params/output` and call
one of these, so every step can be run and tested without Snakemake. The re-trainings of the ground
truths (leave-one-out, its drift control and repeats, PBRF, groups, LDS) are src/fragility/truths/.
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path

import torch

from ..engine import health
from ..data.split import Split, model_inputs
from ..data.registry import load_split
from ..io import load_torch, read_json, save_torch, write_json, write_parquet
from ..models.registry import init_from_spec, model_spec
from ..engine.flat import FlatModel, differentiable_attention
from ..engine.task import make_task
from ..engine.objective import Objective
from ..estimators.base import (REQUIREMENTS, Context, EstimatorScores, RequirementError, TrainedModel,
                               check_requirements, missing_derivative)
from ..estimators.registry import make_estimator
from ..runtime import resolve_device, resolve_dtype
from .selection import choose_test_points
from ..engine.training import TrainSettings, train_copies

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
ON_ERROR = ("flag", "stop")  # influence.on_error


def failure_status(err: BaseException, limit: int = 120) -> str:
    """`failed: <ExceptionType>: <first line of its message>`, cut to `limit` characters; `;` (the
    separator of flags) written as `,`."""
    lines = str(err).strip().splitlines()
    first = (lines[0] if lines else "").replace(";", ",")
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return f"failed: {type(err).__name__}: {first}" if first else f"failed: {type(err).__name__}"


def flaggable(err: Exception) -> bool:
    """Whether an error inside an estimator's fit or scores may become a flagged row: not a missing
    requirement or a config error (they stop the run at its first job: base.RequirementError,
    plugins.PluginError), not running out of memory (a cluster retries the job with more)."""
    from ..plugins import PluginError

    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
    return not isinstance(err, (RequirementError, PluginError) + out_of_memory)


@differentiable_attention()  # the math backend of attention: second and forward-mode derivatives
def compute_influence(model_path, data_path, test_points_path, method_name, method_cfg, damping, table_out, diagnostics_out,
                      device_name="auto", chunk_size=1024, scoring_chunk_size=None, extra_models=(), on_error="flag",
                      log=print):
    """Fit estimator `method_name` (its config block `method_cfg`: estimators/registry.py) on the
    trained model and write its influence table (Δ̂ of every training point for each test point)
    and its diagnostics. `extra_models`: further `model.pt` files for the context (an estimator
    that requires "several_models": the other seeds of the cell, grid.estimator_model_cells).

    A derivative the estimator requires that the model lacks (`base.missing_derivative`) refuses
    it before `fit`: NaN Δ̂ with the status `unsupported: ...`. An error inside its fit or scores
    (`on_error`, `influence.on_error`: "flag") writes NaN Δ̂ with the status `failed: <type>:
    <message>` (`failure_status`) and the traceback to the diagnostics and the log, and returns, so
    that the study goes on with the estimator flagged; "stop" raises it. A missing requirement, a
    config error, out of memory and any error while loading the model or data always raise."""
    if on_error not in ON_ERROR:
        raise ValueError(f"influence.on_error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")
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
        context.models.append(TrainedModel(other_net, other_theta, label=f"seed {other['seed']}",
                                           flags=tuple((other.get("metrics") or {}).get("flags", ()))))
    check_requirements(estimator, context, key)
    where = f"{method_name} in cell {context.cell}"
    try:
        missing = missing_derivative(estimator, context)
        if missing is not None:
            need, status, error = missing
            log(f"{where}: refused, {status} ({need}: {REQUIREMENTS[need]}; PyTorch: {error})")
            scores, own = EstimatorScores.missing(len(points), len(y), status, {"error": error}), {
                "status": status, "error": error, "refused": need}
        else:
            scores = estimator.fit(context).scores(points).checked()
            own = estimator.diagnostics
        table, outcomes = scores.table(points), scores.outcomes(points)
    except Exception as err:
        if on_error == "stop" or not flaggable(err):
            raise
        status, trace = failure_status(err), traceback.format_exc()
        log(f"{where}: {status} (influence.on_error: flag; NaN scores, the study goes on)\n{trace}")
        scores = EstimatorScores.missing(len(points), len(y), status)
        table, outcomes = scores.table(points), scores.outcomes(points)
        own = {"status": status, "error": f"{type(err).__name__}: {err}", "traceback": trace}
    diagnostics = {"method": method_cfg.get("method", method_name), **own, "estimator": method_name,
                   "damping": damping, "test_points": outcomes, "num_parameters": net.num_parameters, "n_train": len(y)}
    diagnostics.pop("solves", None)
    for outcome in outcomes:
        log(f"{method_name} {outcome['test_point']}: {outcome['status']}")
    write_parquet(table, table_out)
    write_json(diagnostics, diagnostics_out)
    return diagnostics
