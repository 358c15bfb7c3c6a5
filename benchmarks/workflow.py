"""Fixed costs of the workflow: a no-op job's overhead, and one whole small cell through Snakemake.

    nice .venv/bin/python benchmarks/workflow.py --baseline ../old-main   # both sections, 3 repeats
    .venv/bin/python benchmarks/workflow.py --only noop --repeat 5
    options: --only noop trainer cell, --repeat N (median of N), --cores N (default 1), --jobs N (no-op jobs),
             --cell-config tiny|paper (the cell section: configs/tiny.yaml or config.yaml),
             --baseline DIR (another checkout, run as it is), --markdown FILE

noop: Snakemake runs N independent jobs of a bare workflow with `--cores 1`; the per-job overhead
is (T(N) − T(1)) / (N − 1), for a `run:` job (spawned as a fresh Snakemake, Snakemake's default,
and in a thread with --force-use-threads), a `script:` that imports nothing, and a `script:` that
imports the library's pipeline (torch, pandas) and sets torch up as every heavy step does, with
runtime.configure and with the public torch.use_deterministic_algorithms it used before.

trainer: CPU time per step of full-batch GD on the Iris nets, the trainer's plain step against
torch.optim.SGD with a LambdaLR schedule, the written-out gradient of a plain chain
(flat.ChainGradient) against autograd's backward, the chain with it against
torch.func.functional_call + autograd (what each replaced), for 1 and 20 stacked copies, and the
trainer against a plain PyTorch loop; and whether the bits agree.

cell: one Iris cell of configs/tiny.yaml (mlp-d1-w5, decay 0.005: train → test points → 2
influence estimators → selection → drift control → LOO chunk → correlations) from a fresh copy of
the workflow, with `fuse_fit: true` (train → influence → drift control as one job), `fuse_fit:
false` (one job per step, the image studies' layout) and, with --baseline, another checkout as it
is. The copies' cell files must be equal (checked: every parquet table, and every json file less
its timings). Wall time and CPU time (user + sys of
Snakemake and all its jobs) are reported: on a loaded machine the CPU time is the comparable one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_FILES = ["Snakefile", "config.yaml", "configs", "workflow", "profiles", "envs"]
CELL = "results/iris/iris/mlp-d1-w5/wd0.005/seed0"

NOOP_SNAKEFILE = """
N = int(config["count"])

wildcard_constraints:
    i="[0-9]+",

rule all:
    input: expand("out/{kind}_{i}.txt", kind=config["kind"], i=range(N))

rule run_job:
    output: "out/run_{i}.txt"
    run:
        open(output[0], "w").close()

rule bare_script:
    output: "out/bare_{i}.txt"
    script: "bare.py"

rule library_script:
    output: "out/library_{i}.txt"
    script: "library.py"

rule library_old_script:
    output: "out/library_old_{i}.txt"
    script: "library_old.py"
"""
BARE = 'open(snakemake.output[0], "w").close()\n'
LIBRARY = ('import fragility.study.pipeline  # torch, pandas\nfrom fragility import runtime\nruntime.configure(1)\n'
           'open(snakemake.output[0], "w").close()\n')
# the same with the public torch call that runtime.configure made before (it imports torch._inductor)
LIBRARY_OLD = ('import fragility.study.pipeline\nimport torch\ntorch.set_num_threads(1)\n'
               'torch.use_deterministic_algorithms(True, warn_only=True)\nopen(snakemake.output[0], "w").close()\n')
KINDS = {  # name: (rule's output prefix, extra Snakemake options, description)
    "run": ("run", [], "`run:` job, Snakemake's default (a fresh Snakemake process per job)"),
    "run_threads": ("run", ["--force-use-threads"], "`run:` job with force-use-threads (profiles/default)"),
    "bare": ("bare", [], "`script:` job importing nothing"),
    "library_old": ("library_old", [], "`script:` job: import the pipeline, torch.use_deterministic_algorithms"),
    "library": ("library", [], "`script:` job: import the pipeline, runtime.configure (what a heavy step pays)"),
}


def timed(cmd, cwd, env=None):
    """(wall seconds, CPU seconds of the command and all its children), failing loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def env_with_library():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def noop(repeat, n_jobs, cores):
    rows = []
    for kind, (prefix, options, description) in KINDS.items():
        samples = {1: [], n_jobs: []}
        for _ in range(repeat):
            for n in (1, n_jobs):
                with tempfile.TemporaryDirectory() as tmp:
                    Path(tmp, "Snakefile").write_text(NOOP_SNAKEFILE)
                    Path(tmp, "bare.py").write_text(BARE)
                    Path(tmp, "library.py").write_text(LIBRARY)
                    Path(tmp, "library_old.py").write_text(LIBRARY_OLD)
                    wall, cpu, _ = timed([SNAKEMAKE, "--cores", str(cores), "--quiet", *options, "--config", f"count={n}",
                                          f"kind={prefix}"], tmp, env_with_library())
                    samples[n].append((wall, cpu))
        med = {n: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for n, s in samples.items()}
        rows.append({
            "section": "no-op job", "case": description,
            "wall_per_job_s": (med[n_jobs][0] - med[1][0]) / (n_jobs - 1),
            "cpu_per_job_s": (med[n_jobs][1] - med[1][1]) / (n_jobs - 1),
            "note": f"median of {repeat}; {n_jobs} jobs vs 1, --cores {cores}; one job run: {med[1][0]:.1f} s wall",
        })
    return rows


def copy_workflow(dest: Path, source: Path, fuse: bool | None) -> Path:
    """The workflow files of `source`, with `fuse_fit` set for the Iris study (None: left as is)."""
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    text = "{}" if fuse is None else f"studies: {{iris: {{fuse_fit: {str(fuse).lower()}}}}}"
    (dest / "configs" / "bench_fuse.yaml").write_text(text + "\n")
    return dest


def cell_files(workdir: Path) -> dict:
    """Every table and json file of the cell, read (parquet as a DataFrame)."""
    out = {}
    cell = workdir / CELL
    for path in sorted(cell.rglob("*")):
        rel = str(path.relative_to(cell))
        if path.suffix == ".parquet":
            out[rel] = pd.read_parquet(path)
        elif path.suffix == ".json":
            out[rel] = json.loads(path.read_text())
    return out


def strip_times(value):
    """JSON without its timing fields (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: strip_times(v) for k, v in value.items() if "second" not in k and k != "history"}
    if isinstance(value, list):
        return [strip_times(v) for v in value]
    return value


def same_files(a: dict, b: dict) -> str:
    if set(a) != set(b):
        return f"different files: {sorted(set(a) ^ set(b))}"
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, pd.DataFrame):
            if not x.equals(y):
                return f"{name} differs"
        elif strip_times(x) != strip_times(y):
            return f"{name} differs"
    return f"identical ({len(a)} files)"


CELL_CONFIGS = {"tiny": ["configs/tiny.yaml"], "paper": []}  # configs/tiny.yaml, or config.yaml alone


def cell(repeat, cores, baseline=None, config="tiny"):
    """The cell through Snakemake: this tree fused and split, and the `baseline` checkout as it is;
    `config` "tiny" (configs/tiny.yaml, short training) or "paper" (config.yaml: 60,000 steps)."""
    variants = {"fused": (REPO, True), "split": (REPO, False)}
    if baseline:
        variants["baseline"] = (Path(baseline).resolve(), None)
    samples = {name: [] for name in variants}
    files, jobs = {}, {}
    for _ in range(repeat):
        for name, (source, fuse) in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                work = copy_workflow(Path(tmp) / "w", source, fuse)
                args = ["--configfile", *CELL_CONFIGS[config], "configs/bench_fuse.yaml"]
                env = dict(env_with_library(), PYTHONPATH=str(source / "src"))
                wall, cpu, out = timed([SNAKEMAKE, "--cores", str(cores), f"{CELL}/correlations.parquet", *args], work, env)
                samples[name].append((wall, cpu))
                files[name] = cell_files(work)
                jobs[name] = len(re.findall(r"^(?:local)?(?:rule|checkpoint) \w+:", out, re.M))
    med = {n: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for n, s in samples.items()}
    rows = []
    for name in variants:
        if name == "fused":
            continue
        rows.append({
            "section": "one small cell",
            "case": f"Iris mlp-d1-w5 cell of {'configs/tiny.yaml' if config == 'tiny' else 'config.yaml'}: fused ({jobs['fused']} jobs) vs {name} ({jobs[name]} jobs)",
            "ours_wall_s": med["fused"][0], "baseline_wall_s": med[name][0], "ours_cpu_s": med["fused"][1],
            "baseline_cpu_s": med[name][1], "wall_ratio": med[name][0] / med["fused"][0],
            "cpu_ratio": med[name][1] / med["fused"][1], "agreement": same_files(files[name], files["fused"]),
            "note": f"median of {repeat}; --cores {cores}" + (f"; baseline = {baseline}" if name == "baseline" else
                                                            "; split = this tree with fuse_fit: false"),
        })
    return rows


def trainer(repeat, steps=3000):
    """CPU time per step of full-batch GD on the Iris nets (float64, 1 thread), each against what the
    trainer used before, after one warm-up run of each: the plain step against torch.optim.SGD +
    LambdaLR (mlp-d1-w5, one copy); the written-out gradient (ChainGradient) against autograd's
    backward on the same chain; the chain with it against functional_call + autograd (vmap of it
    for 20 copies); and the trainer against a plain PyTorch loop (module forward, loss.backward(),
    p -= η p.grad; other operations, so not the same bits: its largest |Δθ| is reported)."""
    import torch
    import torch.nn.functional as F

    from fragility.data.registry import load_split
    from fragility.engine import training
    from fragility.engine.flat import FlatModel
    from fragility.models.registry import init_model

    torch.set_num_threads(1)
    split = load_split("iris", {"test_fraction": 0.2, "split_seed": 0})
    x, y = split.x_train.double(), split.y_train

    def compare(case, arch, copies, use_new, baseline):
        """Time `train_copies` with `use_new(net, True)` (this code) and `use_new(net, False)` (before)."""
        times, thetas = {True: [], False: []}, {}
        for run in range(repeat + 1):
            for new in (True, False):
                net = FlatModel(init_model(arch, (4,), 3, seed=0, dtype=torch.float64))
                use_new(net, new)
                settings = training.TrainSettings(steps=steps, lr=0.01, check_every=10 * steps)
                start = time.process_time()
                result = training.train_copies(net, x, y, 0.005, net.flatten().repeat(copies, 1),
                                               torch.ones(copies, len(y), dtype=torch.float64), settings,
                                               log=lambda message: None)
                if run:  # the first run of each is a warm-up (and imports torch._dynamo for SGD)
                    times[new].append((time.process_time() - start) / steps)
                thetas[new] = result.thetas
        training.PLAIN_STEP = training.CHAIN_GRADIENT = True
        return row(case, times, baseline, "bit-identical" if torch.equal(thetas[True], thetas[False]) else "DIFFERENT")

    def row(case, times, baseline, agreement):
        ours, base = statistics.median(times[True]), statistics.median(times[False])
        return {"section": "trainer", "case": case, "ours_us": ours * 1e6, "base_us": base * 1e6, "ratio": base / ours,
                "agreement": agreement, "note": f"median of {repeat} runs of {steps} steps, CPU time, 1 thread",
                "baseline": baseline}

    def plain_loop(case, arch):
        """The trainer (one copy) against the loop a PyTorch user writes for the same objective."""
        times, thetas = {True: [], False: []}, {}
        for run in range(repeat + 1):
            net = FlatModel(init_model(arch, (4,), 3, seed=0, dtype=torch.float64))
            start = time.process_time()
            thetas[True] = training.train_copies(
                net, x, y, 0.005, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64),
                training.TrainSettings(steps=steps, lr=0.01, check_every=10 * steps), log=lambda message: None).thetas[0]
            ours = time.process_time() - start
            model = init_model(arch, (4,), 3, seed=0, dtype=torch.float64)
            params = list(model.parameters())
            start = time.process_time()
            for _ in range(steps):
                loss = F.cross_entropy(model(x), y) + 0.5 * 0.005 * sum(p.pow(2).sum() for p in params)
                model.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    for p in params:
                        p.sub_(0.01 * p.grad)
            base = time.process_time() - start
            thetas[False] = torch.cat([p.detach().reshape(-1) for p in params])
            if run:
                times[True].append(ours / steps)
                times[False].append(base / steps)
        return row(case, times, "a plain PyTorch loop",
                   f"max abs diff = {float((thetas[True] - thetas[False]).abs().max()):.1e}")

    def plain_step(net, new):
        training.PLAIN_STEP = new

    def written_out(net, new):
        training.CHAIN_GRADIENT = new

    def chain(net, new):
        if not new:
            net.chain = None  # the baseline: torch.func.functional_call of the module, autograd's backward

    rows = [compare("Iris mlp-d1-w5, full-batch GD, 1 copy", "mlp-d1-w5", 1, plain_step, "torch.optim.SGD + LambdaLR")]
    for arch in ("mlp-d1-w5", "mlp-d8-w5", "mlp-d1-w50"):
        for copies in (1, 20):
            name = f"Iris {arch}, full-batch GD, {copies} cop{'y' if copies == 1 else 'ies'}"
            rows.append(compare(name, arch, copies, written_out, "autograd's backward (same chain)"))
            rows.append(compare(name, arch, copies, chain,
                                "functional_call + autograd" if copies == 1 else "vmap of functional_call + autograd"))
    for arch in ("mlp-d1-w5", "mlp-d8-w5"):
        rows.append(plain_loop(f"Iris {arch}, full-batch GD, 1 copy", arch))
    return rows


# per section: the table's header cells (with alignment) and one row's cells
TABLES = {
    "no-op job": ([("job", "---"), ("overhead per job, wall (s)", "---:"), ("overhead per job, CPU (s)", "---:"),
                   ("note", "---")],
                  lambda r: [r["case"], f"{r['wall_per_job_s']:.2f}", f"{r['cpu_per_job_s']:.2f}", r["note"]]),
    "trainer": ([("case", "---"), ("trainer (µs/step)", "---:"), ("baseline", "---"), ("baseline (µs/step)", "---:"),
                 ("ratio", "---:"), ("agreement", "---"), ("note", "---")],
                lambda r: [r["case"], f"{r['ours_us']:.0f}", r["baseline"], f"{r['base_us']:.0f}", f"{r['ratio']:.2f}×",
                           r["agreement"], r["note"]]),
    "one small cell": ([("case", "---"), ("fused wall (s)", "---:"), ("other wall (s)", "---:"), ("ratio", "---:"),
                        ("fused CPU (s)", "---:"), ("other CPU (s)", "---:"), ("ratio", "---:"), ("agreement", "---"),
                        ("note", "---")],
                       lambda r: [r["case"], f"{r['ours_wall_s']:.1f}", f"{r['baseline_wall_s']:.1f}",
                                  f"{r['wall_ratio']:.2f}×", f"{r['ours_cpu_s']:.1f}", f"{r['baseline_cpu_s']:.1f}",
                                  f"{r['cpu_ratio']:.2f}×", r["agreement"], r["note"]]),
}


def markdown(rows, header):
    lines = [header, ""]
    for section, (columns, cells) in TABLES.items():
        part = [r for r in rows if r["section"] == section]
        if part:
            lines += ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "|".join(a for _, a in columns) + "|"]
            lines += ["| " + " | ".join(cells(r)) + " |" for r in part]
            lines.append("")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["noop", "trainer", "cell"], default=["noop", "trainer", "cell"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=6, help="no-op jobs per run (noop section)")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--cell-config", choices=sorted(CELL_CONFIGS), default="tiny",
                        help="cell section: the tiny config's cell or the paper-scale config's (60,000 steps)")
    parser.add_argument("--baseline", help="a checkout of the code to compare with (e.g. the previous main)")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    header = (f"Machine: {os.cpu_count()} cores, load average at start {load:.1f}; Python {sys.version.split()[0]}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows = []
    if "noop" in args.only:
        rows += noop(args.repeat, args.jobs, args.cores)
    if "trainer" in args.only:
        rows += trainer(args.repeat)
    if "cell" in args.only:
        rows += cell(args.repeat, args.cores, args.baseline, args.cell_config)
    text = markdown(rows, header)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
