"""Estimators beyond the inverse Hessian (estimators/similarity.py, representer.py, tracin.py):
each against a direct computation or the theory it rests on, and each sign on a convex model
whose leave-one-out effects are computed by re-training."""

import math

import numpy as np
import pandas as pd
import pytest
from conftest import train_iris_cell
import torch
from torch import nn

from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, per_sample_gradients
from fragility.engine.training import TrainSettings, train_copies
from fragility.estimators import registry
from fragility.estimators.base import Context, TrainedModel, check_requirements
from fragility.io import read_json
from fragility.models.registry import init_model
from fragility.study import pipeline


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A width-3 MLP trained on Iris (float64), with test points ["top2", "p50"]."""
    root = tmp_path_factory.mktemp("cell")
    return root, train_iris_cell(root, ["top2", "p50"])


def _context(paths, **kw):
    net, theta, record = pipeline.load_trained(paths["model.pt"])
    split = pipeline.Split.load(paths["data.pt"])
    x, y, xt, yt = pipeline._tensors(split, theta.dtype, torch.device("cpu"))
    return Context(net, theta, x, y, xt, yt, decay=record["decay"], damping=0.01, **kw), read_json(paths["tp.json"])["test_points"]


def _through_pipeline(root, paths, name, settings):
    table_path, json_path = str(root / f"{name}.parquet"), str(root / f"{name}.json")
    pipeline.compute_influence(paths["model.pt"], paths["data.pt"], paths["tp.json"], name, settings, 0.01, table_path,
                               json_path, device_name="cpu", log=lambda m: None)
    return pd.read_parquet(table_path), read_json(json_path)


def _matrix(table, points):
    return np.stack([table[table.test_point == tp["name"]].sort_values("train_index").predicted_loss_change.to_numpy()
                     for tp in points])


# --------------------------------------------------------------------------- grad_cosine
def test_grad_cosine_equals_the_cosine_of_the_full_gradient_matrix(cell):
    """Blocks of 7 training rows (chunk_bytes) against the n × p matrix formed at once."""
    root, paths = cell
    c, points = _context(paths)
    p = c.theta.numel()
    table, diagnostics = _through_pipeline(root, paths, "grad_cosine", {"chunk_bytes": 7 * p * 8})
    assert diagnostics["gradient_rows_per_block"] == 7
    g = per_sample_gradients(c.net, c.theta, c.x_train, c.y_train)
    idx = torch.tensor([tp["index"] for tp in points])
    gt = per_sample_gradients(c.net, c.theta, c.x_test[idx], c.y_test[idx], measure=True)
    expected = (torch.nn.functional.normalize(gt, dim=1) @ torch.nn.functional.normalize(g, dim=1).T).numpy()
    np.testing.assert_allclose(_matrix(table, points), expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(table[table.test_point == points[0]["name"]].train_grad_norm, g.norm(dim=1), rtol=1e-12)
    assert (table.status == "ok").all() and np.abs(table.predicted_loss_change).max() <= 1 + 1e-12


# --------------------------------------------------------------------------- representer
def test_representer_decomposition_reproduces_the_fine_tuned_layer(cell):
    """Φ(x_t) = Σ_i α_i (f̃_iᵀ f̃_t) on the test points, to 1e-4, with and without the bias feature;
    Δ̂ = −(∂m_t/∂Φ_t)ᵀ α_i k_it recomputed from the decomposition's parts."""
    root, paths = cell
    c, points = _context(paths)
    for bias in (True, False):
        estimator = registry.make_estimator("representer", {"l2": 0.01, "bias": bias}).fit(c)
        phi, represented, kernel = estimator.decomposition(c.x_test)
        error = float((represented - phi).norm() / phi.norm())
        assert error <= 1e-4, (bias, error, estimator.diagnostics)
        assert estimator.diagnostics["fine_tune_gradient_norm"] < 1e-8
    table, diagnostics = _through_pipeline(root, paths, "representer", {"l2": 0.01})
    assert diagnostics["decomposition_relative_error"] <= 1e-4
    estimator = registry.make_estimator("representer", {"l2": 0.01}).fit(c)
    idx = torch.tensor([tp["index"] for tp in points])
    phi, _, kernel = estimator.decomposition(c.x_test[idx])
    prob = torch.softmax(phi, dim=1)
    d_loss = prob - torch.nn.functional.one_hot(c.y_test[idx], 3)  # ∂ℓ/∂Φ of cross-entropy
    expected = -(d_loss @ estimator.alpha.T) * kernel
    np.testing.assert_allclose(_matrix(table, points), expected.numpy(), rtol=1e-9, atol=1e-14)
    # the class's representer value differs from Δ̂ by p_tᵀα_i k_it
    value = np.stack([table[table.test_point == tp["name"]].sort_values("train_index").representer_value for tp in points])
    np.testing.assert_allclose(value - _matrix(table, points), ((prob @ estimator.alpha.T) * kernel).numpy(),
                               rtol=1e-9, atol=1e-14)


def test_representer_refuses_a_model_without_a_last_linear_layer(iris64):
    x, y, xt, yt = iris64
    net = FlatModel(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).double())
    c = Context(net, net.flatten(), x, y, xt, yt, decay=0.0, damping=0.0)
    estimator = registry.make_estimator("representer", {})
    with pytest.raises(ValueError, match="representer.*nn.Linear"):
        check_requirements(estimator, c, "influence.methods.representer")
    with pytest.raises(ValueError, match="'representer' requires a model whose last parameterised layer is an nn.Linear"):
        estimator.fit(c)


# --------------------------------------------------------------------------- tracin
def test_tracin_with_theta_star_as_its_one_checkpoint_is_n_times_identity(cell):
    c, points = _context(cell[1])
    c.models = [TrainedModel(c.net, c.theta, "θ*", learning_rate=1.0)]
    tracin = registry.make_estimator("tracin", {"chunk_bytes": 5 * c.theta.numel() * 8}).fit(c).scores(points)
    identity = registry.make_estimator("identity", {}).fit(c).scores(points)
    torch.testing.assert_close(tracin.predicted_loss_change, len(c.y_train) * identity.predicted_loss_change,
                               rtol=1e-10, atol=0)


def test_training_keeps_evenly_spaced_checkpoints_and_tracin_sums_over_them(cell, tmp_path):
    """`train.keep_checkpoints: 3` over 150 steps keeps θ after steps 50, 100, 150 (the last θ*)
    with their learning rates, without changing θ*; tracin through compute_influence is the
    η-weighted sum of gradient products at those checkpoints."""
    root, paths = cell
    assert pipeline.checkpoint_steps(150, 3) == (50, 100, 150) and pipeline.checkpoint_steps(150, 0) == ()
    model = str(tmp_path / "model.pt")
    pipeline.train(paths["data.pt"], "mlp-d1-w3", 0.01, 0, {"optimizer": "gd", "lr": 0.1, "steps": 150,
                   "keep_checkpoints": 3}, "float64", "cpu", model, str(tmp_path / "m.json"), log=lambda m: None)
    record, plain = torch.load(model, weights_only=False), torch.load(paths["model.pt"], weights_only=False)
    assert torch.equal(record["theta"], plain["theta"]) and "checkpoints" not in plain
    assert [c["step"] for c in record["checkpoints"]] == [50, 100, 150]
    assert [c["lr"] for c in record["checkpoints"]] == [0.1] * 3
    assert torch.equal(record["checkpoints"][-1]["theta"], record["theta"])
    table_path, json_path = str(tmp_path / "t.parquet"), str(tmp_path / "t.json")
    pipeline.compute_influence(model, paths["data.pt"], paths["tp.json"], "tracin", {}, 0.01, table_path, json_path,
                               device_name="cpu", log=lambda m: None)
    c, points = _context(paths)
    idx = torch.tensor([tp["index"] for tp in points])
    expected = sum(0.1 * per_sample_gradients(c.net, k["theta"], c.x_test[idx], c.y_test[idx], measure=True)
                   @ per_sample_gradients(c.net, k["theta"], c.x_train, c.y_train).T for k in record["checkpoints"])
    np.testing.assert_allclose(_matrix(pd.read_parquet(table_path), points), expected.numpy(), rtol=1e-10, atol=1e-14)
    assert read_json(json_path)["checkpoints"] == ["step 50", "step 100", "step 150"]


def test_tracin_without_kept_checkpoints_is_refused_when_the_dag_is_built():
    with pytest.raises(Exception, match="tracin.*train.keep_checkpoints"):
        registry.check_estimator("tracin", {}, "studies.s.influence.methods.tracin", {"train": {"steps": 10}})
    registry.check_estimator("tracin", {}, "k", {"train": {"keep_checkpoints": 2}})


def test_trak_needs_checkpoints_only_for_its_checkpoint_ensemble():
    """A requirement an option brings (`requires_by_option`), read from the class's source."""
    assert registry.requirements("trak", "k", {"models": "checkpoints"}) == ("checkpoints",)
    assert registry.requirements("trak", "k", {"models": "theta_star"}) == ()
    with pytest.raises(Exception, match="trak.*train.keep_checkpoints"):
        registry.check_estimator("trak", {"models": "checkpoints"}, "studies.s.influence.methods.trak", {"train": {}})
    registry.check_estimator("trak", {}, "k", {"train": {}})


# --------------------------------------------------------------------------- signs on a convex model
DECAY = 0.05


@pytest.fixture(scope="module")
def convex(iris64):
    """L2-regularised logistic regression on Iris trained to convergence (checkpoints kept), and
    the leave-one-out effect (re-trained to convergence) of every third training point on the
    highest-loss test point."""
    x, y, xt, yt = iris64
    net = FlatModel(init_model("mlp-d0-w0", (4,), 3, seed=0, dtype=torch.float64))
    objective = Objective(net, x, y, DECAY)
    theta0 = torch.zeros(net.num_parameters, dtype=torch.float64)
    lr = 1.0 / (float(torch.linalg.eigvalsh(objective.hessian(theta0)).max()) * 1.5)
    settings = TrainSettings(steps=1500, lr=lr, check_every=1000)
    result = train_copies(net, x, y, DECAY, theta0[None], torch.ones(1, len(y), dtype=torch.float64), settings,
                          log=lambda m: None, keep_steps=(5, 20, 100, 1500))
    theta = result.thetas[0]
    net.load_into_model(theta)
    losses = torch.nn.functional.cross_entropy(net.logits(theta, xt), yt, reduction="none")
    point = {"name": "max", "index": int(losses.argmax())}
    removed = torch.arange(0, len(y), 3)  # 40 of the 120 training points
    weights = torch.ones(len(removed), len(y), dtype=torch.float64)
    weights[torch.arange(len(removed)), removed] = 0.0
    thetas = train_copies(net, x, y, DECAY, theta.repeat(len(removed), 1), weights, settings, log=lambda m: None).thetas
    i = point["index"]
    actual = torch.stack([torch.nn.functional.cross_entropy(net.logits(th, xt[i:i + 1]), yt[i:i + 1]) for th in thetas])
    models = [TrainedModel(net, k["thetas"][0], f"step {k['step']}", k["lr"]) for k in result.kept]
    context = Context(net, theta, x, y, xt, yt, decay=DECAY, damping=0.0, models=models)
    return context, point, removed.numpy(), (actual - losses.max()).numpy()


@pytest.mark.parametrize("name", ["grad_cosine", "representer", "tracin", "trak"])
def test_sign_agrees_with_leave_one_out_on_a_convex_model(convex, name):
    context, point, removed, actual = convex
    predicted = registry.make_estimator(name, {}).fit(context).scores([point]).predicted_loss_change[0].numpy()[removed]
    pearson = np.corrcoef(predicted, actual)[0, 1]
    top = np.argsort(-np.abs(actual))[:10]  # the ten largest effects: signs agree
    assert pearson > 0.5, pearson
    assert (np.sign(predicted[top]) == np.sign(actual[top])).mean() >= 0.9


# --------------------------------------------------------------------------- trak
def _margin_gradients(net, theta, x, y):
    """∇_θ (h_y − logsumexp_{j≠y} h_j) row by row with autograd, written out independently."""
    rows = []
    for xi, yi in zip(x, y):
        t = theta.clone().requires_grad_(True)
        h = net.logits(t, xi[None])[0]
        others = torch.cat([h[:yi], h[yi + 1:]])
        (g,) = torch.autograd.grad(h[yi] - torch.logsumexp(others, 0), t)
        rows.append(g)
    return torch.stack(rows)


def _tanh_net(outputs, task):
    from fragility.engine.task import make_task

    torch.manual_seed(7)  # a well-conditioned Φ (condition number ~500 for the regression output)
    return FlatModel(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, outputs)).double(), make_task(task))


@pytest.mark.parametrize("task", ["mse", "cross_entropy"])
def test_trak_without_projection_is_the_kernel_regression_and_a_square_projection_cancels(iris64, task):
    """n > p, λ = 0, M = 1, a tanh MLP at a random θ: τ = φ_tᵀ(ΦᵀΦ)⁻¹ΦᵀQ with φ and Q written out
    here (single-output regression: f = h, Q = y − f), or with the pseudo-inverse for cross-entropy
    (f the margin, Q = 1 − p_y): a shift of all logits, and so of the last bias and of each hidden
    unit's outgoing weights, leaves the margin unchanged, so rank Φ = p − 1 − width exactly. A
    Gaussian projection with k = p, generated in blocks of 5 rows, gives the same to 1e-8 (τ sees
    only the projector onto Φ's column space); Δ̂ = q_t τ with q_t = −∂ℓ_t/∂f_t."""
    x, y, xt, yt = iris64
    if task == "mse":
        y, yt = torch.sin(x.sum(1)), torch.cos(xt.sum(1))
    net = _tanh_net(1 if task == "mse" else 3, task)
    theta = net.flatten()
    c = Context(net, theta, x, y, xt, yt, decay=0.0, damping=0.0)
    points = [{"name": f"t{j}", "index": j} for j in (0, 5, 9)]
    idx = torch.tensor([0, 5, 9])
    n, p = len(y), theta.numel()
    if task == "mse":
        phi = torch.stack([torch.autograd.functional.jacobian(lambda t: net.logits(t, xi[None])[0, 0], theta) for xi in x])
        phi_t = torch.stack([torch.autograd.functional.jacobian(lambda t: net.logits(t, xi[None])[0, 0], theta)
                             for xi in xt[idx]])
        q = (y - net.logits(theta, x)[:, 0]).detach()
        q_t = (yt[idx] - net.logits(theta, xt[idx])[:, 0]).detach()
        expected = phi_t @ torch.linalg.solve(phi.T @ phi, phi.T) * q[None, :]
    else:
        phi = _margin_gradients(net, theta, x, y)
        phi_t = _margin_gradients(net, theta, xt[idx], yt[idx])
        q = 1 - torch.softmax(net.logits(theta, x), 1).gather(1, y[:, None])[:, 0].detach()
        q_t = 1 - torch.softmax(net.logits(theta, xt[idx]), 1).gather(1, yt[idx][:, None])[:, 0].detach()
        assert int(torch.linalg.matrix_rank(phi)) == p - 1 - 3
        expected = phi_t @ torch.linalg.pinv(phi) * q[None, :]
    assert n > p
    plain = registry.make_estimator("trak", {"projection_dim": None, "chunk_bytes": 9 * p * 8}).fit(c)
    tau, weight = plain.tau(points)
    torch.testing.assert_close(tau, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(weight, q_t, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(plain.scores(points).predicted_loss_change, q_t[:, None] * expected, rtol=1e-9, atol=1e-12)
    square = registry.make_estimator("trak", {"projection_dim": p, "chunk_bytes": 5 * p * 8}).fit(c)
    assert square.diagnostics["projection_dim"] == p and square.project.block == 5
    torch.testing.assert_close(square.tau(points)[0], expected, rtol=1e-8, atol=1e-10)
    # P's blocks kept after first use or regenerated on every application: the same numbers
    from fragility.estimators.trak import Projection

    rows = torch.randn(4, p, dtype=torch.float64)
    kept = Projection(p, 7, "rademacher", 3, 5, torch.float64, "cpu")
    fresh = Projection(p, 7, "rademacher", 3, 5, torch.float64, "cpu", keep_bytes=0)
    assert kept.kept is not None and fresh.kept is None
    assert torch.equal(kept(rows), fresh(rows)) and torch.equal(kept(rows), fresh(rows))
    torch.testing.assert_close(kept.rows(0, 5).abs(), torch.full((5, 7), 7 ** -0.5, dtype=torch.float64))
    # a narrower projection changes the numbers (the comparison above can fail)
    narrow = registry.make_estimator("trak", {"projection_dim": p // 2}).fit(c).tau(points)[0]
    assert not torch.allclose(narrow, expected, rtol=1e-3, atol=1e-6)


def test_trak_on_least_squares_is_the_exact_leave_one_out_change_of_the_test_output():
    """A linear model fitted by least squares (task mse, no decay): τ_i / (1 − h_ii) equals
    f_t(with z_i) − f_t(without z_i), each leave-one-out fit solved in closed form."""
    from fragility.engine.task import make_task

    gen = torch.Generator().manual_seed(0)
    n, d = 30, 4
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(d, generator=gen, dtype=torch.float64) + 0.5 + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    xt = torch.randn(3, d, generator=gen, dtype=torch.float64)
    yt = torch.zeros(3, dtype=torch.float64)
    design = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    design_t = torch.cat([xt, torch.ones(3, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
    net = FlatModel(nn.Sequential(nn.Linear(d, 1)).double(), make_task("mse"))
    theta = torch.cat([coef[:d], coef[d:]])
    c = Context(net, theta, x, y, xt, yt, decay=0.0, damping=0.0)
    points = [{"name": f"t{j}", "index": j} for j in range(3)]
    tau, _ = registry.make_estimator("trak", {"projection_dim": None}).fit(c).tau(points)
    leverage = torch.einsum("ij,jk,ik->i", design, torch.linalg.inv(design.T @ design), design)
    loo = torch.stack([design_t @ (coef - torch.linalg.lstsq(design[torch.arange(n) != i], y[torch.arange(n) != i, None])
                                   .solution[:, 0]) for i in range(n)], 1)  # f_t(with) − f_t(without), [3, n]
    torch.testing.assert_close(tau / (1 - leverage)[None, :], loo, rtol=1e-9, atol=1e-12)


def test_trak_refuses_a_task_without_an_output_function(cell):
    from fragility.engine.task import CrossEntropyTask

    class NoOutputFunction(CrossEntropyTask):
        name = "plain"
        output_function = None

    c, _ = _context(cell[1])
    c.net.task = NoOutputFunction()
    with pytest.raises(ValueError, match="'trak' needs the task 'plain' to write output_function"):
        registry.make_estimator("trak", {}).fit(c)
    with pytest.raises(ValueError, match="trak: models must be one of theta_star, checkpoints, seeds, got 'seed'"):
        registry.make_estimator("trak", {"models": "seed"})


# --------------------------------------------------------------------------- the DAG checks
def _study(methods, train=None):
    block = {"datasets": {"iris": {}}, "architectures": ["mlp-d1-w3"], "decays": [0.0], "seeds": [0],
             "train": {"optimizer": "gd", "lr": 0.1, "steps": 10, **(train or {})}, "test_points": ["max"],
             "influence": {"damping": 0.01, "methods": {"exact": {}, **methods}},
             "select": {"by": "exact", "rules": [{"top_k": 3}]}, "loo": {"steps": 5, "chunk_size": 4}}
    return {"studies": {"audit": block}}


def test_the_new_estimators_pass_the_dag_checks_and_checkpoint_ones_need_kept_checkpoints():
    from fragility.study import grid

    every = {"grad_cosine": {}, "representer": {"l2": 0.01, "bias": False}, "tracin": {},
             "trak": {"projection_dim": 16, "models": "checkpoints"}}
    grid.check_config(_study(every, {"keep_checkpoints": 2}))
    assert grid.estimators(_study(every, {"keep_checkpoints": 2}), "audit", "mlp-d1-w3")["trak"] == \
        {"projection_dim": 16, "models": "checkpoints"}
    grid.check_config(_study({"trak": {}}))  # θ* alone needs no checkpoints
    for name, settings in (("tracin", {}), ("trak", {"models": "checkpoints"})):
        with pytest.raises(ValueError, match=f"studies.audit.influence.methods.{name}: the estimator '{name}' requires "
                                             "checkpoints.*train.keep_checkpoints"):
            grid.check_config(_study({name: settings}))


# --------------------------------------------------------------------------- select.by: union
def test_union_selection_takes_the_estimators_rankings_in_turn(tmp_path):
    """A round-robin over the rankings by |Δ̂| until K = the rules' total distinct points; an
    estimator that failed a test point is left out of its round-robin."""
    from fragility.study import selection

    assert selection.round_robin({"a": np.array([9, 8, 7, 1, 0.]), "b": np.array([-5, 0, 1, 9, 8.])}, 4) == \
        {0: "a", 3: "b", 1: "a", 4: "b"}
    assert selection.round_robin({"a": np.array([3, 2, 1.]), "b": np.array([3, 2, 1.])}, 2) == {0: "a", 1: "b"}
    assert selection.rules_total([{"top_fraction": 0.1}, {"top_k": 2}, {"around_percentile": 50, "k": 3}], 40) == 9
    assert selection.rules_total([{"top_k": 30}, {"top_k": 30}], 40) == 40

    def table(values, status):
        return pd.DataFrame([{"test_point": tp, "test_index": j, "train_index": i, "predicted_loss_change": v[i],
                              "status": status[j]} for j, (tp, v) in enumerate(values.items()) for i in range(len(v))])

    paths = {}
    for name, values, status in (("a", {"max": [9, 8, 7, 1, 0], "p50": [0, 0, 0, 0, 1]}, ["ok", "ok"]),
                                 ("b", {"max": [-5, 0, 1, 9, 8], "p50": [5, 4, 3, 2, 1]}, ["ok", "diverged"])):
        paths[name] = str(tmp_path / f"{name}.parquet")
        table({k: np.array(v, dtype=float) for k, v in values.items()}, status).to_parquet(paths[name])
    out = tmp_path / "selected.json"
    selection.select_union(paths, [{"top_k": 2}, {"top_k": 1}], out, log=lambda m: None)
    record = read_json(out)
    assert record["per_test_point"]["max"] == {"0": "union", "1": "union", "3": "union"}
    assert record["contributed_by"]["max"] == {"0": "a", "1": "a", "3": "b"}
    assert record["per_test_point"]["p50"] == {"4": "union", "0": "union", "1": "union"}  # a alone: ties by index
    assert record["left_out"] == {"p50": {"b": "diverged"}} and record["indices"] == [0, 1, 3, 4]


def test_union_and_random_are_selections_the_dag_takes_with_tail_groups():
    """`union` draws the tail groups from every estimator's tails (truths/groups.py), so
    `truths: groups` goes with it; `random` needs `select.random` ≥ 1."""
    from fragility.study import grid

    config = _study({"grad_cosine": {}})
    config["studies"]["audit"]["select"]["by"] = "union"
    grid.check_config(config)
    config["studies"]["audit"]["truths"] = ["loo", "groups"]
    grid.check_config(config)
    config["studies"]["audit"]["select"]["by"] = "random"
    with pytest.raises(ValueError, match="select.by: 'random' selects only the random sample; set select.random"):
        grid.check_config(config)
    config["studies"]["audit"]["select"]["random"] = 4
    grid.check_config(config)
    config["studies"]["audit"]["select"]["by"] = "nothing"
    with pytest.raises(ValueError, match="'nothing' is not one of influence.methods .* or 'union' or 'random'"):
        grid.check_config(config)
