"""Ensembles over seeds (estimators/ensemble.py, trak's `models: seeds`): each against the mean
it defines computed member by member here, the convex case where every seed reaches one θ*, the
status a failing member gives, the DAG checks of the inner block and of the seeds, and trak's
kernel solve (one eigendecomposition) against torch's pseudo-inverse."""

import math
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from fragility.engine.flat import FlatModel
from fragility.engine.objective import Objective, per_sample_gradients
from fragility.engine.training import TrainSettings, train_copies
from fragility.estimators import registry
from fragility.estimators.base import Context, TrainedModel, check_requirements
from fragility.estimators.ensemble import mean_pairwise_pearson
from fragility.estimators.trak import pseudo_inverse
from fragility.models.registry import init_model
from fragility.study import grid

POINTS = [{"name": f"t{j}", "index": j} for j in (0, 4, 11)]


def _members(iris64, arch="mlp-d1-w3", seeds=(0, 1, 2), decay=0.01):
    """A Context on seed `seeds[0]`'s model whose `models` are the other seeds' (random inits: every
    formula here holds at any θ)."""
    x, y, xt, yt = iris64
    nets = [FlatModel(init_model(arch, (4,), 3, seed=s, dtype=torch.float64)) for s in seeds]
    models = [TrainedModel(net, net.flatten(), f"seed {s}") for net, s in zip(nets[1:], seeds[1:])]
    return Context(nets[0], nets[0].flatten(), x, y, xt, yt, decay=decay, damping=0.01, models=models, cell="c")


def _alone(context, net, theta):
    return Context(net, theta, context.x_train, context.y_train, context.x_test, context.y_test,
                   decay=context.decay, damping=context.damping)


def test_an_ensemble_of_identity_is_the_mean_of_each_models_gradient_products(iris64):
    """Δ̂_i = (1/M) Σ_m (1/n) ∇ℓ(z_i; θ_m)·∇ℓ(z_t; θ_m), each product from per-sample gradients."""
    c = _members(iris64)
    got = registry.make_estimator("ens", {"method": "ensemble", "estimator": {"method": "identity"}}).fit(c)
    scores = got.scores(POINTS).checked()
    idx = torch.tensor([p["index"] for p in POINTS])
    expected = 0
    for net, theta in [(c.net, c.theta)] + [(m.net, m.theta) for m in c.models]:
        g = per_sample_gradients(net, theta, c.x_train, c.y_train)
        g_t = per_sample_gradients(net, theta, c.x_test[idx], c.y_test[idx], measure=True)
        expected = expected + g_t @ g.T / c.n_train
    expected = expected / 3
    torch.testing.assert_close(scores.predicted_loss_change, expected, rtol=1e-10, atol=1e-15)
    assert scores.status == ["ok"] * 3 and expected.abs().min() > 0
    assert [m["model"] for m in got.diagnostics["members"]] == ["θ*", "seed 1", "seed 2"]
    assert got.diagnostics["member_count"] == 3 and got.diagnostics["inner_method"] == "identity"
    assert all(m["fit_seconds"] >= 0 for m in got.diagnostics["members"])
    assert scores.predicted_param_change_norm is None  # per-model quantities: left NaN
    outcome = scores.outcomes(POINTS)[1]
    assert outcome["member_statuses"] == {"θ*": "ok", "seed 1": "ok", "seed 2": "ok"}
    members = torch.stack([s.predicted_loss_change[1] for s in (
        registry.make_estimator("identity", {}).fit(_alone(c, net, theta)).scores(POINTS)
        for net, theta in [(c.net, c.theta)] + [(m.net, m.theta) for m in c.models])])
    assert outcome["member_pearson"] == pytest.approx(np.mean([np.corrcoef(members[a], members[b])[0, 1]
                                                               for a, b in ((0, 1), (0, 2), (1, 2))]), rel=1e-10)


def test_an_ensemble_of_one_model_repeated_is_the_inner_estimator_with_its_options(iris64):
    """Members built from the same block on the same θ* (a seeded LiSSA) give the inner Δ̂."""
    c = _members(iris64, seeds=(0,))
    c.models = [TrainedModel(c.net, c.theta, "seed 0 again")]
    c.damping = 0.5  # LiSSA converges at this random θ
    inner = {"method": "lissa", "depth": 40, "scale": "auto", "repeats": 1, "batch_size": 16, "seed": 3}
    ensemble = registry.make_estimator("ens", {"method": "ensemble", "estimator": inner}).fit(c).scores(POINTS).checked()
    alone = registry.make_estimator("lissa", inner).fit(_alone(c, c.net, c.theta)).scores(POINTS).checked()
    assert ensemble.status == alone.status == ["ok"] * 3
    torch.testing.assert_close(ensemble.predicted_loss_change, alone.predicted_loss_change, rtol=1e-12, atol=0)


def test_on_a_convex_model_every_seed_reaches_one_optimum_and_the_ensemble_is_the_inner_estimator(iris64):
    """L2-regularised logistic regression from three random starts, trained to convergence: one θ*,
    so each member's exact influence, and their mean, is θ*'s (to the optimisation's accuracy)."""
    x, y, xt, yt = iris64
    decay = 0.05
    nets = [FlatModel(init_model("mlp-d0-w0", (4,), 3, seed=s, dtype=torch.float64)) for s in range(3)]
    starts = torch.stack([net.flatten() for net in nets]) * 3  # far apart
    objective = Objective(nets[0], x, y, decay)
    lr = 1.0 / float(torch.linalg.eigvalsh(objective.hessian(starts[0])).max() * 1.5)
    thetas = train_copies(nets[0], x, y, decay, starts, torch.ones(3, len(y), dtype=torch.float64),
                          TrainSettings(steps=3000, lr=lr, check_every=3000), log=lambda m: None).thetas
    assert float((starts[0] - starts[1]).norm()) > 1 and float((thetas[0] - thetas[1]).norm()) < 1e-7
    c = Context(nets[0], thetas[0], x, y, xt, yt, decay=decay, damping=0.0,
                models=[TrainedModel(nets[s], thetas[s], f"seed {s}") for s in (1, 2)])
    ensemble = registry.make_estimator("e", {"method": "ensemble", "estimator": {"method": "exact"}}).fit(c)
    got = ensemble.scores(POINTS).checked()
    alone = registry.make_estimator("exact", {}).fit(_alone(c, nets[0], thetas[0])).scores(POINTS).checked()
    torch.testing.assert_close(got.predicted_loss_change, alone.predicted_loss_change, rtol=1e-6, atol=1e-12)
    assert all(o["member_pearson"] > 1 - 1e-9 for o in got.outcomes(POINTS))


def _tanh_members(iris64, count=3):
    from fragility.engine.task import make_task

    x, _, xt, _ = iris64
    y, yt = torch.sin(x.sum(1)), torch.cos(xt.sum(1))
    nets = []
    for s in range(count):
        torch.manual_seed(7 + s)
        nets.append(FlatModel(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)).double(), make_task("mse")))
    models = [TrainedModel(net, net.flatten(), f"seed {s}") for s, net in enumerate(nets[1:], 1)]
    return Context(nets[0], nets[0].flatten(), x, y, xt, yt, decay=0.0, damping=0.0, models=models), nets


def test_trak_over_seeds_is_the_product_of_the_ensemble_averages(iris64):
    """τ = [(1/M) Σ_m φ_tᵀ(ΦᵀΦ)⁻¹Φᵀ] · [(1/M) Σ_m Q], Δ̂ = [(1/M) Σ_m q_t] τ, with φ = ∇f by autograd,
    Q = y − f and q_t = y_t − f_t (single-output least squares), member by member."""
    c, nets = _tanh_members(iris64)
    idx = torch.tensor([p["index"] for p in POINTS])
    kernel, q, q_t = 0, 0, 0
    for net in nets:
        theta = net.flatten()

        def jacobian(rows):
            return torch.stack([torch.autograd.functional.jacobian(lambda t: net.logits(t, r[None])[0, 0], theta)
                                for r in rows])

        phi, phi_t = jacobian(c.x_train), jacobian(c.x_test[idx])
        kernel = kernel + phi_t @ torch.linalg.solve(phi.T @ phi, phi.T)
        q = q + (c.y_train - net.logits(theta, c.x_train)[:, 0]).detach()
        q_t = q_t + (c.y_test[idx] - net.logits(theta, c.x_test[idx])[:, 0]).detach()
    expected = q_t[:, None] / 3 * (kernel / 3) * (q / 3)[None, :]
    trak = registry.make_estimator("trak", {"projection_dim": None, "models": "seeds"}).fit(c)
    assert trak.requires == ("several_models",) and trak.diagnostics["models"] == ["θ*", "seed 1", "seed 2"]
    # Φ's condition number (~1e3): agreement to 1e-9 of the largest entry
    scale = float(expected.abs().max())
    torch.testing.assert_close(trak.scores(POINTS).predicted_loss_change, expected, rtol=1e-9, atol=1e-9 * scale)
    # θ* alone differs (the comparison can fail)
    alone = registry.make_estimator("trak", {"projection_dim": None}).fit(c).scores(POINTS).predicted_loss_change
    assert not torch.allclose(alone, expected, rtol=1e-3)
    c.models = []
    with pytest.raises(ValueError, match="models: seeds requires the models of the cell's other seeds"):
        registry.make_estimator("trak", {"models": "seeds"}).fit(c)


def test_the_kernels_eigendecomposition_gives_torchs_pseudo_inverse_and_rank():
    """One eigh against torch.linalg.pinv and matrix_rank (hermitian, the same rtol): a regular
    kernel, one singular by construction, and one with λI added."""
    gen = torch.Generator().manual_seed(0)
    for n, k, ridge in ((50, 8, 0.0), (50, 8, 0.3)):
        phi = torch.randn(n, k, generator=gen, dtype=torch.float64) * torch.logspace(0, -3, k, dtype=torch.float64)
        for features in (phi, torch.cat([phi, phi[:, :2] @ torch.randn(2, 3, generator=gen, dtype=torch.float64)], 1)):
            kernel = features.T @ features + ridge * torch.eye(features.shape[1], dtype=torch.float64)
            inverse, rank = pseudo_inverse(kernel, 1e-12)
            expected = torch.linalg.pinv(kernel, hermitian=True, rtol=1e-12)
            torch.testing.assert_close(inverse @ features.T, expected @ features.T, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))
            assert rank == int(torch.linalg.matrix_rank(kernel, hermitian=True, rtol=1e-12))
            assert rank == (features.shape[1] if ridge or features is phi else k)


def test_mean_pairwise_pearson_is_numpys():
    rows = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    c = np.corrcoef(rows.numpy())
    assert mean_pairwise_pearson(rows) == pytest.approx(c[np.triu_indices(4, 1)].mean(), rel=1e-12)
    assert math.isnan(mean_pairwise_pearson(rows[:1])) and math.isnan(mean_pairwise_pearson(torch.ones(2, 5)))


@pytest.fixture()
def flaky(tmp_path):
    """An estimator scoring Δ̂_i = θ₀ for every i, which fails test point 1 on the member seed 1."""
    path = tmp_path / "flaky.py"
    path.write_text(textwrap.dedent('''
        import torch
        from fragility.estimators.base import Estimator, EstimatorScores

        class Flaky(Estimator):
            requires = ("last_linear_layer",)

            def scores(self, test_points):
                c = self.context
                bad = "seed 1" in c.cell
                status = ["diverged" if bad and t == 1 else "ok" for t in range(len(test_points))]
                return EstimatorScores(torch.full((len(test_points), c.n_train), float(c.theta[0]), dtype=c.theta.dtype),
                                       status)
    '''))
    return f"{path}:Flaky"


def test_a_test_point_is_ok_only_if_every_member_scored_it(iris64, flaky):
    """A member's failure is the test point's status, naming the member; the others keep the mean."""
    c = _members(iris64)
    estimator = registry.make_estimator("e", {"method": "ensemble", "estimator": {"method": flaky}})
    assert estimator.requires == ("several_models", "last_linear_layer")
    check_requirements(estimator, c, "c")
    scores = estimator.fit(c).scores(POINTS).checked()
    assert scores.status == ["ok", "diverged (member seed 1)", "ok"]
    mean = sum(float(t[0]) for t in [c.theta] + [m.theta for m in c.models]) / 3
    torch.testing.assert_close(scores.predicted_loss_change[0], torch.full((c.n_train,), mean, dtype=torch.float64))
    assert torch.isnan(scores.predicted_loss_change[1]).all()
    outcome = scores.outcomes(POINTS)[1]
    assert outcome["member_statuses"] == {"θ*": "ok", "seed 1": "diverged", "seed 2": "ok"}
    assert math.isnan(outcome["member_pearson"])  # constant rows: no correlation
    c.models = []
    with pytest.raises(ValueError, match="the estimator 'ensemble' requires several trained models"):
        check_requirements(registry.make_estimator("e", {"method": "ensemble", "estimator": {"method": flaky}}), c,
                           "influence.methods.e")


def test_an_inner_estimator_needing_more_than_one_model_is_refused_when_built():
    for inner, need in (({"method": "tracin"}, "checkpoints"), ({"method": "trak", "models": "seeds"}, "several_models")):
        with pytest.raises(ValueError, match=f"ensemble.estimator: '{inner['method']}' requires {need}"):
            registry.make_estimator("e", {"method": "ensemble", "estimator": inner})
    with pytest.raises(ValueError, match="is an ensemble itself"):
        registry.make_estimator("e", {"method": "ensemble", "estimator": {"method": "ensemble",
                                                                          "estimator": {"method": "identity"}}})
    with pytest.raises(ValueError, match="`estimator` must be the inner estimator's block with its method"):
        registry.make_estimator("e", {"method": "ensemble"})


# --------------------------------------------------------------------------- the DAG
def _study(methods, seeds=(0, 1), **block):
    study = {"datasets": {"iris": {}}, "architectures": ["mlp-d1-w3", "mlp-d2-w3"], "decays": [0.0],
             "seeds": list(seeds), "train": {"optimizer": "gd", "lr": 0.1, "steps": 10}, "test_points": ["max"],
             "influence": {"damping": 0.01, "methods": {"exact": {}, **methods}},
             "select": {"by": "exact", "rules": [{"top_k": 3}]}, "loo": {"steps": 5, "chunk_size": 4}, **block}
    return {"studies": {"audit": study}}


KEY = "studies.audit.influence.methods.ens"
BAD_BLOCKS = [
    ({"method": "ensemble", "estimator": {"method": "lissa", "depthh": 3}},
     f"{KEY}.estimator.depthh: not an option of the estimator 'lissa'"),
    ({"method": "ensemble", "estimator": {"method": "lisa"}}, f"{KEY}.estimator.method: unknown estimator method 'lisa'"),
    ({"method": "ensemble", "estimator": {"method": "tracin"}},
     f"{KEY}.estimator: the estimator 'tracin' requires θ at saved steps .* which one member of 'ensemble'"),
    ({"method": "ensemble", "estimator": {"method": "trak", "models": "checkpoints"}},
     f"{KEY}.estimator: the estimator 'trak' requires θ at saved steps"),
    ({"method": "ensemble", "estimator": {"method": "ensemble", "estimator": {"method": "exact"}}},
     f"{KEY}.estimator.method: 'ensemble' holds an estimator itself"),
    ({"method": "ensemble", "estimator": {"depth": 3}}, f"{KEY}.estimator: the estimator 'ensemble' needs the inner "
                                                        "estimator's block with its method"),
    ({"method": "ensemble", "estimator": {"method": "exact"}, "depth": 3}, f"{KEY}.depth: not an option of the "
                                                                           "estimator 'ensemble', which reads estimator"),
]


@pytest.mark.parametrize("settings, message", BAD_BLOCKS)
def test_a_bad_inner_estimator_stops_the_dag_build_naming_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        grid.check_config(_study({"ens": settings}))


@pytest.mark.parametrize("settings", [{"method": "ensemble", "estimator": {"method": "identity"}},
                                      {"method": "trak", "models": "seeds"}])
def test_an_ensemble_over_seeds_needs_two_seeds_of_its_architecture_and_no_fusing(settings):
    grid.check_config(_study({"ens": settings}))
    with pytest.raises(ValueError, match=f"{KEY}: the estimator '{settings['method']}' requires several trained models "
                                         r".*and studies.audit.seeds \(architecture mlp-d1-w3\) has one seed"):
        grid.check_config(_study({"ens": settings}, seeds=(0,)))
    one_seed = _study({"ens": settings}, overrides={"mlp-d2-w3": {"seeds": [0]}})
    with pytest.raises(ValueError, match=f"{KEY}: .*requires several trained models.*and "
                                         "studies.audit.overrides.mlp-d2-w3.seeds has one seed"):
        grid.check_config(one_seed)
    # an architecture given two seeds where the study has one; the other drops the estimator
    grid.check_config(_study({"ens": settings}, seeds=(0,), overrides={
        "mlp-d1-w3": {"seeds": [0, 1]}, "mlp-d2-w3": {"influence": {"methods": {"ens": None}}}}))
    # every architecture drops it: the study's one seed does not matter
    grid.check_config(_study({"ens": settings}, seeds=(0,), overrides={
        arch: {"influence": {"methods": {"ens": None}}} for arch in ("mlp-d1-w3", "mlp-d2-w3")}))
    with pytest.raises(ValueError, match=f"{KEY}: the estimator '{settings['method']}' requires several trained models, "
                                         "which a study with fuse_fit: true cannot give"):
        grid.check_config(_study({"ens": settings}, fuse_fit=True))


def test_an_override_of_the_inner_block_is_merged_as_the_run_merges_it():
    """`overrides.<arch>.influence.methods.ens: {estimator: {depth: 50}}` changes one option of the
    inner LiSSA block (deep merge, as arch_config); an unknown inner option there is refused."""
    settings = {"method": "ensemble", "estimator": {"method": "lissa", "depth": 20}}
    config = _study({"ens": settings}, overrides={"mlp-d2-w3": {"influence": {"methods": {"ens": {"estimator": {
        "depth": 50}}}}}})
    grid.check_config(config)
    assert grid.estimators(config, "audit", "mlp-d2-w3")["ens"]["estimator"] == {"method": "lissa", "depth": 50}
    config["studies"]["audit"]["overrides"]["mlp-d2-w3"]["influence"]["methods"]["ens"]["estimator"] = {"depthh": 5}
    with pytest.raises(ValueError, match="overrides.mlp-d2-w3.influence.methods.ens.estimator.depthh: not an option"):
        grid.check_config(config)


def test_the_other_seeds_are_the_inputs_of_trak_over_seeds_and_of_an_ensemble():
    config = _study({"ens": {"method": "ensemble", "estimator": {"method": "exact"}},
                     "trak": {"models": "seeds"}, "trak_alone": {"method": "trak"}}, seeds=(0, 1, 2))
    grid.check_config(config)
    cell = {"study": "audit", "dataset": "iris", "arch": "mlp-d1-w3", "decay": "0", "seed": "2"}
    for name in ("ens", "trak"):
        assert [c["seed"] for c in grid.estimator_model_cells(config, cell, name)] == [0, 1]
    assert grid.estimator_model_cells(config, cell, "trak_alone") == []
    assert registry.requirements("ensemble", "k", {"estimator": {"method": "exact"}}) == \
        ("several_models", "second_derivatives")
    assert registry.requirements("trak", "k", {"models": "seeds"}) == ("several_models",)


def test_the_schema_takes_an_ensemble_block_and_refuses_a_bad_inner_one():
    import copy
    from pathlib import Path

    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    repo = Path(__file__).resolve().parents[1]
    schema = str(repo / "workflow" / "schemas" / "config.schema.yaml")
    config = yaml.safe_load((repo / "config.yaml").read_text())
    methods = config["studies"]["iris"]["influence"]["methods"]
    methods["ens"] = {"method": "ensemble", "estimator": {"method": "lissa", "depth": 50}}
    methods["trak_seeds"] = {"method": "trak", "models": "seeds"}
    validate(copy.deepcopy(config), schema)
    for bad in ({"method": "ensemble", "estimator": {"method": "lissa", "depth": 0}},
                {"method": "ensemble", "estimator": {"method": "lisa"}}, {"method": "trak", "models": "seed"}):
        methods["ens"] = bad
        with pytest.raises(WorkflowError):
            validate(copy.deepcopy(config), schema)
