"""The workflow's steps as plain functions: each reads its inputs, computes, writes its outputs.

The Snakemake scripts in `workflow/scripts/` only unpack `snakemake.input/params/output` and call
one of these, so every step can be run and tested without Snakemake.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from . import health, noise
from .data import Split, load_split
from .ihvp import make_solver
from .influence import influence_table
from .io import load_torch, read_json, save_torch, write_json, write_parquet, write_csv
from .metrics import CORRELATION_DEFAULTS, correlate, stream_seed, without_values
from .models import init_model
from .objective import FlatModel, Objective
from .runtime import resolve_device, resolve_dtype
from .selection import choose_test_points, select_training_points
from .training import TrainSettings, train_copies, train_in_passes

MODEL_KEYS = ("arch", "input_shape", "n_classes", "dtype", "theta", "buffers", "decay", "seed")


# --------------------------------------------------------------------------- data
def prepare_data(dataset_id: str, dataset_cfg: dict, data_dir: str, out_path: str) -> dict:
    split = load_split(dataset_id, dataset_cfg, data_dir=data_dir)
    split.save(out_path)
    return {"n_train": len(split.y_train), "n_test": len(split.y_test), "input_shape": split.input_shape}


def _tensors(split: Split, dtype, device):
    return (split.x_train.to(device=device, dtype=dtype), split.y_train.to(device),
            split.x_test.to(device=device, dtype=dtype), split.y_test.to(device))


# --------------------------------------------------------------------------- models
def load_trained(model_path: str, device="cpu"):
    """Rebuild (FlatModel, θ*, record) from a `model.pt` written by `train`."""
    record = load_torch(model_path, required_keys=MODEL_KEYS)
    dtype = resolve_dtype(record["dtype"])
    model = init_model(record["arch"], tuple(record["input_shape"]), record["n_classes"], seed=0, dtype=dtype).to(device)
    net = FlatModel(model)
    theta = record["theta"].to(device=device, dtype=dtype)
    if theta.numel() != net.num_parameters:
        raise RuntimeError(f"{model_path}: θ has {theta.numel()} entries but '{record['arch']}' has {net.num_parameters} parameters")
    with torch.no_grad():
        for name, value in record["buffers"].items():
            net.buffers[name].copy_(value.to(device))
    net.load_into_model(theta)
    model.eval()
    return net, theta, record


def train(data_path, arch, decay, seed, train_cfg, dtype_name, device_name, model_out, metrics_out, checkpoint_path=None, log=print):
    """Train θ* from a seeded initialisation; record losses, accuracies, gradient norm and flags."""
    device, dtype = resolve_device(device_name), resolve_dtype(dtype_name)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, dtype, device)
    model = init_model(arch, split.input_shape, split.n_classes, seed=seed, dtype=dtype).to(device)
    net = FlatModel(model)
    settings = TrainSettings.from_config(train_cfg, order_seed=seed)
    log(f"training {arch} ({net.num_parameters} parameters) with decay {decay} for {settings.steps} steps on {device}")
    result = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=dtype, device=device),
                          settings, checkpoint_path=checkpoint_path, log=log)
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
        "train_loss": train_eval["loss"], "train_accuracy": train_eval["accuracy"],
        "test_loss": test_eval["loss"], "test_accuracy": test_eval["accuracy"],
        "final_objective_gradient_norm": gradient_norm, "logit_spread": train_eval["logit_spread"],
        "flags": health.training_flags(train_eval, y.cpu(), split.n_classes),
        "train_seconds": result.seconds, "steps": settings.steps, "device": str(device),
        "history": result.history,
    }
    save_torch({"arch": arch, "input_shape": list(split.input_shape), "n_classes": split.n_classes, "dtype": dtype_name,
                "theta": theta.cpu(), "buffers": {k: v.cpu() for k, v in buffers.items()}, "decay": decay, "seed": seed,
                "train_config": train_cfg, "metrics": {k: v for k, v in metrics.items() if k != "history"}}, model_out)
    write_json(metrics, metrics_out)
    if checkpoint_path and Path(checkpoint_path).exists():
        Path(checkpoint_path).unlink()
    return metrics


# --------------------------------------------------------------------------- test points
def pick_test_points(model_path, data_path, specs, out_path, device_name="auto"):
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    _, _, xt, yt = _tensors(split, theta.dtype, device)
    losses = health.evaluate(net, theta, xt, yt)["losses"].cpu().numpy()
    points = choose_test_points(losses, specs)
    write_json({"test_points": points, "test_losses": losses.tolist()}, out_path)
    return points


# --------------------------------------------------------------------------- influence
def damping_for(influence_cfg: dict, decay: float) -> float:
    if decay == 0 and "damping_without_decay" in influence_cfg:
        return float(influence_cfg["damping_without_decay"])
    return float(influence_cfg["damping"])


def compute_influence(model_path, data_path, test_points_path, method_name, method_cfg, damping, table_out, diagnostics_out,
                      device_name="auto", chunk_size=1024, scoring_chunk_size=None, log=print):
    device = resolve_device(device_name)
    net, theta, record = load_trained(model_path, device)
    split = Split.load(data_path)
    x, y, xt, yt = _tensors(split, theta.dtype, device)
    points = read_json(test_points_path)["test_points"]
    options = {k: v for k, v in method_cfg.items() if k != "method"}
    solver = make_solver(method_cfg.get("method", method_name), **options)
    solver.fit(Objective(net, x, y, record["decay"], chunk_size=chunk_size), theta)
    table, outcomes = influence_table(net, theta, x, y, points, xt, yt, solver, damping, chunk_size=chunk_size,
                                      scoring_chunk_size=scoring_chunk_size)
    diagnostics = {**solver.diagnostics, "estimator": method_name, "damping": damping, "test_points": outcomes,
                   "num_parameters": net.num_parameters, "n_train": len(y)}
    diagnostics.pop("solves", None)
    for outcome in outcomes:
        log(f"{method_name} {outcome['test_point']}: {outcome['status']}")
    write_parquet(table, table_out)
    write_json(diagnostics, diagnostics_out)
    return diagnostics


def select(influence_path, rules, out_path, log=print):
    """Union over test points of the training points the rules pick from |Δ̂|. A test point whose
    estimator failed (status not ok: diverged, negative_curvature in CG, ...) gets no points:
    it is listed under `not_selected` with the status, its correlations carry the flag
    `selection_failed:<status>`, and the rest of the cell and study go on."""
    table = pd.read_parquet(influence_path)
    per_point, union, not_selected = {}, {}, {}
    for name, rows in table.groupby("test_point", sort=False):
        status = rows["status"].iloc[0]
        if status != "ok":
            per_point[name], not_selected[name] = {}, str(status)
            log(f"test point '{name}': the estimator in {influence_path} reported '{status}'; no training points "
                "selected for it (flagged selection_failed; select.by names another estimator)")
            continue
        picked = select_training_points(rows["predicted_loss_change"].abs().to_numpy(), rules)
        per_point[name] = {str(i): label for i, label in sorted(picked.items())}
        union.update({i: True for i in picked})
    write_json({"indices": sorted(int(i) for i in union), "per_test_point": per_point, "not_selected": not_selected,
                "rules": rules}, out_path)


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
    settings = TrainSettings.from_config(retrain_cfg, steps=int(loo_cfg["steps"]), order_seed=order_seed)
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
            losses = torch.nn.functional.cross_entropy(net.logits(th, xt[idx], bufs), yt[idx], reduction="none").cpu()
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


# --------------------------------------------------------------------------- correlation per cell
TARGETS = {
    "loss_change": ("predicted_loss_change", "actual_loss_change"),
    "loss_change_vs_drift": ("predicted_loss_change", "actual_loss_change_vs_drift"),
    "param_change_norm": ("predicted_param_change_norm", "actual_param_change_norm"),
    "param_change_norm_vs_drift": ("predicted_param_change_norm", "actual_param_change_norm_vs_drift"),
}
LOO_COLUMNS = ["removed_index", "test_index", "test_loss", "param_distance", "param_distance_vs_drift", "final_objective"]


def _repeat_noise(repeat: pd.DataFrame | None, truth: pd.DataFrame, tp: dict) -> dict:
    """σ_repeat per target for one test point (NaN when no repeat was run); see noise.py."""
    if repeat is None:
        return {target: (math.nan, 0) for target in TARGETS}
    again = noise.ground_truth(repeat[repeat.removed_index >= 0], repeat[repeat.removed_index < 0], tp["index"], tp["loss"])
    return {target: noise.repeat_spread(truth[col], again[col]) for target, (col, _) in noise.NOISE_SOURCES.items()}


def correlate_cell(cell: dict, influence_paths: dict, test_points_path, selection_path, loo_paths, drift_path,
                   metrics_path, rows_out, correlations_out, repeat_path=None, options: dict | None = None):
    """Join Δ̂ with the re-trained Δ for one cell; one correlation row per (test point, estimator,
    target, subset), with bootstrap intervals, permutation p-values (`options`: resamples,
    permutations, confidence, seed) and the ground truth's noise (noise.py; `repeat_path` is the
    `repeat_loo` table, or None when no repeat was run)."""
    options = {**CORRELATION_DEFAULTS, **(options or {})}
    points = read_json(test_points_path)["test_points"]
    selection_record = read_json(selection_path)
    selection, not_selected = selection_record["per_test_point"], selection_record.get("not_selected", {})
    metrics = read_json(metrics_path)
    model_flags = [f"model_not_trained:{f}" for f in metrics.get("flags", [])]
    loo = pd.concat([pd.read_parquet(p) for p in loo_paths], ignore_index=True) if loo_paths else pd.DataFrame(columns=LOO_COLUMNS)
    drift = pd.read_parquet(drift_path)
    repeat = pd.read_parquet(repeat_path) if repeat_path else None
    truths = {tp["name"]: noise.ground_truth(loo, drift, tp["index"], tp["loss"]) for tp in points}
    repeat_noise = {tp["name"]: _repeat_noise(repeat, truths[tp["name"]], tp) for tp in points}
    rows, summary = [], []
    for method, path in influence_paths.items():
        table = pd.read_parquet(path)
        for tp in points:
            chosen = selection.get(tp["name"], {})
            est = table[(table.test_point == tp["name"]) & table.train_index.isin([int(i) for i in chosen])]
            truth = truths[tp["name"]].reindex(est.train_index.to_numpy())
            control = noise.drift_changes(drift, tp["index"], tp["loss"])
            frame = est.assign(selection=est.train_index.astype(str).map(chosen), estimator=method,
                               **{col: truth[col].to_numpy() for col in truth.columns if col.startswith("actual_")}, **control)
            rows.append(frame)
            labels = sorted(set(frame.selection))
            subsets = [("all", frame)] + ([(lab, frame[frame.selection == lab]) for lab in labels] if len(labels) > 1 else [])
            for target, (pred_col, true_col) in TARGETS.items():
                if (target.startswith("param_change_norm") and len(est) and frame[pred_col].isna().all()
                        and est["status"].eq("ok").all()):
                    continue  # this estimator does not predict parameter changes
                drift_col = noise.NOISE_SOURCES[target][1]
                drift_noise = abs(control[drift_col]) if drift_col else None
                sigma_repeat, n_repeat = repeat_noise[tp["name"]][target]
                for subset, part in subsets:
                    # resamples drawn per (cell, test point, subset): independent across cells, shared by
                    # the estimators and targets of the same points, so that those compare on equal terms
                    stats_ = correlate(part[pred_col], part[true_col], resamples=options["resamples"],
                                       permutations=options["permutations"], confidence=options["confidence"],
                                       seed=stream_seed(options["seed"], *cell.values(), tp["name"], subset))
                    if tp["name"] in not_selected:  # nothing was re-trained for this test point
                        stats_["flag"] = f"selection_failed:{not_selected[tp['name']]}"
                    flag = ";".join(filter(None, model_flags + [stats_["flag"]]))
                    if model_flags:  # a model that did not train gets its flag, never a number
                        stats_ = without_values(stats_)
                    effect = float(part[true_col].std()) if len(part) > 1 else math.nan
                    summary.append({**cell, "test_point": tp["name"], "test_index": tp["index"], "test_loss": tp["loss"],
                                    "estimator": method, "target": target, "subset": subset, **stats_, "flag": flag,
                                    "drift_loss_change": control["drift_loss_change"], "actual_std": effect,
                                    **noise.signal_to_noise(effect, drift_noise, sigma_repeat), "repeat_n": n_repeat,
                                    "train_accuracy": metrics["train_accuracy"], "test_accuracy": metrics["test_accuracy"]})
    all_rows = pd.concat(rows, ignore_index=True)
    for key, value in cell.items():
        all_rows[key] = value
    write_parquet(all_rows, rows_out)
    write_parquet(pd.DataFrame(summary), correlations_out)


def stack(paths, out_parquet, out_csv=None):
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    write_parquet(frame, out_parquet)
    if out_csv:
        write_csv(frame, out_csv)
    return frame
