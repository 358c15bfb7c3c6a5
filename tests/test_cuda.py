"""The CUDA paths compute what the CPU paths compute (float64, so only summation order differs).

Skipped where no CUDA device is present (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
"""

import pandas as pd
import pytest
import torch
from torch import nn

from fragility.study import pipeline
from fragility.truths.registry import get
from fragility.engine.solvers import make_solver
from fragility.io import read_json
from fragility.models.registry import build_model
from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, directional_derivatives
from fragility.engine.training import TrainSettings, train_copies

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
QUIET = dict(log=lambda message: None)
CLOSE = dict(rtol=1e-7, atol=1e-10)


def on(device, *tensors):
    return [t.to(device) for t in tensors]


def iris_like(n=40):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, dtype=torch.float64, generator=gen), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize(
    "method, options",
    [("exact", {}), ("cg", {"tol": 1e-12, "max_iterations": 500}), ("arnoldi", {"iterations": 43, "rank": 43}),
     ("cg", {"tol": 1e-12, "max_iterations": 500, "dense_max_parameters": 0}),  # products through the data
     ("lissa", {"depth": 3000, "scale": "auto", "repeats": 1}), ("exact", {"hessian": "gauss_newton"}),
     ("kfac", {}), ("ekfac", {}), ("ekfac", {"output_hessian": "sampled"}), ("identity", {})],
)
def test_inverse_hessian_solvers_agree_across_devices(method, options):
    x, y = iris_like()
    rhs = torch.randn(3, 43, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    solutions, statuses, norms = {}, {}, {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = FlatModel(build_model("mlp-d1-w5", (4,), 3).to(device, torch.float64))
        xd, yd, rd = on(device, x, y, rhs)
        solver = make_solver(method, **options).fit(Objective(net, xd, yd, decay=0.01, chunk_size=None), net.flatten())
        result = solver.solve(rd, 1.0)  # H + I is positive definite for this net: every method converges
        solutions[device], statuses[device] = result.solutions.cpu(), result.status
        if solver.supports_norms:  # ‖(H + δI)⁻¹ g‖ for many g: the predicted parameter-change norms
            norms[device] = solver.solution_norms(rd, 1.0).cpu()
    assert statuses["cuda"] == statuses["cpu"] == ["ok"] * 3
    assert torch.allclose(solutions["cuda"], solutions["cpu"], **CLOSE)
    if norms:
        assert torch.allclose(norms["cuda"], norms["cpu"], **CLOSE)


@pytest.mark.parametrize("hessian", ["full", "gauss_newton"])
def test_curvature_products_agree_across_devices(hessian):
    """The cached operator (torch.func's vjp of ∇R on CUDA, the autograd engine on CPU), the
    chunked products and the full matrix, on a small CNN with tanh (float64)."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 28, 28, dtype=torch.float64, generator=gen), torch.randint(0, 10, (12,), generator=gen)
    vectors = torch.randn(3, 2616, dtype=torch.float64, generator=gen)
    products = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = FlatModel(build_model("smallcnn", (1, 28, 28), 10).to(device, torch.float64).eval())
        xd, yd, vd = on(device, x, y, vectors)
        theta = net.flatten()
        whole = Objective(net, xd, yd, decay=0.01, hessian=hessian)
        chunked = Objective(net, xd, yd, decay=0.01, chunk_size=5, hessian=hessian)
        products[device] = torch.stack([whole.operator(theta)(vd), chunked.hvp_many(theta, vd)]).cpu()
    assert torch.allclose(products["cuda"], products["cpu"], **CLOSE)
    assert torch.allclose(products["cpu"][0], products["cpu"][1], **CLOSE)


def test_batched_batchnorm_training_agrees_across_devices():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 6, 6, dtype=torch.float64, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    settings = TrainSettings(steps=15, lr=0.01, optimizer="adam", batch_size=10, order_seed=2)
    thetas = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(3, 3)).to(device, torch.float64)
        net = FlatModel(model)
        weights = torch.ones(3, 24, dtype=torch.float64, device=device)
        weights[1, 0] = weights[2, 7] = 0.0
        xd, yd = on(device, x, y)
        result = train_copies(net, xd, yd, 0.01, net.flatten().repeat(3, 1), weights, settings, **QUIET)
        thetas[device] = result.thetas.cpu()
        assert all(b.device.type == device for b in result.buffers.values())
    assert torch.allclose(thetas["cuda"], thetas["cpu"], **CLOSE)
    assert not torch.allclose(thetas["cpu"][0], thetas["cpu"][1])  # removing a point changed that copy


def test_small_cnn_scoring_agrees_across_devices():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 1, 28, 28, dtype=torch.float64, generator=gen), torch.randint(0, 10, (50,), generator=gen)
    scores = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = FlatModel(build_model("smallcnn", (1, 28, 28), 10).to(device, torch.float64).eval())
        theta = net.flatten()
        directions = torch.randn(4, theta.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        xd, yd, dd = on(device, x, y, directions)
        scores[device] = torch.cat([directional_derivatives(net, theta, xd, yd, dd[:2], chunk_size=16),  # forward mode
                                    directional_derivatives(net, theta, xd, yd, dd, chunk_size=16)]).cpu()  # gradient blocks
    assert torch.allclose(scores["cuda"], scores["cpu"], **CLOSE)


def test_iris_pipeline_agrees_across_devices(tmp_path):
    """train → test point → exact and LiSSA influence → leave-one-out, once per device."""
    train_cfg = {"optimizer": "gd", "lr": 0.05, "steps": 400, "check_every": 100}
    data = str(tmp_path / "data.pt")
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, str(tmp_path), data)
    out = {}
    for device in ("cpu", "cuda"):
        d = tmp_path / device
        d.mkdir()
        p = {name: str(d / name) for name in ("model.pt", "metrics.json", "tp.json", "exact.parquet", "exact.json",
                                                "lissa.parquet", "lissa.json", "loo.parquet")}
        pipeline.train(data, "mlp-d2-w5", 0.005, 0, train_cfg, "float64", device, p["model.pt"], p["metrics.json"], log=QUIET["log"])
        pipeline.pick_test_points(p["model.pt"], data, ["max", "median"], p["tp.json"], device)
        for method, options in (("exact", {}), ("lissa", {"depth": 2000, "scale": "auto", "repeats": 1})):
            pipeline.compute_influence(p["model.pt"], data, p["tp.json"], method, options, 0.01, p[f"{method}.parquet"],
                                       p[f"{method}.json"], device_name=device, log=QUIET["log"])
        cell = {"model": p["model.pt"], "data": data, "test_points": p["tp.json"]}
        get("loo").retrain_chunk(cell, [(-1, []), (3, [3]), (50, [50])], {"steps": 200}, {"steps": 200}, train_cfg,
                                 p["loo.parquet"], device_name=device, log=QUIET["log"])
        out[device] = p
    assert read_json(out["cuda"]["metrics.json"])["device"].startswith("cuda")
    points = {device: [(tp["name"], tp["index"]) for tp in read_json(p["tp.json"])["test_points"]] for device, p in out.items()}
    assert points["cuda"] == points["cpu"]
    for name, columns in (("exact.parquet", ["predicted_loss_change", "predicted_param_change_norm", "train_grad_norm"]),
                          ("lissa.parquet", ["predicted_loss_change"]), ("loo.parquet", ["test_loss", "param_distance"])):
        cpu, cuda = pd.read_parquet(out["cpu"][name]), pd.read_parquet(out["cuda"][name])
        assert len(cpu) == len(cuda) > 0
        for column in columns:
            a, b = torch.tensor(cuda[column].to_numpy()), torch.tensor(cpu[column].to_numpy())
            assert torch.isfinite(b).all() and torch.allclose(a, b, **CLOSE), (name, column)


def test_text_transformer_agrees_across_devices(tmp_path, devices=("cpu", "cuda")):
    """The TransformerEncoder text classifier (examples/my_text.py: token ids, padding mask,
    attention through the math backend of scaled_dot_product_attention for second and forward-mode
    derivatives): training, exact / EK-FAC / TRAK influence and a LOO chunk, once per device."""
    from test_text_example import EXAMPLE, corpus, write

    write(tmp_path, corpus(40), "reviews.jsonl")
    data = str(tmp_path / "split.pt")
    pipeline.prepare_data("reviews", {"loader": f"{EXAMPLE}:load_text", "file": "reviews.jsonl", "vocab_size": 16,
                                      "max_length": 6}, str(tmp_path), data)
    models_cfg = {"textnet": {"factory": f"{EXAMPLE}:build", "options": {"vocab_size": 16, "dim": 4, "feedforward": 8}}}
    train_cfg = {"optimizer": "adam", "lr": 0.05, "steps": 60, "batch_size": 10, "check_every": 1000}
    estimators = {"exact": {}, "ekfac": {}, "trak": {"projection_dim": 16}}
    out = {}
    for device in devices:
        d = tmp_path / device
        d.mkdir(exist_ok=True)
        p = {name: str(d / name) for name in ("model.pt", "metrics.json", "tp.json", "loo.parquet")}
        pipeline.train(data, "textnet", 0.01, 0, train_cfg, "float64", device, p["model.pt"], p["metrics.json"],
                       models_cfg=models_cfg, **QUIET)
        pipeline.pick_test_points(p["model.pt"], data, ["max", "median"], p["tp.json"], device)
        for method, options in estimators.items():
            p[method] = str(d / f"{method}.parquet")
            pipeline.compute_influence(p["model.pt"], data, p["tp.json"], method, options, 0.01, p[method],
                                       p[method] + ".json", device_name=device, **QUIET)
        cell = {"model": p["model.pt"], "data": data, "test_points": p["tp.json"]}
        get("loo").retrain_chunk(cell, [(-1, []), (0, [0]), (5, [5])], {"steps": 20}, {"steps": 20}, train_cfg,
                                 p["loo.parquet"], device_name=device, **QUIET)
        out[device] = p
    first, second = devices
    for method in estimators:
        a, b = pd.read_parquet(out[first][method]), pd.read_parquet(out[second][method])
        assert (a.status == "ok").all() and (b.status == "ok").all(), method
        torch.testing.assert_close(torch.tensor(b.predicted_loss_change.to_numpy()),
                                   torch.tensor(a.predicted_loss_change.to_numpy()), rtol=1e-6, atol=1e-10)
    a, b = pd.read_parquet(out[first]["loo.parquet"]), pd.read_parquet(out[second]["loo.parquet"])
    torch.testing.assert_close(torch.tensor(b.test_loss.to_numpy()), torch.tensor(a.test_loss.to_numpy()),
                               rtol=1e-7, atol=1e-10)
