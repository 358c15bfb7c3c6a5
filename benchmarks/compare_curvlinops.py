"""Our K-FAC / EK-FAC against curvlinops-for-pytorch's KFACLinearOperator / EKFACLinearOperator on
the same nets (an MLP and a small CNN, float64, softmax cross-entropy): the dense inverse
(K + δI)⁻¹ from each, relative Frobenius difference. type-2 (curvlinops) = our
`output_hessian: expected`; mc with 200 draws = our `sampled` with `samples: 200` (different
random draws: agreement only to Monte-Carlo error). Run in an environment with curvlinops
(envs/bench-kfac.txt):

    PYTHONPATH=src .venv-kfac/bin/python benchmarks/compare_curvlinops.py
"""

import torch
from curvlinops import EKFACLinearOperator, KFACLinearOperator
from torch import nn

from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective
from fragility.engine.solvers import make_solver


def nets():
    torch.manual_seed(0)
    yield "MLP 4-5-5-3, tanh", nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(),
                                            nn.Linear(5, 3)).double(), torch.randn(50, 4, dtype=torch.float64)
    yield "CNN conv3x3/2-conv3x3-linear, tanh", nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2), nn.Tanh(), nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(),
        nn.Linear(4, 3)).double(), torch.randn(40, 1, 7, 7, dtype=torch.float64)


def main():
    damping = 0.1
    print("| net | method | curvlinops fisher_type | ours | relative difference of (K + δI)⁻¹ |")
    print("|---|---|---|---|---:|")
    for name, model, x in nets():
        y = torch.randint(0, 3, (len(x),))
        net = FlatModel(model)
        theta = net.flatten()
        p = theta.numel()
        eye = torch.eye(p, dtype=torch.float64)
        obj = Objective(net, x, y, decay=0.0)
        for fisher, ours in [("type-2", "expected"), ("mc", "sampled")]:
            for cls, method in [(KFACLinearOperator, "kfac"), (EKFACLinearOperator, "ekfac")]:
                kwargs = dict(fisher_type=fisher, separate_weight_and_bias=False, check_deterministic=False)
                samples = 200 if fisher == "mc" else 1
                if fisher == "mc":
                    kwargs["mc_samples"] = samples
                op = cls(model, nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)], **kwargs)
                reference = torch.linalg.inv(op @ eye + damping * eye)
                solver = make_solver(method, output_hessian=ours, samples=samples).fit(obj, theta)
                got = solver.solve(eye, damping).solutions
                diff = float((got - reference).norm() / reference.norm())
                print(f"| {name} | {method} | {fisher}{' ×200' if fisher == 'mc' else ''} | {ours} | {diff:.1e} |")


if __name__ == "__main__":
    main()
