"""Iris nets: K-FAC and EK-FAC Δ̂ against the exact Gauss-Newton Δ̂ and against the exact
block-diagonal Gauss-Newton Δ̂ (one exact block per covered layer: what any block method aims at),
mean Pearson over the 3 highest-loss test points (docs/estimators.md). Each net: 6,000 full-batch
GD steps at lr 0.05; δ = 0.01 with decay 0.005, 0.001 without.

    .venv/bin/python benchmarks/kfac_blockdiag.py mlp-d1-w5 mlp-d2-w5 mlp-d3-w5 mlp-d1-w20
"""
import sys, torch
from fragility.data.registry import load_split
from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, per_sample_gradients
from fragility.engine.solvers import make_solver
from fragility.engine.training import TrainSettings, train_copies
from fragility.models.registry import init_model
torch.set_num_threads(1)
split = load_split("iris", {"test_fraction": 0.2, "split_seed": 0, "standardize": True})
x, y, xt, yt = split.x_train.double(), split.y_train, split.x_test.double(), split.y_test
def pearson(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
for arch in sys.argv[1:]:
    for decay, damping in ((0.005, 0.01), (0.0, 0.001)):
        net = FlatModel(init_model(arch, (4,), 3, seed=0, dtype=torch.float64))
        theta = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=torch.float64),
                             TrainSettings(steps=6000, lr=0.05, check_every=10**9), log=lambda m: None).thetas[0]
        obj = Objective(net, x, y, decay)
        G = obj.with_hessian("gauss_newton").hessian(theta)  # G + λI
        p = len(theta)
        M = G + damping * torch.eye(p, dtype=G.dtype)
        ekfac = make_solver("ekfac").fit(obj, theta)
        kfac = make_solver("kfac").fit(obj, theta)
        mask = torch.zeros(p, p, dtype=torch.bool)
        for layer in ekfac.layers:
            idx = torch.arange(p)[layer.weight_slice].reshape(-1)
            if layer.bias_slice is not None:
                idx = torch.cat([idx, torch.arange(p)[layer.bias_slice]])
            mask[idx[:, None], idx[None, :]] = True
        covered = mask.any(1)
        Mb = torch.where(mask, M, torch.zeros_like(M)) + torch.diag(torch.where(covered, 0.0, M.diagonal()))
        gtrain = per_sample_gradients(net, theta, x, y)
        losses = net.per_sample_losses(theta, xt, yt).detach()
        top = losses.argsort(descending=True)[:3]
        gtest = per_sample_gradients(net, theta, xt[top], yt[top], measure=True)
        def dhat(solve):
            return torch.stack([gtrain @ solve(g) for g in gtest]) / len(y)
        exact = dhat(lambda v: torch.linalg.solve(M, v))
        block = dhat(lambda v: torch.linalg.solve(Mb, v))
        out = {}
        for name, s in (("kfac", kfac), ("ekfac", ekfac)):
            d = dhat(lambda v: s.solve(v[None], damping).solutions[0])
            out[name] = (sum(pearson(d[t], exact[t]) for t in range(3)) / 3, sum(pearson(d[t], block[t]) for t in range(3)) / 3)
        bd = sum(pearson(block[t], exact[t]) for t in range(3)) / 3
        print(f"{arch} decay {decay:g}: vs exact GN  K-FAC {out['kfac'][0]:.3f}  EK-FAC {out['ekfac'][0]:.3f}  block-diag {bd:.3f} | "
              f"vs block-diag GN  K-FAC {out['kfac'][1]:.3f}  EK-FAC {out['ekfac'][1]:.3f}", flush=True)
