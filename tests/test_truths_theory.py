"""Ground truths beyond leave-one-out: PBRF, group removal and the linear datamodeling score.

- PBRF's optimum is θ* when nothing is removed; in the small-ε limit its response is the
  Gauss-Newton influence estimate with the same damping (non-convex Iris nets, with and
  without decay); the batched trainer and L-BFGS reach the same optimum.
- On a convex model (logistic regression with decay, re-fitted to convergence) influence, LOO and
  PBRF agree, summed Δ̂ predicts group removal, and the LDS is high.
- The LDS statistic falls with noise, its interval covers a known answer, and the joins of
  src/fragility/truths keep the sign convention (synthetic tables with a known answer).
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fragility.data.registry import load_split
from fragility.engine.flat import FlatModel
from fragility.engine.ihvp import ExactSolver
from fragility.estimators.inverse_hessian import influence_table
from fragility.engine.objective import Objective
from fragility.engine.pbrf import objective_gradient_norms, removal_terms, solve_lbfgs
from fragility.engine.training import TrainSettings, train_copies
from fragility.models.registry import init_model
from fragility.truths import jobs, registry
from fragility.truths.groups import draw_groups
from fragility.truths.lds import draw_subsets, lds_score

DTYPE = torch.float64


@pytest.fixture(scope="module")
def iris_std():
    split = load_split("iris", {"test_fraction": 0.2, "split_seed": 0, "standardize": True})
    return split.x_train.double(), split.y_train, split.x_test.double(), split.y_test


def _train(arch, decay, data, steps, lr, seed=0):
    x, y, _, _ = data
    net = FlatModel(init_model(arch, (4,), 3, seed=seed, dtype=DTYPE))
    theta = train_copies(net, x, y, decay, net.flatten()[None], torch.ones(1, len(y), dtype=DTYPE),
                         TrainSettings(steps=steps, lr=lr, check_every=10**6)).thetas[0]
    net.load_into_model(theta)
    net.model.eval()
    return net, theta


def _scores(net, theta, data, decay, damping, points, hessian="full"):
    x, y, xt, yt = data
    solver = ExactSolver(hessian=hessian).fit(Objective(net, x, y, decay), theta)
    table, _ = influence_table(net, theta, x, y, points, xt, yt, solver, damping)
    return {tp["name"]: table[table.test_point == tp["name"]].sort_values("train_index").predicted_loss_change.to_numpy()
            for tp in points}


def _test_loss_changes(net, thetas, theta, xt, yt, index):
    base = net.per_sample_losses(theta, xt[index : index + 1], yt[index : index + 1])[0]
    with torch.no_grad():
        return np.array([float(net.per_sample_losses(t, xt[index : index + 1], yt[index : index + 1])[0] - base)
                         for t in thetas])


def _max_loss_point(net, theta, xt, yt):
    losses = net.per_sample_losses(theta, xt, yt).detach()
    return {"name": "max", "index": int(losses.argmax()), "loss": float(losses.max())}


# --------------------------------------------------------------------------- PBRF
@pytest.fixture(scope="module", params=[("mlp-d1-w5", 0.0, 0.001), ("mlp-d3-w5", 0.005, 0.01)],
                ids=["d1-no-decay", "d3-decay"])
def iris_net(request, iris_std):
    arch, decay, damping = request.param
    net, theta = _train(arch, decay, iris_std, steps=3000, lr=0.05)
    return net, theta, decay, damping


def test_pbrf_optimum_without_removal_is_theta_star(iris_net, iris_std):
    """ε = 0: every term is ≥ 0 and 0 at θ*, so θ* is the optimum (no drift by construction) even
    though θ* is not a stationary point of the training objective here."""
    net, theta, decay, damping = iris_net
    x, y, _, _ = iris_std
    terms = removal_terms(net, theta, x, y, [[]], 1.0, decay + damping)
    assert objective_gradient_norms(net, x, terms, theta[None])[0] < 1e-12
    assert float(Objective(net, x, y, decay).gradient(theta).norm()) > 1e-4  # θ* itself not converged
    start = theta + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    solved, _, norms, _ = solve_lbfgs(net, x, terms, start[None], max_iterations=1000, tolerance=1e-13)
    assert norms[0] < 1e-8
    assert float((solved[0] - theta).norm()) < 1e-6 * float(theta.norm())


def test_pbrf_small_epsilon_is_the_gauss_newton_influence(iris_net, iris_std):
    """s = 0.01: Δ_PBRF / s → (1/n) ∇ℓ_tᵀ (G + δI)⁻¹ ∇ℓ_z with λ_p = λ + δ (engine/pbrf.py)."""
    net, theta, decay, damping = iris_net
    x, y, xt, yt = iris_std
    point = _max_loss_point(net, theta, xt, yt)
    gauss_newton = _scores(net, theta, iris_std, decay, damping, [point], hessian="gauss_newton")["max"]
    top = np.argsort(-np.abs(gauss_newton))[:12]
    scale = 0.01
    terms = removal_terms(net, theta, x, y, [[int(i)] for i in top], scale, decay + damping)
    solved, _, norms, _ = solve_lbfgs(net, x, terms, theta.repeat(len(top), 1), max_iterations=500, tolerance=1e-13)
    assert max(norms) < 1e-5  # measured ≤ 1e-6
    response = _test_loss_changes(net, solved, theta, xt, yt, point["index"]) / scale
    assert np.corrcoef(gauss_newton[top], response)[0, 1] >= 0.999  # measured 1.0000 (d1), 1.0000 (d3)
    slope = float(np.dot(gauss_newton[top], response) / np.dot(gauss_newton[top], gauss_newton[top]))
    assert abs(slope - 1) < 0.05, slope  # the same size, not only the same ranking
    flipped = removal_terms(net, theta, x, y, [[int(top[0])]], -scale, decay + damping)
    again, *_ = solve_lbfgs(net, x, flipped, theta[None], max_iterations=500, tolerance=1e-13)
    assert np.sign(_test_loss_changes(net, again, theta, xt, yt, point["index"])[0]) == -np.sign(gauss_newton[top[0]])


def test_batched_trainer_reaches_the_lbfgs_optimum(iris_std):
    """The PBRF objective in train_copies (k copies, full-batch gradient descent) reaches the L-BFGS
    optimum of each copy; copies removing nothing stay at θ*."""
    x, y, xt, yt = iris_std
    decay, damping = 0.005, 0.01
    net, theta = _train("mlp-d1-w5", decay, iris_std, steps=2000, lr=0.05)
    removed = [[3], [], [50], [77, 90]]
    terms = removal_terms(net, theta, x, y, removed, 1.0, decay + damping)
    k = len(removed)
    trained = train_copies(net, x, y, 0.0, theta.repeat(k, 1), torch.ones(k, len(y), dtype=DTYPE),
                           TrainSettings(steps=4000, lr=0.5, check_every=10**6), pbrf=terms).thetas
    solved, _, solved_norms, _ = solve_lbfgs(net, x, terms, theta.repeat(k, 1), max_iterations=500, tolerance=1e-13)
    change = (solved - theta).norm(dim=1)
    assert float((trained[1] - theta).norm()) < 1e-12
    assert max(objective_gradient_norms(net, x, terms, trained)) < 1e-12  # gradient descent converged
    # L-BFGS stops at a gradient norm g of order 1e-9 (how small depends on the machine's BLAS); the
    # objective is (λ+δ)-strongly convex near θ* (Gauss-Newton ⪰ 0 plus the proximal term), so its
    # answer lies within g / (λ+δ) of the optimum
    for c in (0, 2, 3):
        assert solved_norms[c] < 1e-7, c
        bound = 1e-4 * float(change[c]) + solved_norms[c] / (decay + damping)
        assert float((trained[c] - solved[c]).norm()) < bound, c


# --------------------------------------------------------------------------- convex model
CONVEX_DECAY = 0.01


@pytest.fixture(scope="module")
def convex(iris_std):
    """Logistic regression with decay 0.01, θ* and every re-fit to convergence (gradient descent
    with step 1/L, L the top eigenvalue of H: the error falls as (1 − λ/L)^t, below 1e-9 here)."""
    x, y, xt, yt = iris_std
    net = FlatModel(init_model("mlp-d0-w0", (4,), 3, seed=0, dtype=DTYPE))
    objective = Objective(net, x, y, CONVEX_DECAY)
    zero = torch.zeros(net.num_parameters, dtype=DTYPE)
    lipschitz = float(torch.linalg.eigvalsh(objective.hessian(zero)).max())
    settings = TrainSettings(steps=3000, lr=1.0 / lipschitz, check_every=10**6, loss_mean_over="all")
    theta = train_copies(net, x, y, CONVEX_DECAY, zero[None], torch.ones(1, len(y), dtype=DTYPE), settings).thetas[0]
    net.load_into_model(theta)
    losses = net.per_sample_losses(theta, xt, yt).detach()
    order = np.argsort(-losses.numpy())
    points = [{"name": f"top{r + 1}", "index": int(order[r]), "loss": float(losses[order[r]])} for r in range(5)]
    scores = _scores(net, theta, iris_std, CONVEX_DECAY, 0.0, points)
    return net, theta, settings, points, scores


def _refit(convex, data, sets, steps=2500):
    net, theta, settings, *_ = convex
    settings = TrainSettings(steps=steps, lr=settings.lr, check_every=10**6, loss_mean_over="all")
    x, y, _, _ = data
    weights = torch.ones(len(sets), len(y), dtype=DTYPE)
    for c, removed in enumerate(sets):
        weights[c, list(removed)] = 0.0
    return train_copies(net, x, y, CONVEX_DECAY, theta.repeat(len(sets), 1), weights, settings).thetas


def test_convex_influence_loo_and_pbrf_agree(convex, iris_std):
    net, theta, settings, points, scores = convex
    x, y, xt, yt = iris_std
    assert float(Objective(net, x, y, CONVEX_DECAY).gradient(theta).norm()) < 1e-9
    point = points[0]
    top = np.argsort(-np.abs(scores["top1"]))[:24]
    loo = _test_loss_changes(net, _refit(convex, iris_std, [[int(i)] for i in top]), theta, xt, yt, point["index"])
    terms = removal_terms(net, theta, x, y, [[int(i)] for i in top], 1.0, CONVEX_DECAY)
    solved, _, norms, _ = solve_lbfgs(net, x, terms, theta.repeat(len(top), 1), max_iterations=500, tolerance=1e-13)
    pbrf = _test_loss_changes(net, solved, theta, xt, yt, point["index"])
    influence = scores["top1"][top]
    for a, b in ((influence, loo), (influence, pbrf), (loo, pbrf)):
        assert np.corrcoef(a, b)[0, 1] >= 0.99
    # with linear outputs the Bregman term is the data loss minus its tangent at θ*, so PBRF with
    # λ_p = λ is LOO (loss averaged over all n rows) exactly
    np.testing.assert_allclose(pbrf, loo, rtol=1e-4, atol=1e-9)


def test_convex_group_removal_is_additive(convex, iris_std):
    net, theta, settings, points, scores = convex
    x, y, xt, yt = iris_std
    cfg = {**registry.get("groups").defaults, "random": 10, "same_class": 6, "tails": 5}
    groups = draw_groups({"top1": scores["top1"]}, y.numpy(), cfg, np.random.default_rng(0))
    actual = _test_loss_changes(net, _refit(convex, iris_std, [g["indices"] for g in groups]), theta, xt, yt,
                                points[0]["index"])
    predicted = np.array([scores["top1"][g["indices"]].sum() for g in groups])
    kinds = np.array([g["kind"] for g in groups])
    for chosen in (np.isin(kinds, ["random", "tails_positive", "tails_negative"]), np.ones(len(kinds), bool)):
        assert np.corrcoef(predicted[chosen], actual[chosen])[0, 1] >= 0.95
        from scipy.stats import spearmanr

        assert spearmanr(predicted[chosen], actual[chosen])[0] >= 0.98


def test_convex_lds_is_high(convex, iris_std):
    net, theta, settings, points, scores = convex
    x, y, xt, yt = iris_std
    left_out = draw_subsets(len(y), {"subsets": 100, "fraction": 0.5}, np.random.default_rng(1))
    thetas = _refit(convex, iris_std, left_out)
    actual = np.stack([_test_loss_changes(net, thetas, theta, xt, yt, p["index"]) for p in points])
    predicted = np.stack([[scores[p["name"]][idx].sum() for idx in left_out] for p in points])
    result = lds_score(predicted, actual, resamples=500)
    assert result["lds"] >= 0.95, result["per_point"]
    assert result["lds_lo"] <= result["lds"] <= result["lds_hi"]
    # the points a subset keeps predict the opposite: the convention is "left out"
    kept = np.stack([[scores[p["name"]].sum() - scores[p["name"]][idx].sum() for idx in left_out] for p in points])
    assert lds_score(kept, actual, resamples=0)["lds"] <= -0.95


# --------------------------------------------------------------------------- the LDS statistic
def test_lds_falls_with_noise():
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(8, 100))
    values = [lds_score(predicted, predicted + sigma * rng.normal(size=predicted.shape), resamples=0)["lds"]
              for sigma in (0.0, 0.3, 1.0, 3.0)]
    assert values[0] == pytest.approx(1.0)
    assert values[0] > values[1] > values[2] > values[3]


def test_lds_interval_covers_the_known_answer():
    """Bivariate normal pairs with correlation ρ have Spearman (6/π) arcsin(ρ/2); over 200 simulated
    studies (5 test points × 100 subsets) the 90 % interval of the mean covers it about 90 % of the time
    (measured 0.89)."""
    rho, truth = 0.6, 6 / math.pi * math.asin(0.3)
    rng = np.random.default_rng(3)
    covered = []
    for _ in range(100):
        a = rng.normal(size=(5, 100))
        b = rho * a + math.sqrt(1 - rho**2) * rng.normal(size=a.shape)
        result = lds_score(a, b, resamples=200, confidence=0.9, seed=int(rng.integers(1 << 30)))
        covered.append(result["lds_lo"] <= truth <= result["lds_hi"])
    assert 0.78 <= np.mean(covered) <= 0.98, np.mean(covered)


# --------------------------------------------------------------------------- plans and joins
def test_plan_is_seeded_and_well_formed():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    influence = pd.DataFrame({"test_point": "max", "train_index": range(120), "predicted_loss_change": rng.normal(size=120)})
    cfg = {**registry.get("groups").defaults, "tail_pool": 0.1}
    lds = {**registry.get("lds").defaults, "subsets": 20}
    plan = jobs.make_plan(influence, labels, {"groups": cfg, "lds": lds}, ("iris", "mlp", 0))
    again = jobs.make_plan(influence, labels, {"groups": cfg, "lds": lds}, ("iris", "mlp", 0))
    assert plan == again
    assert plan != jobs.make_plan(influence, labels, {"groups": cfg, "lds": lds}, ("iris", "mlp", 1))
    score = influence.predicted_loss_change.to_numpy()
    top, bottom = set(np.argsort(-score)[:12]), set(np.argsort(score)[:12])
    kinds = pd.Series([g["kind"] for g in plan["groups"]]).value_counts().to_dict()
    assert kinds == {"random": 10, "same_class": 10, "tails_positive": 5, "tails_negative": 5}
    for g in plan["groups"]:
        assert len(set(g["indices"])) == 5
        if g["kind"] == "same_class":
            assert len(set(labels[g["indices"]])) == 1
        if g["kind"] == "tails_positive":
            assert set(g["indices"]) <= top
        if g["kind"] == "tails_negative":
            assert set(g["indices"]) <= bottom
    assert len(plan["lds"]["left_out"]) == 20 and all(len(s) == 60 for s in plan["lds"]["left_out"])
    with pytest.raises(ValueError, match="truths: unknown ground truth 'lso'"):
        registry.enabled({"truths": ["loo", "lso"]})


def test_correlate_truths_keeps_the_sign_convention(tmp_path):
    """Synthetic cell whose re-trained losses are ℓ* + (the sum of the removed points' Δ̂): every
    target then scores +1 (a flipped sign, a kept-instead-of-left-out sum, or a misaligned join
    would not)."""
    rng = np.random.default_rng(0)
    n, base = 60, {"max": (7, 2.0), "median": (3, 0.5)}
    delta = {name: rng.normal(size=n) for name in base}
    points = [{"name": name, "index": idx, "loss": loss} for name, (idx, loss) in base.items()]
    (tmp_path / "tp.json").write_text(pd.Series({"test_points": points}).to_json())
    (tmp_path / "metrics.json").write_text('{"flags": [], "train_accuracy": 1.0, "test_accuracy": 1.0}')
    pd.concat([pd.DataFrame({"test_point": name, "test_index": base[name][0], "train_index": range(n),
                             "predicted_loss_change": delta[name], "status": "ok"}) for name in base]
              ).to_parquet(tmp_path / "exact.parquet")
    influence = pd.read_parquet(tmp_path / "exact.parquet")
    plan = jobs.make_plan(influence, np.repeat([0, 1, 2], 20), {"groups": registry.get("groups").defaults,
                          "lds": {**registry.get("lds").defaults, "subsets": 30}}, ("x",))
    (tmp_path / "plan.json").write_text(pd.Series(plan).to_json())

    def retrained(sets, key):
        return pd.DataFrame([{key: s, "test_index": idx, "test_loss": loss + delta[name][list(removed)].sum()}
                             for s, removed in enumerate(sets) for name, (idx, loss) in base.items()])

    retrained(plan["lds"]["left_out"], "set_id").to_parquet(tmp_path / "lds.parquet")
    retrained([g["indices"] for g in plan["groups"]], "set_id").to_parquet(tmp_path / "groups.parquet")
    chosen = list(range(0, n, 3))
    pbrf = retrained([[i] for i in chosen], "removed_index").assign(
        removed_index=lambda f: [chosen[i] for i in f.removed_index], epsilon_scale=1.0)
    pbrf.to_parquet(tmp_path / "pbrf.parquet")
    (tmp_path / "selected.json").write_text(pd.Series(
        {"per_test_point": {name: {str(i): "top" for i in chosen} for name in base}}).to_json())
    frame = jobs.correlate_truths({"study": "s", "dataset": "d", "arch": "a", "decay": 0.0, "seed": 0},
                                  {"exact": tmp_path / "exact.parquet"}, tmp_path / "tp.json", tmp_path / "metrics.json",
                                  tmp_path / "out.parquet", {name: [tmp_path / f"{name}.parquet"]
                                                             for name in ("pbrf", "groups", "lds")},
                                  selection_path=tmp_path / "selected.json", plan_path=tmp_path / "plan.json",
                                  options={"resamples": 100, "permutations": 0})
    assert set(frame.truth) == {"pbrf", "groups", "lds"}
    whole = frame[frame.subset == "all"]
    assert (whole.spearman > 0.999).all(), whole[["truth", "test_point", "spearman"]]
    assert (whole[whole.truth != "lds"].pearson > 0.999).all()
    assert len(frame[(frame.truth == "lds") & (frame.test_point == "mean")]) == 1


def test_pipeline_steps_reproduce_theta_star_when_nothing_is_removed(tmp_path):
    """Through the workflow's step functions: an LDS set trained from scratch with the original
    settings and nothing removed is θ* again (same initialisation, minibatch order and steps); PBRF
    removing nothing stays at θ* by either solver; a removed point moves PBRF away from it."""
    from fragility.study import pipeline

    data, model = tmp_path / "data.pt", tmp_path / "model.pt"
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0, "standardize": True}, str(tmp_path), data)
    train_cfg = {"optimizer": "gd", "lr": 0.05, "steps": 200, "check_every": 100}
    pipeline.train(data, "mlp-d1-w5", 0.005, 3, train_cfg, "float64", "cpu", model, tmp_path / "metrics.json",
                   log=lambda m: None)
    pipeline.pick_test_points(model, data, ["max", "median"], tmp_path / "tp.json", "cpu")
    loo_cfg = {"steps": 50, "chunk_size": 4}
    paths = {"model": model, "data": data, "test_points": tmp_path / "tp.json"}
    registry.get("lds").retrain_chunk(paths, [(0, []), (1, [5, 6])], {"start": "scratch"}, loo_cfg, train_cfg,
                                      tmp_path / "lds.parquet", device_name="cpu", log=lambda m: None)
    lds = pd.read_parquet(tmp_path / "lds.parquet")
    assert (lds[lds.set_id == 0].param_distance < 1e-12).all()
    assert (lds[lds.set_id == 1].param_distance > 1e-4).all()
    for solver in ("train", "lbfgs"):
        cfg = {**registry.get("pbrf").defaults, "solver": solver}
        registry.get("pbrf").retrain_chunk(paths, [(-1, []), (7, [7])], cfg, loo_cfg, train_cfg,
                                           tmp_path / f"pbrf_{solver}.parquet", damping=0.01, device_name="cpu",
                                           log=lambda m: None)
        pbrf = pd.read_parquet(tmp_path / f"pbrf_{solver}.parquet")
        assert (pbrf[pbrf.removed_index == -1].param_distance < 1e-9).all()
        assert (pbrf[pbrf.removed_index == 7].param_distance > 1e-6).all()


@pytest.mark.parametrize("job", ["pbrf", "groups"])
def test_killed_truth_job_resumes_from_its_checkpoint_to_the_same_numbers(job, tmp_path, monkeypatch):
    """A PBRF or removal-set job killed between checkpoints resumes at its last checkpoint and
    writes the table of an uninterrupted run; a PBRF checkpoint of another ε is not resumed."""
    from fragility.study import pipeline
    from interrupt import interrupted_at

    data, model = tmp_path / "data.pt", tmp_path / "model.pt"
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0, "standardize": True}, str(tmp_path), data)
    train_cfg = {"optimizer": "gd", "lr": 0.05, "steps": 200, "check_every": 100}
    pipeline.train(data, "mlp-d1-w5", 0.005, 3, train_cfg, "float64", "cpu", model, tmp_path / "metrics.json",
                   log=lambda m: None)
    pipeline.pick_test_points(model, data, ["max"], tmp_path / "tp.json", "cpu")
    loo_cfg = {"steps": 12, "chunk_size": 4, "optimizer": "sgd", "batch_size": 16, "checkpoint_every": 4}
    paths = {"model": model, "data": data, "test_points": tmp_path / "tp.json"}

    def run(out, checkpoint, log, scale=1.0):
        if job == "pbrf":
            cfg = {**registry.get("pbrf").defaults, "solver": "train", "epsilon_scale": scale}
            return registry.get("pbrf").retrain_chunk(paths, [(-1, []), (7, [7]), (11, [11])], cfg, loo_cfg, train_cfg,
                                                      out, damping=0.01, device_name="cpu", checkpoint_path=checkpoint,
                                                      log=log)
        return registry.get("groups").retrain_chunk(paths, [(0, [1, 2]), (1, [5, 6, 7])], {}, loo_cfg, train_cfg, out,
                                                    device_name="cpu", checkpoint_path=checkpoint, log=log)

    run(tmp_path / "whole.parquet", None, lambda m: None)
    checkpoint = tmp_path / "job.checkpoint.pt"
    with interrupted_at(monkeypatch, 7):  # after the checkpoint at step 4
        run(tmp_path / "resumed.parquet", checkpoint, lambda m: None)
    assert checkpoint.exists() and not (tmp_path / "resumed.parquet").exists()
    if job == "pbrf":  # another ε: another run, started over (its checkpoint replaced, then removed)
        messages = []
        run(tmp_path / "other.parquet", checkpoint, messages.append, scale=0.5)
        assert any("another run" in m for m in messages) and not any("resuming" in m for m in messages)
        with interrupted_at(monkeypatch, 7):
            run(tmp_path / "resumed.parquet", checkpoint, lambda m: None)
    messages = []
    run(tmp_path / "resumed.parquet", checkpoint, messages.append)
    assert any("resuming" in m and "step 4" in m for m in messages), messages
    assert not checkpoint.exists()  # removed once the table is written
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "resumed.parquet"), pd.read_parquet(tmp_path / "whole.parquet"))


@pytest.mark.slow
def test_the_truths_workflow_runs_end_to_end_on_one_cell(tmp_path):
    """configs/tiny_truths.yaml on one Iris cell through Snakemake: every ground truth gets a
    correlation with an interval for each estimator, the LOO column of truths.csv is the LOO
    correlation of summary.csv, PBRF tracks LOO on this small net, the figure is drawn, and a
    second run has nothing to do."""
    from workflow_files import copy_workflow

    one_cell = "studies:\n  iris:\n    architectures: [mlp-d1-w5]\n    decays: [0.005]\n"
    work = copy_workflow(tmp_path / "w", overlays={"one_cell.yaml": one_cell})
    args = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", "iris", "--configfile",
            "configs/tiny.yaml", "configs/tiny_truths.yaml", "configs/one_cell.yaml"]
    run = subprocess.run(args, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:]

    table = pd.read_csv(work / "results/iris/truths.csv")
    summary = pd.read_csv(work / "results/iris/summary.csv")
    number = re.compile(r"^(-?\d\.\d+) \[(-?\d\.\d+), (-?\d\.\d+)\]$")
    columns = [f"{t} {m} (max)" for t in ("loo", "pbrf", "groups") for m in ("pearson", "spearman")] + ["LDS"]
    for estimator in ("exact", "lissa"):
        row = table[table.estimator == estimator].iloc[0]
        for column in columns:
            match = number.match(str(row[column]))
            assert match, f"{estimator} {column}: {row[column]!r} is not a correlation with its interval"
            value, low, high = map(float, match.groups())
            assert -1 <= low <= value <= high <= 1, (estimator, column, row[column])
        loo = summary[(summary.estimator == estimator) & (summary.quantity == "loss_change") & (summary.subset == "all")]
        assert float(row["loo spearman (max)"].split()[0]) == pytest.approx(float(loo.spearman.iloc[0].split()[0]),
                                                                            abs=0.005)
    retraining = table[table.estimator == "loo_retraining"].iloc[0]
    assert float(retraining["pbrf spearman (max)"].split()[0]) > 0.9  # PBRF ≈ LOO for a small net near θ*
    assert (work / "results/iris/figures/truths/correlation_by_truth.png").stat().st_size > 0
    again = subprocess.run([*args, "-n"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-3000:]
