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
