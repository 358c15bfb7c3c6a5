import pytest
import torch

from fragility.data.registry import load_split


@pytest.fixture(scope="session")
def iris64():
    """Iris as float64 tensors (x_train, y_train, x_test, y_test)."""
    split = load_split("iris", {"test_fraction": 0.2, "split_seed": 0})
    return (split.x_train.double(), split.y_train, split.x_test.double(), split.y_test)


@pytest.fixture(autouse=True)
def _single_thread():
    """Every test on one thread: deterministic sums, and fair on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_iris_cell(root, test_points) -> dict:
    """A width-3 MLP trained on Iris (float64, decay 0.01, 150 GD steps) in `root`, with its
    `test_points` picked: the paths of data.pt, model.pt, metrics.json and tp.json."""
    from fragility.study import pipeline

    paths = {name: str(root / name) for name in ("data.pt", "model.pt", "metrics.json", "tp.json")}
    pipeline.prepare_data("iris", {"test_fraction": 0.2, "split_seed": 0}, "data", paths["data.pt"])
    pipeline.train(paths["data.pt"], "mlp-d1-w3", 0.01, 0, {"optimizer": "gd", "lr": 0.1, "steps": 150}, "float64",
                   "cpu", paths["model.pt"], paths["metrics.json"], log=lambda m: None)
    pipeline.pick_test_points(paths["model.pt"], paths["data.pt"], list(test_points), paths["tp.json"], "cpu")
    return paths
