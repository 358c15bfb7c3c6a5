"""Device choice, threads, GPU precision and dtypes; job logs. torch is imported by the functions
that need it, so the workflow can build its DAG (and log) without it."""

from __future__ import annotations

import contextlib
import traceback

DTYPES = ("float32", "float64")


def resolve_device(name: str = "auto"):
    import torch

    """`auto` picks CUDA when present, else CPU; `cpu`/`cuda`/`cuda:1` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was requested but CUDA is not available here")
    return device


def full_precision_on_gpu() -> None:
    """Turn TF32 off for CUDA convolutions and matrix products. cuDNN uses TF32 (a 10-bit mantissa)
    for float32 convolutions by default. On an H100 that moved small-CNN influence scores by 2e-4
    and ResNet18 scores by 7e-2 of the largest score, against 2e-7 and 7e-7 without it, at the same
    speed (benchmarks/README.md)."""
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def configure(threads: int | None = None, deterministic: bool = True) -> None:
    """Set the number of CPU threads, ask torch for deterministic kernels, and keep float32 on
    the GPU at full precision (no TF32)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if deterministic:
        set_deterministic(True)
    full_precision_on_gpu()


def set_deterministic(mode: bool = True) -> None:
    """`torch.use_deterministic_algorithms(mode, warn_only=True)` without its import of
    torch._inductor (and with it dynamo and sympy: about 2 s of CPU at the start of every job) just
    to set `torch._inductor.config.deterministic`, which only torch.compile reads; the eager kernels
    follow the flag set here. The inductor setting is made too when inductor is already loaded."""
    import sys

    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        setter(mode, warn_only=True)


def resolve_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got '{name}'")
    return getattr(torch, name)


def peak_gpu_memory_mb(device) -> float | None:
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def start_job(log_path: str | None, threads: int | None = None):
    """Send this process's stdout/stderr to the job's log file, set threads; return a logger."""
    import sys

    if log_path:
        handle = open(log_path, "w", buffering=1)
        sys.stdout = sys.stderr = handle
    configure(threads)
    return file_logger(None)


def file_logger(log_path: str | None):
    """A `log(message)` that appends time-stamped lines to `log_path` (stdout when None).
    Used as is by rules that run inside the Snakemake process (no redirection there)."""
    import time

    began = time.perf_counter()

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - began:8.1f}s] {message}"
        if log_path:
            with open(log_path, "a") as handle:
                handle.write(line + "\n")
        else:
            print(line, flush=True)

    return log


class JobError(RuntimeError):
    """A workflow job failed; the message names the rule and the cell first, then the cause."""


CELL_KEYS = ("study", "dataset", "arch", "decay", "seed")


def job_label(rule: str, wildcards) -> str:
    """`rule train, cell results/iris/iris/mlp-d1-w5/wd0/seed0` (+ estimator=…, chunk=…) from a
    job's wildcards (a mapping or Snakemake's wildcards object)."""
    values = {key: str(wildcards[key]) for key in wildcards.keys()}
    if all(key in values for key in CELL_KEYS):
        where = "cell results/{study}/{dataset}/{arch}/wd{decay}/seed{seed}".format(**values)
    else:
        where = ", ".join(f"{key} {values[key]}" for key in CELL_KEYS if key in values)
    extra = [f"{key}={value}" for key, value in values.items() if key not in CELL_KEYS]
    return ", ".join([f"rule {rule}"] + ([where] if where else []) + extra)


class naming_failures:
    """`with naming_failures(label, log):` turns any exception into a JobError whose message
    starts with `label` (which rule, study, cell, seed), chained to the original, and logs it."""

    def __init__(self, label: str, log=None):
        self.label, self.log = label, log

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or not isinstance(err, Exception) or isinstance(err, JobError):
            return False
        message = f"{self.label}: {type(err).__name__}: {err}"
        if self.log:
            self.log(f"FAILED {message}")
        raise JobError(message) from err


@contextlib.contextmanager
def job_log(log_path: str, label: str | None = None):
    """For jobs that run inside the Snakemake process (`run:`): yields `file_logger(log_path)`;
    an exception is written to the log with its traceback and raised again, as a JobError whose
    message starts with `label` (which rule and cell) when one is given."""
    log = file_logger(log_path)
    try:
        yield log
    except Exception as err:
        log(f"failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        if label and not isinstance(err, JobError):
            raise JobError(f"{label}: {type(err).__name__}: {err}") from err
        raise


@contextlib.contextmanager
def script_job(log_path: str, threads: int | None, rule: str, wildcards, device_name: str | None = None):
    """One workflow script's job: stdout/stderr to the rule's log and `threads` for torch
    (`start_job`), any error re-raised naming the rule and the cell (`naming_failures`), and at the
    end the peak GPU memory as a log line `peak_gpu_memory_mb=` (read by the benchmarks table) when
    `device_name` resolves to CUDA. Yields the logger."""
    log = start_job(log_path, threads)
    with naming_failures(job_label(rule, wildcards), log):
        yield log
        peak = peak_gpu_memory_mb(resolve_device(device_name)) if device_name else None
        if peak is not None:
            log(f"peak_gpu_memory_mb={peak:.1f}")
