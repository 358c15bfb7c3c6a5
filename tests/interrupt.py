"""Stop a training run at a given step, as a kill between two checkpoints would."""

import contextlib

import pytest

from fragility.engine import training


class Interrupted(Exception):
    """Raised inside the training loop by `interrupted_at`."""


@contextlib.contextmanager
def interrupted_at(monkeypatch, step: int):
    """Within the block, a training run raises Interrupted on reaching `step` (its checkpoints before
    that step are written); the block must end with it."""
    real = training.batch_rows

    def batch_rows(at, *args):
        if at == step:
            raise Interrupted
        return real(at, *args)

    monkeypatch.setattr(training, "batch_rows", batch_rows)
    try:
        with pytest.raises(Interrupted):
            yield
    finally:
        monkeypatch.setattr(training, "batch_rows", real)
