"""Files on a shared project: written results get the mode the umask gives, and reading a result
never runs code (torch files are loaded with weights_only=True)."""

import os
import stat

import pandas as pd
import pytest
import torch

from fragility import io
from fragility.report.aggregate import write_html


def _writers(folder):
    frame = pd.DataFrame({"a": [1, 2]})
    return {
        "json": lambda: io.write_json({"a": 1}, folder / "x.json"),
        "csv": lambda: io.write_csv(frame, folder / "x.csv"),
        "parquet": lambda: io.write_parquet(frame, folder / "x.parquet"),
        "pt": lambda: io.save_torch({"theta": torch.zeros(3)}, folder / "x.pt"),
        "html": lambda: write_html(frame, folder / "x.html", "x"),
    }


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("kind", ["json", "csv", "parquet", "pt", "html"])
def test_a_written_file_gets_the_mode_of_the_umask(tmp_path, umask, mode, kind):
    previous = os.umask(umask)
    try:
        _writers(tmp_path)[kind]()
    finally:
        os.umask(previous)
    (written,) = [p for p in tmp_path.iterdir()]
    assert not written.name.startswith(".")  # the temporary file was renamed into place
    assert stat.S_IMODE(written.stat().st_mode) == mode


class _Planted:
    """Unpickling this creates the file `marker`: a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_torch_file_with_a_pickled_callable_is_refused_not_run(tmp_path):
    marker, planted = tmp_path / "ran", tmp_path / "model.pt"
    torch.save({"theta": torch.zeros(2), "payload": _Planted(marker)}, planted)
    with pytest.raises(io.UnsafeFileError, match="refusing to load .*model.pt: it holds a pickled io.open") as caught:
        io.load_torch(planted, required_keys=("theta",))
    assert "weights_only=False" not in str(caught.value)  # torch's own advice, not to be followed here
    assert not marker.exists()
    # the control: loading it the unsafe way does run the payload
    torch.load(planted, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "plain-pickle"])
def test_a_damaged_torch_file_names_the_command_that_remakes_it(tmp_path, damage):
    import pickle

    path = tmp_path / "model.pt"
    io.save_torch({"theta": torch.zeros(100)}, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "garbage":
        path.write_bytes(b"garbage" * 10)
    else:
        path.write_bytes(pickle.dumps({"theta": [0.0]}, protocol=4))
    with pytest.raises(io.CorruptFileError, match=f"--forcerun {path}") as caught:
        io.load_torch(path)
    assert type(caught.value) is io.CorruptFileError  # damaged, not unsafe
    assert "weights_only=False" not in str(caught.value)


def test_everything_the_steps_save_loads_with_weights_only(tmp_path, iris64):
    """data.pt, model.pt, the drift control's θ and a training checkpoint (SGD with momentum and
    Adam optimiser states) hold only plain types: load_torch reads each of them back."""
    from fragility.engine.flat import FlatModel
    from fragility.engine.training import TrainSettings, train_copies
    from fragility.models.registry import init_model
    from fragility.study import pipeline
    from fragility.truths.registry import get

    data = tmp_path / "data.pt"
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, "data", data)
    cfg = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 32, "steps": 20, "check_every": 10}
    pipeline.train(data, "mlp-d1-w5", 0.01, 0, cfg, "float64", "cpu", tmp_path / "model.pt",
                   tmp_path / "metrics.json", log=lambda m: None)
    (tmp_path / "points.json").write_text('{"test_points": [{"name": "max", "index": 0, "loss": 1.0}]}')
    cell = {"model": tmp_path / "model.pt", "data": data, "test_points": tmp_path / "points.json"}
    get("loo").drift(cell, {"steps": 5}, cfg, tmp_path / "drift.parquet", tmp_path / "drift_theta.pt",
                     device_name="cpu", log=lambda m: None)
    for name, keys in [("data.pt", ("x_train", "meta")), ("model.pt", pipeline.MODEL_KEYS),
                       ("drift_theta.pt", ("theta", "removed"))]:
        io.load_torch(tmp_path / name, required_keys=keys)
    x, y = iris64[0], iris64[1]
    net = FlatModel(init_model("mlp-d1-w5", (4,), 3, seed=0, dtype=torch.float64))
    for optimizer in ("sgd", "adam"):
        checkpoint = tmp_path / f"{optimizer}.checkpoint.pt"
        settings = TrainSettings.from_config({**cfg, "optimizer": optimizer, "checkpoint_every": 10})
        train_copies(net, x, y, 0.01, net.flatten()[None], torch.ones(1, len(y), dtype=x.dtype), settings,
                     checkpoint_path=checkpoint, log=lambda m: None)
        state = io.load_torch(checkpoint, required_keys=("step", "thetas", "optimizer", "schedule", "buffers"))
        assert state["step"] == 10


def test_a_split_whose_meta_holds_numpy_numbers_saves_loadably(tmp_path):
    """A loader of one's own may record numpy scalars and arrays in `meta`: they are saved as plain
    numbers and lists, so the split loads with weights_only=True."""
    import numpy as np

    from fragility.data.split import Split

    split = Split(torch.zeros(3, 2), torch.tensor([0, 1, 0]), torch.zeros(1, 2), torch.tensor([1]), np.int64(2),
                  meta={"mean": np.float64(1.5), "rows": np.arange(3), "nested": {"std": (np.float32(2.0),)}})
    split.save(tmp_path / "data.pt")
    again = Split.load(tmp_path / "data.pt")
    assert again.meta == {"mean": 1.5, "rows": [0, 1, 2], "nested": {"std": [2.0]}} and again.n_classes == 2
