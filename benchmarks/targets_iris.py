"""Influence vs PBRF vs LOO on the Iris nets (README: "Other ground truths").

For each architecture and decay: train θ* (full-batch gradient descent), take the highest-loss
test point, score every training point with the exact and the Gauss-Newton inverse Hessian
(damping 0.01 with decay, 0.001 without, as config.yaml), re-train the 20 points of largest
|exact Δ̂| by warm-start LOO (gradient descent, loss over the kept points) and by PBRF solved to
convergence with L-BFGS at ε = −1/n (s = 1) and in the small-ε limit (s = 0.01 and 0.001), and
print the Pearson correlations between them.

    PYTHONPATH=src .venv/bin/python benchmarks/targets_iris.py [--steps 6000] [--archs mlp-d1-w5 ...]
        [--damping-without-decay 0.001] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fragility.data.registry import load_split
from fragility.engine.flat import FlatModel
from fragility.engine.ihvp import ExactSolver
from fragility.estimators.inverse_hessian import influence_table
from fragility.engine.objective import Objective
from fragility.engine.pbrf import removal_terms, solve_lbfgs
from fragility.engine.training import TrainSettings, train_copies
from fragility.models.registry import init_model

SCALES = (1.0, 0.01, 0.001)  # s: ε = −s/n, the PBRF response divided by s
ARCHS = ["mlp-d1-w5", "mlp-d2-w5", "mlp-d3-w5", "mlp-d5-w5", "mlp-d1-w20", "mlp-d1-w50"]


def pearson(a, b):
    """Pearson over the pairs where both are finite (a PBRF copy L-BFGS did not solve is NaN)."""
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() >= 3 else float("nan")


def cell(arch, decay, data, steps, lr, loo_steps, top, damping_without_decay=0.001):
    x, y, xt, yt = data
    damping = 0.01 if decay > 0 else damping_without_decay
    net = FlatModel(init_model(arch, (4,), 3, seed=0, dtype=torch.float64))
    ones = torch.ones(1, len(y), dtype=torch.float64)
    theta = train_copies(net, x, y, decay, net.flatten()[None], ones,
                         TrainSettings(steps=steps, lr=lr, check_every=10**9), log=lambda m: None).thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    losses = net.per_sample_losses(theta, xt, yt).detach()
    point = {"name": "max", "index": int(losses.argmax())}
    objective = Objective(net, x, y, decay)
    scores = {}
    for name, hessian in (("exact", "full"), ("gauss_newton", "gauss_newton")):
        solver = ExactSolver(hessian=hessian).fit(objective, theta)
        table, _ = influence_table(net, theta, x, y, [point], xt, yt, solver, damping)
        scores[name] = table.sort_values("train_index").predicted_loss_change.to_numpy()
    chosen = np.argsort(-np.abs(scores["exact"]))[:top]
    base = float(losses[point["index"]])

    def change(thetas):
        with torch.no_grad():
            return np.array([float(net.per_sample_losses(t, xt[point["index"]][None], yt[point["index"]][None])[0]) - base
                             for t in thetas])

    weights = torch.ones(top, len(y), dtype=torch.float64)
    weights[torch.arange(top), torch.tensor(chosen)] = 0.0
    loo = change(train_copies(net, x, y, decay, theta.repeat(top, 1), weights,
                              TrainSettings(steps=loo_steps, lr=lr, check_every=10**9), log=lambda m: None).thetas)
    pbrf, norms = {}, {}
    for scale in SCALES:
        terms = removal_terms(net, theta, x, y, [[int(i)] for i in chosen], scale, decay + damping)
        solved, _, grad_norms, _ = solve_lbfgs(net, x, terms, theta.repeat(top, 1), max_iterations=500, tolerance=1e-12)
        pbrf[scale], norms[scale] = change(solved) / scale, max(grad_norms)
        norms[f"solved_{scale:g}"] = int(np.isfinite(pbrf[scale]).sum())
    ex, gn = scores["exact"][chosen], scores["gauss_newton"][chosen]
    return {"arch": arch, "decay": decay, "damping": damping,
            "gradient_norm_theta_star": float(objective.gradient(theta).norm()),
            "gn_vs_pbrf_small_eps": pearson(gn, pbrf[0.01]), "gn_vs_pbrf_smaller_eps": pearson(gn, pbrf[0.001]),
            "gn_vs_pbrf": pearson(gn, pbrf[1.0]),
            "exact_vs_pbrf": pearson(ex, pbrf[1.0]), "pbrf_vs_loo": pearson(pbrf[1.0], loo),
            "exact_vs_loo": pearson(ex, loo), "gn_vs_loo": pearson(gn, loo), "exact_vs_gn": pearson(ex, gn),
            "pbrf_max_gradient_norm": max(norms[s] for s in SCALES), "pbrf_solved": norms["solved_1"],
            "pbrf_solved_small_eps": min(norms["solved_0.01"], norms["solved_0.001"])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="*", default=ARCHS)
    parser.add_argument("--decays", nargs="*", type=float, default=[0.005, 0.0])
    parser.add_argument("--steps", type=int, default=6000, help="training steps at lr 0.05")
    parser.add_argument("--loo-steps", type=int, default=1500, help="LOO steps at lr 0.05 (config.yaml: 7,500 at 0.01)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--damping-without-decay", type=float, default=0.001, help="δ of the no-decay cells (config.yaml: 0.001)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    split = load_split("iris", {"test_fraction": 0.2, "split_seed": 0, "standardize": True})
    data = (split.x_train.double(), split.y_train, split.x_test.double(), split.y_test)
    rows = []
    keys = ["gn_vs_pbrf_small_eps", "gn_vs_pbrf_smaller_eps", "gn_vs_pbrf", "exact_vs_pbrf", "pbrf_vs_loo", "exact_vs_loo", "gn_vs_loo"]
    print("| arch | decay | δ | " + " | ".join(keys) + " | ‖∇R(θ*)‖ | PBRF solved (s = 1; s < 1) |")
    print("|---|---:|---:|" + "---:|" * (len(keys) + 2))
    for decay in args.decays:
        for arch in args.archs:
            began = time.perf_counter()
            row = cell(arch, decay, data, args.steps, 0.05, args.loo_steps, args.top, args.damping_without_decay)
            row["seconds"] = time.perf_counter() - began
            rows.append(row)
            print(f"| {arch} | {decay:g} | {row['damping']:g} | " + " | ".join(f"{row[k]:.4f}" for k in keys)
                  + f" | {row['gradient_norm_theta_star']:.1e} | {row['pbrf_solved']}, {row['pbrf_solved_small_eps']} "
                  f"of {args.top} |", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
