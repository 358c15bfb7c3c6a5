"""The CUDA path, checked and timed on one GPU machine, in one prepared run.

    python benchmarks/gpu_check.py prepare [--cpu-table results/table1/table1.csv --cpu-seconds S]
        here, with network: wheels of what the GPU image lacks (snakemake and its dependencies,
        the SLURM plugin, mlxtend, pytest, pytest-xdist; no torch) into benchmarks/gpu_wheels/ (git-ignored),
        and the CPU run's table1.csv (configs/quick.yaml) to compare the GPU run's with.
    bash benchmarks/gpu_check.sh [--budget 290] [--only c] [--skip d] [--out DIR]
        on the GPU machine (carry benchmarks/gpu_wheels): installs the wheels into a virtualenv
        that sees the image's torch, then runs the parts below, each in its own process group,
        killed at its time box; everything is written as it goes into one folder, packed at the
        end into gpu_check-<time>.tar.gz in $OUT (or --out).
    PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh --dry
        the same orchestration on CPU at toy size, the workflow parts as dry runs (`snakemake -n`);
        about a minute (tests/test_gpu_check.py).

Parts: a `pytest tests/test_cuda.py`; b the tiny Iris study (configs/tiny.yaml, fused jobs);
c the main job (configs/quick.yaml) with device cuda, timed, its table1.csv beside the CPU run's
(`compare_table1`), its per-job seconds and peak GPU memory (results/benchmarks + job logs);
d one cell per Table 1 architecture on synthetic data at reduced steps: train → test points →
influence (LiSSA, EK-FAC, identity) → one LOO chunk → one PBRF chunk, seconds and peak GPU
memory per job (`cells`); e the small-MNIST small CNN's exact Hessian (2,616 parameters, 6,000
points), seconds (`hessian`). The cost model in docs/cluster.md turns these rows into GPU-hours.
They run in the order a, b, e, d, c: the main job last, with what is left of the budget (a second
try: `--only c`, which goes on from the first where the machine kept results/).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu_wheels"
CARRY = ("snakemake", "snakemake-executor-plugin-slurm", "mlxtend", "pytest", "pytest-xdist")
# offered beside them but not pinned: pip takes them only where the image lacks mlxtend's dependency
FALLBACK = ("scikit-learn", "joblib", "threadpoolctl")
# on the GPU image already (its torch stack, and what benchmarks/run.py imported there): not carried
ON_IMAGE = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*|numpy|pandas|scipy|pyarrow|matplotlib|scikit-learn|"
                      r"pillow|contourpy|fonttools|kiwisolver|sympy|mpmath|networkx|jinja2|markupsafe|fsspec|filelock|"
                      r"setuptools|python-dateutil|six|tzdata|cycler|pyparsing|scikit-learn|joblib|threadpoolctl)$")

# Table 1's architectures at CIFAR-10's shape with the study's batch sizes (config.yaml: table1),
# then the two other shapes the paper-scale studies use: the small CNN on MNIST (mnist_small,
# Table 1's MNIST rows) and ResNet50 at 224 px (appendix_imagenet).
CIFAR, MNIST, IMAGENET = (3, 32, 32), (1, 28, 28), (3, 224, 224)
CELLS = [  # label, arch, input shape, classes, train batch, LiSSA batch, influence chunk, LOO chunk, EK-FAC options
    ("smallcnn-cifar", "smallcnn", CIFAR, 10, 128, 128, 1024, 40, {}),
    ("lenet-cifar", "lenet", CIFAR, 10, 128, 128, 1024, 20, {}),
    ("vgg13-cifar", "vgg13", CIFAR, 10, 128, 128, 256, 1, {"output_hessian": "sampled"}),
    ("vgg14-cifar", "vgg14", CIFAR, 10, 128, 128, 256, 1, {"output_hessian": "sampled"}),
    ("resnet18-cifar", "resnet18", CIFAR, 10, 128, 128, 256, 1, {"output_hessian": "sampled"}),
    ("resnet50-cifar", "resnet50", CIFAR, 10, 128, 128, 128, 1, {"output_hessian": "sampled"}),
    ("smallcnn-mnist", "smallcnn", MNIST, 10, 500, 500, 1000, 100, {}),
    ("resnet50-imagenet", "resnet50-imagenet", IMAGENET, 100, 128, 64, 32, 1, {"output_hessian": "sampled"}),
]
# (n train, n test, train steps, LiSSA depth, power iterations, LOO/PBRF steps, Hessian points)
SIZES = {"gpu": (1024, 256, 20, 20, 5, 10, 6000), "dry": (24, 8, 2, 2, 2, 2, 10)}
DRY_CELLS = ("lenet-cifar",)
CELL_COLUMNS = ["cell", "arch", "input_shape", "job", "seconds", "loop_seconds", "steps", "copies", "batch_size",
                "n_train", "peak_gpu_memory_mb", "status"]


# --------------------------------------------------------------------------- table comparison
NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def cell_value(text) -> float:
    """The leading number of a Table 1 cell (`0.87 [0.71, 0.95]` → 0.87); NaN for a flag or blank."""
    match = NUMBER.match(str(text)) if text is not None else None
    return float(match.group(1)) if match else float("nan")


def compare_table1(cpu, gpu, tolerance: float = 0.005):
    """One row per (dataset, model, column) of two table1.csv frames: both cells' text, the change
    gpu − cpu of the leading value, and `moved` (|change| > tolerance, or the text of a flagged
    cell differs, or the cell is only in one table). A report, not a test: sorted by |change|."""
    import pandas as pd

    keys = ["dataset", "model"]
    columns = [c for c in cpu.columns if c not in keys + ["estimator"] and c in gpu.columns]
    rows = []
    merged = cpu.merge(gpu, on=keys, how="outer", suffixes=("_cpu", "_gpu"), indicator=True)
    for _, row in merged.iterrows():
        for column in columns:
            a, b = row.get(f"{column}_cpu"), row.get(f"{column}_gpu")
            va, vb = cell_value(a), cell_value(b)
            change = vb - va
            numbers = va == va and vb == vb
            moved = abs(change) > tolerance if numbers else (str(a) != str(b) or row["_merge"] != "both")
            rows.append({"dataset": row["dataset"], "model": row["model"], "column": column, "cpu": a, "gpu": b,
                         "change": change if numbers else float("nan"), "moved": bool(moved)})
    out = pd.DataFrame(rows, columns=["dataset", "model", "column", "cpu", "gpu", "change", "moved"])
    return out.assign(size=out.change.abs()).sort_values("size", ascending=False, na_position="last").drop(columns="size")


def comparison_text(table, tolerance: float = 0.005) -> str:
    """A few lines: how many cells moved, the largest change, and each moved cell."""
    moved = table[table.moved]
    largest = table.change.abs().max()
    lines = [f"{len(moved)} of {len(table)} cells moved by more than {tolerance} (or changed flag); "
             f"largest |change| {largest:.4g}" if largest == largest else f"{len(moved)} of {len(table)} cells moved"]
    lines += [f"  {r.dataset} {r.model} {r.column}: cpu {r.cpu} | gpu {r.gpu} | change {r.change:+.4g}"
              for r in moved.itertuples()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- prepare (here)
def carried_requirements() -> list[str]:
    """name==version of CARRY and their dependencies, as installed in this environment, less what
    the GPU image has (ON_IMAGE)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo = {}, list(CARRY)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen or ON_IMAGE.match(name):
            continue
        dist = metadata.distribution(name)
        seen[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": "", "python_version": "3.12"}):
                todo.append(req.name)
    return sorted(f"{n}=={v}" for n, v in seen.items())


def prepare(args) -> None:
    """Download wheels for CPython 3.12 on x86-64 Linux (a pure-Python package published only as
    source is built into one)."""
    from importlib import metadata

    WHEELS.mkdir(parents=True, exist_ok=True)
    pins = carried_requirements()
    (WHEELS / "requirements.txt").write_text("\n".join(pins) + "\n")
    pip = [sys.executable, "-m", "pip"]
    target = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--only-binary=:all:",
              "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"]
    missing = []
    for pin in pins + [f"{name}=={metadata.version(name)}" for name in FALLBACK]:
        name, version = pin.split("==")
        stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}-".lower()
        if any(p.name.lower().startswith(stem) for p in WHEELS.glob("*.whl")):
            continue  # from an earlier prepare
        got = subprocess.run(pip + ["download", "--no-deps", "-q", "-d", str(WHEELS), *target, pin])
        if got.returncode:  # no wheel published: build one (pure Python)
            if subprocess.run(pip + ["wheel", "--no-deps", "-q", "-w", str(WHEELS), pin]).returncode:
                missing.append(pin)
    if args.cpu_table:
        (WHEELS / "cpu_table1.csv").write_bytes(Path(args.cpu_table).read_bytes())
    if args.cpu_seconds:
        (WHEELS / "cpu_run.json").write_text(json.dumps({"seconds": args.cpu_seconds}))
    size = sum(p.stat().st_size for p in WHEELS.iterdir()) / 2**20
    print(f"{len(pins)} packages pinned, {len(FALLBACK)} offered, {size:.1f} MiB in {WHEELS}")
    if missing:
        sys.exit(f"no wheel for {', '.join(missing)}: the GPU machine cannot install them")


# --------------------------------------------------------------------------- the GPU machine's environment
def environment(folder: Path, dry: bool) -> tuple[str, dict]:
    """(python, env) for the parts: this interpreter when snakemake and mlxtend import (or --dry),
    else a virtualenv over the image's site-packages (its torch) with the carried wheels; the
    `pip --user` install when no virtualenv can be made."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    python = sys.executable
    have = subprocess.run([python, "-c", "import snakemake, mlxtend, pytest, xdist"], capture_output=True).returncode == 0
    log = folder / "setup.log"
    if have or dry:
        log.write_text(f"using {python} as is (snakemake, mlxtend, pytest, xdist import: {have})\n")
        return python, env
    wheels = ["--no-index", "--find-links", str(WHEELS), "-r", str(WHEELS / "requirements.txt")]
    venv = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_check_venv"
    with open(log, "w") as out:
        made = subprocess.run([python, "-m", "venv", "--system-site-packages", str(venv)], stdout=out, stderr=out,
                              timeout=60)
        pip = [python, "-m", "pip", "install", "-q"] + ([] if made.returncode == 0 else ["--user"])
        if made.returncode == 0:
            python = pip[0] = str(venv / "bin" / "python")
        for extra in ([], ["--no-deps"]):  # a dependency the image lacks and no wheel carries: install the rest
            out.write(f"$ {' '.join(pip + extra + wheels)}\n")
            out.flush()
            if subprocess.run(pip + extra + wheels, stdout=out, stderr=out, timeout=120,
                              env={**env, "PIP_BREAK_SYSTEM_PACKAGES": "1"}).returncode == 0:
                break
        subprocess.run([python, "-m", "pip", "check"], stdout=out, stderr=out, timeout=60)  # what --no-deps left unmet
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env['PATH']}"  # jobs run `python` and `snakemake`
    return python, env


def describe(python: str, env: dict) -> dict:
    code = ("import json, platform, torch; c = torch.cuda.is_available(); print(json.dumps({'python': platform.python_version(), "
            "'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version(), "
            "'device': torch.cuda.get_device_name(0) if c else 'cpu'}))")
    got = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    info = json.loads(got.stdout) if got.returncode == 0 else {"error": got.stderr[-2000:]}
    for name in ("snakemake", "mlxtend"):
        got = subprocess.run([python, "-c", f"import {name}; print({name}.__version__)"], capture_output=True, text=True,
                             env=env)
        info[name] = got.stdout.strip() or "missing"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    info.update(commit=commit.stdout.strip(), host=platform.node(), cpus=os.cpu_count())
    return info


# --------------------------------------------------------------------------- running the parts
def boxed(command: list[str], log: Path, seconds: float, env: dict) -> dict:
    """Run `command` in its own process group with output to `log`; kill the group at `seconds`."""
    began = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}   (time box {seconds:.0f} s)\n")
        out.flush()
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=max(1.0, seconds)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, timed_out = proc.returncode, True
    return {"rc": rc, "timed_out": timed_out, "seconds": round(time.perf_counter() - began, 1), "box": round(seconds)}


def snakemake(python: str, target: str, configfile: str, cores: int, dry: bool) -> list[str]:
    return [python, "-m", "snakemake", target, "--configfile", configfile, "--config", "device=cuda" if not dry else
            "device=cpu", "--cores", str(cores), "--rerun-incomplete", "--nolock", *(["-n"] if dry else [])]


def part_a(ctx, folder):
    record = boxed([ctx.python, "-m", "pytest", "-q", "-rs", "-n", "0", "tests/test_cuda.py", "-p", "no:cacheprovider"],
                   folder / "a_pytest.log", ctx.box("a", 75), ctx.env)
    tail = (folder / "a_pytest.log").read_text().strip().splitlines()
    record["result"] = tail[-1] if tail else ""
    return record


def last_line(log: Path, pattern: str) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if re.search(pattern, line)]
    return lines[-1] if lines else ""


def part_b(ctx, folder):
    record = boxed(snakemake(ctx.python, "iris", "configs/tiny.yaml", ctx.cores, ctx.dry), folder / "b_tiny.log",
                   ctx.box("b", 45), ctx.env)
    record["result"] = last_line(folder / "b_tiny.log", r"steps \(|^total\s+\d+|Nothing to be done")
    return record


def part_c(ctx, folder):
    resumed = (ROOT / "results" / "table1").exists()  # a second try on a warm machine goes on from the first
    record = boxed(snakemake(ctx.python, "all", "configs/quick.yaml", ctx.cores, ctx.dry), folder / "c_quick.log",
                   ctx.box("c", 200) - 20, ctx.env)  # 20 s kept for the report below
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import gpu_check; "
            f"gpu_check.main_job_report({str(folder)!r}, {str(WHEELS)!r})")
    boxed([ctx.python, "-c", code], folder / "c_quick.log", 20, ctx.env)
    summary = folder / "c_table1_compare.txt"
    record["result"] = "; ".join([last_line(folder / "c_quick.log", r"steps \(|^total\s+\d+"),
                                  summary.read_text().splitlines()[0] if summary.exists() else "no table1.csv to compare"])
    record["resumed"] = resumed
    cpu = WHEELS / "cpu_run.json"
    record["cpu_seconds"] = json.loads(cpu.read_text())["seconds"] if cpu.exists() else None
    if record["cpu_seconds"]:
        record["result"] += f"; the CPU run took {record['cpu_seconds']:.0f} s"
    return record


def main_job_report(folder: str, carried: str) -> None:
    """After part c: every job's seconds and peak GPU memory (the workflow's benchmark files and
    logs), and table1.csv set beside the CPU run's."""
    import pandas as pd

    from fragility.report.aggregate import benchmark_table

    folder = Path(folder)
    frames = [benchmark_table(ROOT / "results/benchmarks" / s, ROOT / "results/logs" / s).assign(study=s)
              for s in ("table1", "mnist_small") if (ROOT / "results/benchmarks" / s).exists()]
    if frames:
        pd.concat(frames).to_csv(folder / "c_jobs.csv", index=False)
    gpu_table, cpu_table = ROOT / "results/table1/table1.csv", Path(carried) / "cpu_table1.csv"
    if gpu_table.exists():
        (folder / "c_table1_gpu.csv").write_bytes(gpu_table.read_bytes())
        if cpu_table.exists():
            table = compare_table1(pd.read_csv(cpu_table), pd.read_csv(gpu_table))
            table.to_csv(folder / "c_table1_compare.csv", index=False)
            (folder / "c_table1_compare.txt").write_text(comparison_text(table) + "\n")


def part_d(ctx, folder):
    labels = [c[0] for c in CELLS if not ctx.dry or c[0] in DRY_CELLS]
    command = [ctx.python, str(Path(__file__)), "cells", "--out", str(folder / "d_cells.csv"), "--labels", *labels]
    record = boxed(command + (["--dry"] if ctx.dry else []), folder / "d_cells.log", ctx.box("d", 100), ctx.env)
    done = list(csv.DictReader(open(folder / "d_cells.csv"))) if (folder / "d_cells.csv").exists() else []
    record["result"] = f"{len(done)} jobs timed in {len({r['cell'] for r in done})} cells"
    return record


def part_e(ctx, folder):
    command = [ctx.python, str(Path(__file__)), "hessian", "--out", str(folder / "e_hessian.json")]
    record = boxed(command + (["--dry"] if ctx.dry else []), folder / "e_hessian.log", ctx.box("e", 30), ctx.env)
    if (folder / "e_hessian.json").exists():
        record["result"] = json.loads((folder / "e_hessian.json").read_text())
    return record


PARTS = {"a": part_a, "b": part_b, "e": part_e, "d": part_d, "c": part_c}  # run in this order


def cells_markdown(path: Path) -> list[str]:
    """d_cells.csv as a table: a row per cell, a column per job, `seconds / peak MiB` (or the error)."""
    rows = list(csv.DictReader(open(path)))
    jobs = list(dict.fromkeys(r["job"] for r in rows))
    table = {}
    for r in rows:
        text = f"{float(r['seconds']):.2f} / {float(r['peak_gpu_memory_mb']):.0f}" if r["status"] == "ok" else "failed"
        table.setdefault(r["cell"], {})[r["job"]] = text
    return ["| cell | " + " | ".join(jobs) + " |", "|---" * (len(jobs) + 1) + "|",
            *[f"| {cell} | " + " | ".join(row.get(j, "") for j in jobs) + " |" for cell, row in table.items()]]


class Context:
    def __init__(self, python, env, dry, budget, cores):
        self.python, self.env, self.dry, self.cores = python, env, dry, cores
        self.deadline = time.perf_counter() + budget

    def box(self, part: str, seconds: float) -> float:
        """The part's time box, cut to what is left of the budget (15 s kept for packing)."""
        return min(seconds, self.deadline - time.perf_counter() - 15)


def run(args) -> Path:
    began = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(args.out or os.environ.get("OUT") or ROOT / "results" / "gpu_check")
    folder = Path(args.work) / f"gpu_check-{stamp}"  # unpacked beside the repository: only the archive goes to out
    folder.mkdir(parents=True)
    python, env = environment(folder, args.dry)
    summary = {"dry": args.dry, "budget_s": args.budget, "environment": describe(python, env),
               "setup_seconds": round(time.perf_counter() - began, 1), "parts": {}}

    def write_summary():
        (folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        lines = [f"# GPU check {stamp}{' (--dry, CPU, toy sizes)' if args.dry else ''}",
                 "", "environment: " + json.dumps(summary["environment"]), f"setup: {summary['setup_seconds']} s", ""]
        for name, rec in summary["parts"].items():
            state = "TIMED OUT" if rec.get("timed_out") else f"rc {rec.get('rc')}"
            lines.append(f"- part {name}: {state}, {rec.get('seconds')} s (box {rec.get('box')} s): {rec.get('result', '')}")
        if (folder / "d_cells.csv").exists():
            lines += ["", "part d, seconds / peak GPU MiB per job:", "", *cells_markdown(folder / "d_cells.csv")]
        (folder / "summary.md").write_text("\n".join(lines) + "\n")

    write_summary()
    ctx = Context(python, env, args.dry, args.budget - (time.perf_counter() - began), args.cores)
    for name, part in PARTS.items():
        if (args.only and name not in args.only) or name in args.skip:
            continue
        if ctx.box(name, 1e9) < 5:
            summary["parts"][name] = {"rc": None, "seconds": 0, "box": 0, "result": "skipped: budget spent"}
        else:
            summary["parts"][name] = part(ctx, folder)
        write_summary()  # as it goes: a killed run still leaves every finished part's record
    summary["seconds"] = round(time.perf_counter() - began, 1)
    write_summary()
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{folder.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    print(f"{archive} ({summary['seconds']} s)")
    return archive


# --------------------------------------------------------------------------- parts d and e (GPU processes)
def synthetic(path, shape, classes, n, n_test, seed=0):
    """Uniform random images with random labels: the costs depend only on shapes."""
    import torch

    from fragility.data.split import Split

    gen = torch.Generator().manual_seed(seed)
    Split(torch.rand(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen),
          torch.rand(n_test, *shape, generator=gen), torch.randint(0, classes, (n_test,), generator=gen),
          classes, {"loader": "synthetic"}).save(path)


class Timer:
    """Seconds (synchronised) and peak GPU memory of one call."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        value = fn()
        if self.cuda:
            self.torch.cuda.synchronize()
        peak = self.torch.cuda.max_memory_allocated() / 2**20 if self.cuda else float("nan")
        return value, time.perf_counter() - began, peak


def cells(args) -> None:
    """One cell per label: each workflow step run as its job runs it (study/pipeline.py), timed;
    a row per job appended to the CSV as soon as it is done."""
    from fragility.runtime import configure, resolve_device
    from fragility.study import pipeline
    from fragility.truths.registry import get as get_truth

    configure()
    device = resolve_device("cpu" if args.dry else "cuda")
    n, n_test, steps, depth, power, short, _ = SIZES["dry" if args.dry else "gpu"]
    timer, out = Timer(device), Path(args.out)
    work = out.parent.parent / "cells_data"  # data and models, beside the packed folder; the cells' JSON files are
    work.mkdir(parents=True, exist_ok=True)
    (out.parent / "d_cells").mkdir(exist_ok=True)
    with open(out, "w", newline="") as handle:
        csv.DictWriter(handle, CELL_COLUMNS).writeheader()
    quiet = lambda message: None  # noqa: E731
    for label, arch, shape, classes, batch, lissa_batch, chunk_size, loo_chunk, ekfac in CELLS:
        if label not in args.labels:
            continue
        f = lambda name: str(work / f"{label}.{name}")  # noqa: E731
        n_cell = n // 4 if shape == IMAGENET else n  # costs that grow with n are per point in the cost model
        synthetic(f("data.pt"), shape, classes, n_cell, n_test)
        train_cfg = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine", "steps": steps,
                     "batch_size": batch if not args.dry else 8, "check_every": steps, "checkpoint_every": 0}
        loo_cfg = {"steps": short, "chunk_size": loo_chunk, "lr": 0.001, "schedule": "constant", "checkpoint_every": 0}
        k = min(loo_chunk, n if not args.dry else 2)
        lissa = {"method": "lissa", "depth": depth, "batch_size": lissa_batch if not args.dry else 8, "scale": "auto",
                 "scale_factor": 1.5, "repeats": 1, "power_iterations": power}
        model, tp = f("model.pt"), f("tp.json")
        jobs = [("train", steps, 1, lambda: pipeline.train(f("data.pt"), arch, 0.001, 0, train_cfg, "float32", device.type,
                                                           model, f("metrics.json"), log=quiet)),
                ("train (again, warm)", steps, 1, lambda: pipeline.train(f("data.pt"), arch, 0.001, 0, train_cfg, "float32",
                                                                        device.type, model, f("metrics.json"), log=quiet)),
                ("test_points", None, None, lambda: pipeline.pick_test_points(model, f("data.pt"), ["max", "median"], tp,
                                                                              device.type))]
        for name, cfg in (("lissa", lissa), ("ekfac", {"method": "ekfac", **ekfac}), ("identity", {"method": "identity"})):
            jobs.append((f"influence {name}", depth if name == "lissa" else None, None,
                         lambda name=name, cfg=cfg: pipeline.compute_influence(
                             model, f("data.pt"), tp, name, cfg, 0.01, f(f"{name}.parquet"), f(f"{name}.json"),
                             device_name=device.type, chunk_size=chunk_size, log=quiet)))
        cell = {"model": model, "data": f("data.pt"), "test_points": tp}
        pbrf_cfg = {**get_truth("pbrf").defaults, "solver": "train"}
        jobs += [("loo_chunk", short, k, lambda: get_truth("loo").retrain_chunk(
                     cell, [(i, [i]) for i in range(k)], loo_cfg, loo_cfg, train_cfg, f("loo.parquet"),
                     device_name=device.type, log=quiet)),
                 ("pbrf_chunk", short, k, lambda: get_truth("pbrf").retrain_chunk(
                     cell, [(i, [i]) for i in range(k)], pbrf_cfg, loo_cfg, train_cfg, f("pbrf.parquet"),
                     damping=0.01, device_name=device.type, log=quiet))]
        for job, job_steps, copies, fn in jobs:
            status, loop = "ok", float("nan")
            try:
                value, seconds, peak = timer(fn)
                if job.startswith("train"):
                    loop = value["train_seconds"]
                elif job in ("loo_chunk", "pbrf_chunk"):
                    loop = value
            except Exception as err:  # recorded, and the cell goes on to its next job where it can
                seconds, peak, status = float("nan"), float("nan"), f"{type(err).__name__}: {err}"[:300]
            row = {"cell": label, "arch": arch, "input_shape": "x".join(map(str, shape)), "job": job,
                   "seconds": round(seconds, 3), "loop_seconds": round(loop, 3), "steps": job_steps, "copies": copies,
                   "batch_size": train_cfg["batch_size"] if job_steps and not job.startswith("influence") else
                   (lissa["batch_size"] if job == "influence lissa" else None),
                   "n_train": n_cell, "peak_gpu_memory_mb": round(peak, 1), "status": status}
            with open(out, "a", newline="") as handle:
                csv.DictWriter(handle, CELL_COLUMNS).writerow(row)
            print(json.dumps(row), flush=True)
        for path in work.glob(f"{label}.*.json"):  # metrics (device, flags), diagnostics, test points
            (out.parent / "d_cells" / path.name).write_bytes(path.read_bytes())


def hessian(args) -> None:
    """The exact solve of mnist_small (config.yaml: `primary: {method: exact, block: 64}`) for the
    small CNN on 6,000 MNIST-shaped points (10 % of MNIST's training set): the Hessian of R(θ)
    by blocks of 64 products, then its eigendecomposition. --dry: an Iris-sized net, 10 points."""
    import torch

    from fragility.engine.flat import FlatModel
    from fragility.engine.objective import Objective
    from fragility.engine.solvers import make_solver
    from fragility.models.registry import build_model
    from fragility.runtime import configure, resolve_device

    configure()
    device = resolve_device("cpu" if args.dry else "cuda")
    n = SIZES["dry" if args.dry else "gpu"][6]
    gen = torch.Generator().manual_seed(0)
    arch, shape = ("mlp-d1-w5", (4,)) if args.dry else ("smallcnn", MNIST)
    x, y = torch.rand(n, *shape, generator=gen).to(device), torch.randint(0, 10, (n,), generator=gen).to(device)
    torch.manual_seed(0)
    net = FlatModel(build_model(arch, shape, 10).to(device).eval())
    theta = net.flatten()
    solver = make_solver("exact", block=64, max_parameters=20000)
    _, seconds, peak = Timer(device)(lambda: solver.fit(Objective(net, x, y, 0.001, chunk_size=1000), theta))
    result = {"arch": arch, "parameters": net.num_parameters, "n_train": n, "seconds": round(seconds, 3),
              "peak_gpu_memory_mb": round(peak, 1), "device": str(device), "dtype": "float32"}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="wheels and the CPU run's table into benchmarks/gpu_wheels (here)")
    p.add_argument("--cpu-table", help="table1.csv of a CPU run of configs/quick.yaml")
    p.add_argument("--cpu-seconds", type=float, help="that run's wall seconds")
    p = sub.add_parser("run", help="all parts, packed into gpu_check-<time>.tar.gz")
    p.add_argument("--dry", action="store_true", help="on CPU at toy size; the workflow parts as dry runs (-n)")
    p.add_argument("--budget", type=float, default=290, help="wall seconds for all parts (default 290)")
    p.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    p.add_argument("--skip", nargs="+", choices=sorted(PARTS), default=[], help="leave these parts out")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="snakemake --cores (default: all)")
    p.add_argument("--out", help="where the archive goes (default $OUT, else results/gpu_check)")
    p.add_argument("--work", default=str(ROOT / "results" / "gpu_check"), help="where the parts write (unpacked)")
    for name in ("cells", "hessian"):
        p = sub.add_parser(name, help=f"part {'d' if name == 'cells' else 'e'} (run by `run`)")
        p.add_argument("--out", required=True)
        p.add_argument("--dry", action="store_true")
        if name == "cells":
            p.add_argument("--labels", nargs="+", default=[c[0] for c in CELLS])
    args = parser.parse_args(argv)
    {"prepare": prepare, "run": run, "cells": cells, "hessian": hessian}[args.command](args)


if __name__ == "__main__":
    main()
