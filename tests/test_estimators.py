"""The estimator registry (src/fragility/estimators): the built-in inverse-Hessian methods through
the interface give the bits the solver pipeline gives; an estimator class of one's own, named
`"file.py:Class"`, is checked from its source at DAG build and computes what its formula says."""

import copy
import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import train_iris_cell
import torch

from fragility import plugins
from fragility.engine.methods import OPTIONS_READ
from fragility.engine.objective import Objective, directional_derivatives, per_sample_gradients
from fragility.engine.solvers import make_solver
from fragility.estimators import registry
from fragility.estimators.base import Context, EstimatorScores, check_requirements
from fragility.io import read_json
from fragility.study import grid, pipeline

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/my_estimator.py:LastLayerSimilarity"
OPTIONS = {"exact": {}, "cg": {"tol": 1e-10}, "lissa": {"depth": 50, "scale": "auto", "repeats": 2, "batch_size": 16},
           "arnoldi": {"iterations": 20, "rank": 10}, "kfac": {}, "ekfac": {}, "identity": {}}


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    """A width-3 MLP trained on Iris (float64), with test points ["top2"]."""
    root = tmp_path_factory.mktemp("cell")
    return root, train_iris_cell(root, ["top2"])


def _context(paths, damping=0.01):
    net, theta, record = pipeline.load_trained(paths["model.pt"])
    split = pipeline.Split.load(paths["data.pt"])
    x, y, xt, yt = pipeline._tensors(split, theta.dtype, torch.device("cpu"))
    return Context(net, theta, x, y, xt, yt, decay=record["decay"], damping=damping), read_json(paths["tp.json"])["test_points"]


@pytest.mark.parametrize("method", list(OPTIONS))
def test_every_built_in_estimator_gives_the_solver_pipelines_bits(cell, method):
    """compute_influence (registry → InverseHessianEstimator) against the solver steps written
    out: solve (H + δI) s_t = ∇ℓ(z_t), Δ̂ = ∇ℓ(z_i)·s_t / n, norms from the n × p gradients."""
    root, paths = cell
    table_path, json_path = str(root / f"{method}.parquet"), str(root / f"{method}.json")
    pipeline.compute_influence(paths["model.pt"], paths["data.pt"], paths["tp.json"], f"my_{method}",
                               {"method": method, **OPTIONS[method]}, 0.01, table_path, json_path, device_name="cpu",
                               log=lambda m: None)
    table, diagnostics = pd.read_parquet(table_path), read_json(json_path)

    c, points = _context(paths)
    solver = make_solver(method, **OPTIONS[method]).fit(Objective(c.net, c.x_train, c.y_train, c.decay), c.theta)
    idx = torch.tensor([p["index"] for p in points])
    result = solver.solve(per_sample_gradients(c.net, c.theta, c.x_test[idx], c.y_test[idx], measure=True), 0.01)
    n = c.n_train
    dots = directional_derivatives(c.net, c.theta, c.x_train, c.y_train, torch.nan_to_num(result.solutions), chunk_size=128)
    grads = per_sample_gradients(c.net, c.theta, c.x_train, c.y_train, chunk_size=128)
    norms = solver.solution_norms(grads, 0.01) / n if solver.supports_norms else torch.full((n,), math.nan)
    for t, point in enumerate(points):
        rows = table[table.test_point == point["name"]]
        assert list(rows.train_index) == list(range(n)) and (rows.status == result.status[t]).all()
        expected = (dots[t] / n).numpy() if result.status[t] == "ok" else torch.full((n,), math.nan, dtype=torch.float64).numpy()
        assert rows.predicted_loss_change.to_numpy().tobytes() == expected.tobytes()
        assert rows.train_grad_norm.to_numpy().tobytes() == grads.norm(dim=1).numpy().tobytes()
        assert rows.predicted_param_change_norm.to_numpy().tobytes() == norms.double().numpy().tobytes()
    assert diagnostics["method"] == method and diagnostics["estimator"] == f"my_{method}"
    assert [o["status"] for o in diagnostics["test_points"]] == result.status


def test_the_example_estimator_is_the_last_layers_gradient_dot_product(cell, monkeypatch):
    """Δ̂_i = (1/n) ∇_{W,b}ℓ(z_i)·∇_{W,b}ℓ(z_t) over the last layer, by autograd row by row."""
    monkeypatch.chdir(REPO)
    root, paths = cell
    table_path, json_path = str(root / "last.parquet"), str(root / "last.json")
    pipeline.compute_influence(paths["model.pt"], paths["data.pt"], paths["tp.json"], "last_layer", {"method": EXAMPLE},
                               0.01, table_path, json_path, device_name="cpu", log=lambda m: None)
    table, diagnostics = pd.read_parquet(table_path), read_json(json_path)
    assert diagnostics["method"] == EXAMPLE and diagnostics["layer_parameters"] == 3 * 3 + 3
    assert (table.status == "ok").all() and table.predicted_param_change_norm.isna().all()

    c, points = _context(paths)
    model = c.net.model
    last = list(model.modules())[-1]
    assert isinstance(last, torch.nn.Linear)

    def gradient(x, y):
        loss = c.task.per_sample_loss(model(x[None]), y[None]).sum()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [last.weight, last.bias])])

    train = torch.stack([gradient(c.x_train[i], c.y_train[i]) for i in range(c.n_train)])
    for point in points:
        g_t = gradient(c.x_test[point["index"]], c.y_test[point["index"]])
        got = torch.tensor(table[table.test_point == point["name"]].predicted_loss_change.to_numpy())
        torch.testing.assert_close(got, train @ g_t / c.n_train, rtol=1e-10, atol=1e-14)
        assert got.abs().max() > 0


def test_on_one_linear_layer_the_example_equals_the_identity_method(tmp_path, monkeypatch):
    """Logistic regression has only its last layer: the example and `identity` agree."""
    monkeypatch.chdir(REPO)
    paths = {name: str(tmp_path / name) for name in ("data.pt", "model.pt", "metrics.json", "tp.json")}
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, "data", paths["data.pt"])
    pipeline.train(paths["data.pt"], "mlp-d0-w0", 0.01, 0, {"optimizer": "gd", "lr": 0.1, "steps": 50}, "float64",
                   "cpu", paths["model.pt"], paths["metrics.json"], log=lambda m: None)
    pipeline.pick_test_points(paths["model.pt"], paths["data.pt"], ["max"], paths["tp.json"], "cpu")
    c, points = _context(paths)
    ours = registry.make_estimator("last", {"method": EXAMPLE}).fit(c).scores(points).checked()
    identity = registry.make_estimator("identity", {}).fit(c).scores(points).checked()
    torch.testing.assert_close(ours.predicted_loss_change, identity.predicted_loss_change, rtol=1e-10, atol=1e-14)


def test_scores_and_status_never_disagree():
    """A test point that is not "ok" scores NaN; NaN scores are never "ok"."""
    scores = EstimatorScores(torch.tensor([[1.0, math.nan], [1.0, 2.0], [3.0, 4.0]]), ["ok", "ok", "diverged"],
                             [{"status": "ok"}, {"status": "ok"}, {"status": "diverged"}]).checked()
    assert scores.status == ["non_finite_scores", "ok", "diverged"]
    points = [{"name": f"t{t}", "index": t} for t in range(3)]
    assert scores.outcomes(points)[0] == {"test_point": "t0", "status": "non_finite_scores"}
    assert torch.isnan(scores.predicted_loss_change[2]).all() and scores.predicted_loss_change[1].tolist() == [1.0, 2.0]
    table = scores.table(points)
    assert len(table) == 6 and table.predicted_param_change_norm.isna().all()


def test_the_registry_reads_options_and_needs_from_source_without_importing(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent('''
        raise RuntimeError("imported!")

        class WithInit:
            requires = ("several_models", "forward_mode")
            def __init__(self, width=3, *, scale=1.0):
                pass

        class WithOptions:
            class Options:
                rank: int = 4
                seed: int = 0

        class Anything:
            def __init__(self, **options):
                pass
    '''))
    assert registry.options_read(f"{path}:WithInit") == ("width", "scale")
    assert registry.requirements(f"{path}:WithInit") == ("several_models", "forward_mode")
    assert registry.options_read(f"{path}:WithOptions") == ("rank", "seed") and registry.requirements(f"{path}:WithOptions") == ()
    assert registry.options_read(f"{path}:Anything") is None
    assert registry.options_read("lissa") == OPTIONS_READ["lissa"]
    # a merged block keeps only what the class reads, as for a built-in method
    assert registry.method_settings("e", {"method": f"{path}:WithInit", "width": 2, "depth": 9}) == \
        {"method": f"{path}:WithInit", "width": 2}
    with pytest.raises(plugins.PluginError, match="imported!"):
        registry.estimator_class(f"{path}:WithInit")


@pytest.fixture()
def estimator_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent('''
        from dataclasses import dataclass, field

        from fragility.estimators.base import Estimator

        class Mine(Estimator):
            def __init__(self, width=3):
                super().__init__()

        class NeedsCheckpoints(Estimator):
            requires = ("checkpoints",)

        class NeedsSeeds(Estimator):
            requires = ("several_models",)

        class NeedsMagic(Estimator):
            requires = ("magic",)

        @dataclass
        class RankOptions:
            rank: int = field(default=4, metadata={"help": "how many directions"})

        class WithOptions(Estimator):
            Options = RankOptions
    '''))
    return lambda name: f"{path}:{name}"


def _study(estimator_file, settings):
    block = {"datasets": {"iris": {}}, "architectures": ["mlp-d1-w3"], "decays": [0.0], "seeds": [0],
             "train": {"optimizer": "gd", "lr": 0.1, "steps": 10}, "test_points": ["max"],
             "influence": {"damping": 0.01, "methods": {"exact": {}, "mine": settings}},
             "select": {"by": "exact", "rules": [{"top_k": 3}]}, "loo": {"steps": 5, "chunk_size": 4}}
    return {"studies": {"audit": block}}


def test_a_good_estimator_class_passes_the_dag_checks(estimator_file):
    config = _study(estimator_file, {"method": estimator_file("Mine"), "width": 5})
    grid.check_config(config)
    assert grid.estimators(config, "audit", "mlp-d1-w3")["mine"] == {"method": estimator_file("Mine"), "width": 5}
    two_seeds = _study(estimator_file, {"method": estimator_file("NeedsSeeds")})
    two_seeds["studies"]["audit"]["seeds"] = [0, 1]
    grid.check_config(two_seeds)


def test_an_estimator_needing_several_models_gets_the_other_seeds_as_inputs(estimator_file):
    """The DAG hook of `requires`: every other seed's model of the same dataset × arch × decay;
    a fused study, whose jobs each train one model, refuses such an estimator at DAG build."""
    config = _study(estimator_file, {"method": estimator_file("NeedsSeeds")})
    config["studies"]["audit"]["seeds"] = [0, 1, 2]
    config["studies"]["audit"]["decays"] = [0.0, 0.01]
    grid.check_config(config)
    cell = {"study": "audit", "dataset": "iris", "arch": "mlp-d1-w3", "decay": "0.01", "seed": "1"}
    others = grid.estimator_model_cells(config, cell, "mine")
    assert [(c["seed"], c["decay"]) for c in others] == [(0, "0.01"), (2, "0.01")]
    assert grid.estimator_model_cells(config, cell, "exact") == []
    config["studies"]["audit"]["fuse_fit"] = True
    with pytest.raises(ValueError, match="methods.mine: the estimator .* requires several trained models, which a study "
                                         "with fuse_fit: true cannot give"):
        grid.check_config(config)


def test_options_reach_the_estimator_as_its_init_arguments_or_its_options_dataclass(estimator_file):
    assert registry.make_estimator("mine", {"method": estimator_file("WithOptions"), "rank": 7}).options.rank == 7
    assert registry.make_estimator("mine", {"method": estimator_file("WithOptions")}).options.rank == 4
    with pytest.raises(plugins.PluginError, match="influence.methods.mine: .*WithOptions' cannot be built with options "
                                                  "\\['depth'\\]"):
        registry.make_estimator("mine", {"method": estimator_file("WithOptions"), "depth": 1})
    assert registry.make_estimator("exact", {"hessian": "gauss_newton"}).solver.hessian == "gauss_newton"
    assert registry.options_read(estimator_file("WithOptions")) == ("rank",)


BAD_ESTIMATORS = [
    (lambda p: {"method": "/nowhere/e.py:Mine"}, "studies.audit.influence.methods.mine.method: file '/nowhere/e.py' does not exist"),
    (lambda p: {"method": p("Missing")}, "studies.audit.influence.methods.mine.method: .*mine.py defines no top-level class 'Missing'"),
    (lambda p: {"method": p("Mine"), "depth": 3}, "studies.audit.influence.methods.mine.depth: not an option of the estimator .*Mine', which reads width"),
    (lambda p: {"method": "no_such_module_here:Mine"}, "studies.audit.influence.methods.mine.method: module 'no_such_module_here' cannot be found"),
    (lambda p: {"method": p("NeedsCheckpoints")}, "studies.audit.influence.methods.mine: the estimator .* requires checkpoints"),
    (lambda p: {"method": p("NeedsSeeds")}, "studies.audit.influence.methods.mine: the estimator .* requires several trained models"),
    (lambda p: {"method": p("NeedsMagic")}, "studies.audit.influence.methods.mine: .* requires 'magic', which the workflow does not know"),
    (lambda p: {"method": "Mine"}, "studies.audit.influence.methods.mine: the estimator 'mine' names no method"),
]


@pytest.mark.parametrize("settings, message", BAD_ESTIMATORS)
def test_a_bad_estimator_stops_the_dag_build_naming_the_key(estimator_file, settings, message):
    config = _study(estimator_file, settings(estimator_file))
    with pytest.raises(ValueError, match=message):
        grid.check_config(config)


def test_the_schema_takes_an_estimator_class_with_its_own_options():
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    methods = config["studies"]["iris"]["influence"]["methods"]
    methods["mine"] = {"method": EXAMPLE, "chunk_size": 64, "anything": [1, 2]}
    validate(copy.deepcopy(config), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    for bad in ({"method": "exactly"}, {"method": "exact", "anything": 1}, {"method": "a.py:not a name"}):
        methods["mine"] = bad
        with pytest.raises(WorkflowError):
            validate(copy.deepcopy(config), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))


def test_a_model_without_a_last_linear_layer_is_refused_in_the_job_naming_the_estimator(cell, monkeypatch):
    monkeypatch.chdir(REPO)
    _, paths = cell
    c, _ = _context(paths)
    estimator = registry.make_estimator("last", {"method": EXAMPLE})
    check_requirements(estimator, c, "iris/mlp-d1-w3/wd0.01/seed0")  # it has one
    c.net = SimpleNamespace(model=torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Conv1d(1, 1, 1)))
    with pytest.raises(ValueError, match="iris/mlp-d1-w3/wd0.01/seed0: the estimator 'examples/my_estimator.py:LastLay"
                                         "erSimilarity' requires a model whose last parameterised layer is an nn.Linear"):
        check_requirements(estimator, c, "iris/mlp-d1-w3/wd0.01/seed0")


def test_the_other_seeds_models_reach_the_context(cell, tmp_path):
    """compute_influence loads `extra_models` into Context.models; without them an estimator
    that requires several models stops in the job, naming itself."""
    _, paths = cell
    other = str(tmp_path / "seed1.pt")
    pipeline.train(paths["data.pt"], "mlp-d1-w3", 0.01, 1, {"optimizer": "gd", "lr": 0.1, "steps": 20}, "float64",
                   "cpu", other, str(tmp_path / "m.json"), log=lambda m: None)
    path = tmp_path / "ensemble.py"
    path.write_text(textwrap.dedent('''
        import torch
        from fragility.estimators.base import Estimator, EstimatorScores

        class SeedCount(Estimator):
            requires = ("several_models",)

            def scores(self, test_points):
                c = self.context
                self.diagnostics = {"models": [m.label for m in c.models]}
                return EstimatorScores(torch.zeros(len(test_points), c.n_train, dtype=c.theta.dtype),
                                       ["ok"] * len(test_points))
    '''))
    out = (str(tmp_path / "t.parquet"), str(tmp_path / "t.json"))
    settings = {"method": f"{path}:SeedCount"}
    pipeline.compute_influence(paths["model.pt"], paths["data.pt"], paths["tp.json"], "seeds", settings, 0.01, *out,
                               device_name="cpu", extra_models=[other], log=lambda m: None)
    record = read_json(out[1])
    assert record["models"] == ["seed 1"] and [p["status"] for p in record["test_points"]] == ["ok", "ok"]
    with pytest.raises(ValueError, match="influence.methods.seeds: the estimator '.*ensemble.py:SeedCount' requires "
                                         "several trained models"):
        pipeline.compute_influence(paths["model.pt"], paths["data.pt"], paths["tp.json"], "seeds", settings, 0.01, *out,
                                   device_name="cpu", log=lambda m: None)
