"""A cell's train → test points → influence (every estimator) → drift control in one process
(`fuse_fit`, workflow/rules/fused.smk). Each step calls the function its split rule's script calls,
with the same arguments, and writes to that rule's log; fit.log records each step's time. A failure
names the rule, the step and the cell."""

import sys
import time

from fragility.study.grid import influence_on_error, with_run_settings
from fragility.study.pipeline import compute_influence, pick_test_points, train
from fragility.truths.registry import get as truth
from fragility.runtime import file_logger, job_label, naming_failures, peak_gpu_memory_mb, resolve_device, start_job

i, o, logs, p, w = snakemake.input, snakemake.output, snakemake.log, snakemake.params, snakemake.wildcards
summary = file_logger(logs.fit)
open(logs.fit, "w").close()


def step(name, log_path):
    """Send stdout/stderr (a traceback too) to the step's own log; return its logger."""
    previous = sys.stdout
    log = start_job(log_path, snakemake.threads)
    if previous not in (sys.__stdout__, sys.__stderr__):
        previous.close()
    summary(f"{name} started (log {log_path})")
    return log


def fit_model(log):
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")  # + logging, checkpoints
    metrics = train(i.data, w.arch, p.decay, int(w.seed), train_cfg, p.dtype, p.device, o.model, o.metrics,
                    checkpoint_path=p.checkpoint, models_cfg=snakemake.config.get("models"), task_name=p.task, log=log)
    log(f"train loss {metrics['train_loss']:.4g}, accuracy {metrics['train_accuracy']:.3f}, flags {metrics['flags']}")


def test_points(log):
    log(f"test points: {pick_test_points(o.model, i.data, p.specs, o.test_points, p.device)}")


def influence(name):
    def run(log):
        compute_influence(o.model, i.data, o.test_points, name, p.methods[name], p.damping, getattr(o, f"table_{name}"),
                          getattr(o, f"diagnostics_{name}"), device_name=p.device, **p.chunks,
                          on_error=influence_on_error(snakemake.config, w.study, w.arch), log=log)
    return run


def drift_control(log):
    loo_cfg = with_run_settings(p.loo, snakemake.config, w.study, w.arch, "loo")  # + checkpoints, copies per pass
    train_cfg = with_run_settings(p.train, snakemake.config, w.study, w.arch, "train")
    paths = {"model": o.model, "data": i.data, "test_points": o.test_points}
    seconds = truth("loo").drift(paths, loo_cfg, train_cfg, o.drift_table, o.drift_theta, device_name=p.device,
                                 order_seed=p.order_seed, checkpoint_path=p.drift_checkpoint, log=log)
    log(f"re-trained 1 copies in {seconds:.1f}s")


steps = ([("train", logs.train, fit_model), ("test_points", logs.test_points, test_points)]
         + [(f"influence {name}", getattr(logs, f"influence_{name}"), influence(name)) for name in p.estimators]
         + [("loo_drift", logs.loo_drift, drift_control)])
began = time.perf_counter()
for name, log_path, run in steps:
    log = step(name, log_path)
    with naming_failures(job_label(f"{snakemake.rule} (step {name})", w), log):  # the error names its cell
        run(log)
summary(f"all steps done in {time.perf_counter() - began:.1f}s")
peak = peak_gpu_memory_mb(resolve_device(p.device))
if peak is not None:
    summary(f"peak_gpu_memory_mb={peak:.1f}")  # read by the benchmarks table
