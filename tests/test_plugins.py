"""Models, datasets and tasks of a user's own, named by import path in the config: every mistake
stops the run at DAG build (config checks) or in the first job, naming the config key and file."""

import textwrap

import pytest
import torch

from fragility import plugins
from fragility.data.registry import load_split
from fragility.models.registry import build_model, check_architecture
from fragility.study import grid

PLUGIN_SOURCE = '''
import torch
from torch import nn
from fragility.data.split import Split

def build(input_shape, n_classes, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.Tanh(), nn.Linear(hidden, n_classes))

def build_wrong_width(input_shape, n_classes):
    return nn.Linear(input_shape[0], n_classes + 1)

def takes_nothing():
    return nn.Linear(2, 2)

def raises(input_shape, n_classes):
    raise RuntimeError("no GPU here")

def not_a_module(input_shape, n_classes):
    return "a string"

def load(data_dir, n=20):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    return Split(x[:15], y[:15], x[15:], y[15:], n_classes=2)

def load_mismatched(data_dir):
    return Split(torch.zeros(10, 3), torch.zeros(9, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2)

def load_bad_labels(data_dir):
    return Split(torch.zeros(4, 3), torch.tensor([0, 1, 2, 1]), torch.zeros(2, 3), torch.tensor([0, 1]), 2)

def load_tuple(data_dir):
    return (1, 2)
'''


@pytest.fixture()
def plugin(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(PLUGIN_SOURCE))
    return lambda name: f"{path}:{name}"


def _config(plugin):
    block = {
        "datasets": {"mydata": {"loader": plugin("load"), "n": 20}}, "architectures": ["mynet"], "decays": [0.0],
        "seeds": [0], "train": {"optimizer": "gd", "lr": 0.1, "steps": 10}, "test_points": ["max"],
        "influence": {"damping": 0.01, "methods": {"exact": {}}}, "select": {"by": "exact", "rules": [{"top_k": 3}]},
        "loo": {"steps": 5, "chunk_size": 4},
    }
    return {"models": {"mynet": {"factory": plugin("build"), "options": {"hidden": 3}}}, "studies": {"audit": block}}


def test_a_good_plug_in_config_passes_and_builds(plugin):
    config = _config(plugin)
    grid.check_config(config)
    model = build_model("mynet", (3,), 2, config["models"])
    assert sum(p.numel() for p in model.parameters()) == 3 * 3 + 3 + 3 * 2 + 2
    split = load_split("mydata", config["studies"]["audit"]["datasets"]["mydata"])
    assert split.x_train.shape == (15, 3) and split.n_classes == 2


# each case: a change to the config, and what the DAG-build error must say (key and file)
BAD_CONFIGS = [
    (lambda c, p: c["models"]["mynet"].update(factory="/nowhere/x.py:build"), "models.mynet.factory: file '/nowhere/x.py' does not exist"),
    (lambda c, p: c["models"]["mynet"].update(factory=p("nope")), "models.mynet.factory: .*mine.py defines no top-level function or class 'nope'"),
    (lambda c, p: c["models"]["mynet"].update(factory=p("takes_nothing")), "models.mynet.factory: .* must take the argument\\(s\\) input_shape, n_classes"),
    (lambda c, p: c["models"]["mynet"].update(options={"depth": 2}), "models.mynet.options: depth is not an option of"),
    (lambda c, p: c["models"]["mynet"].update(factory="no_such_module_here:build"), "models.mynet.factory: module 'no_such_module_here' cannot be found"),
    (lambda c, p: c["studies"]["audit"].update(architectures=["theirnet"]), "studies.audit.architectures: unknown architecture 'theirnet'"),
    (lambda c, p: c["studies"]["audit"]["datasets"]["mydata"].update(loader=p("missing")), "studies.audit.datasets.mydata.loader: .*mine.py defines no top-level"),
    (lambda c, p: c["studies"]["audit"]["datasets"]["mydata"].update(size=3), "studies.audit.datasets.mydata: size is not an option of the loader"),
    (lambda c, p: c["studies"]["audit"]["datasets"]["mydata"].update(loader="mine.load"), "studies.audit.datasets.mydata.loader: unknown dataset loader 'mine.load'"),
    (lambda c, p: c["studies"]["audit"]["datasets"]["mydata"].update(loader="a:b:c"), "must be written 'package.module:function'"),
    (lambda c, p: c["studies"]["audit"].update(task="hinge"), "studies.audit.task: unknown task 'hinge'"),
    (lambda c, p: c["studies"]["audit"].update(task="/nowhere/t.py:MyTask"), "studies.audit.task: file '/nowhere/t.py' does not exist"),
]


@pytest.mark.parametrize("patch, message", BAD_CONFIGS)
def test_bad_plug_ins_stop_the_dag_build_naming_the_key(plugin, patch, message):
    config = _config(plugin)
    patch(config, plugin)
    with pytest.raises(ValueError, match=message):
        grid.check_config(config)


@pytest.mark.parametrize("name, message", [
    ("raises", "models.mynet.factory: '.*mine.py:raises' raised RuntimeError: no GPU here"),
    ("not_a_module", "models.mynet.factory: '.*mine.py:not_a_module' returned str, not a torch.nn.Module"),
])
def test_a_factory_that_fails_names_its_key_in_the_job(plugin, name, message):
    config = _config(plugin)
    config["models"]["mynet"] = {"factory": plugin(name)}
    check_architecture("mynet", config["models"])  # its signature is fine: the DAG builds
    with pytest.raises(plugins.PluginError, match=message):
        build_model("mynet", (3,), 2, config["models"])


@pytest.mark.parametrize("name, message", [
    ("load_mismatched", "returned a bad split: x_train must be \\[n, ...\\] with one row per entry of y_train"),
    ("load_bad_labels", "returned a bad split: labels y_train must be a vector of integers in \\[0, n_classes = 2\\)"),
    ("load_tuple", "returned tuple, not a fragility.data.split.Split"),
])
def test_a_loader_that_returns_a_bad_split_names_its_key(plugin, name, message):
    with pytest.raises(plugins.PluginError, match="datasets.mydata.loader: .*" + message):
        load_split("mydata", {"loader": plugin(name)})


def test_a_model_with_the_wrong_number_of_outputs_is_refused_before_training(plugin):
    from fragility.study.pipeline import check_outputs

    model = build_model("mynet", (3,), 2, {"mynet": {"factory": plugin("build_wrong_width")}})
    with pytest.raises(ValueError, match="models.mynet.factory: the model maps inputs \\(2, 3\\) to \\(2, 3\\); expected \\(2, 2\\)"):
        check_outputs(model, torch.zeros(2, 3), 2, "models.mynet.factory")


def test_signatures_are_read_without_importing(tmp_path):
    """A plug-in file whose import would fail (or run code) is still checked from its source."""
    path = tmp_path / "heavy.py"
    path.write_text("raise RuntimeError('imported!')\n\ndef build(input_shape, n_classes, *, width=3, **extra):\n    pass\n")
    assert plugins.parameters(f"{path}:build", "key") == ["input_shape", "n_classes", "width", "**"]
    with pytest.raises(plugins.PluginError, match="key: importing .*heavy.py failed: RuntimeError: imported!"):
        plugins.load(f"{path}:build", "key")
