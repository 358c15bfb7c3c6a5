"""Did the model train? Deep narrow ReLU networks under decay can collapse to a constant.

The flags come from the Task (`task.py`): for classification `constant_outputs` (the logits
barely vary across training inputs) and `chance_accuracy` (no better than the majority class);
for regression `constant_outputs` and `no_better_than_mean`. Flags travel with every correlation
of the cell, so no table shows such a cell as a plain number.
"""

from __future__ import annotations

import torch


def evaluate(net, theta, x, y, chunk: int = 2048) -> dict:
    """The Task's evaluation of the model's outputs on (x, y), computed in chunks of rows, plus the
    per-row `measurements` (what a test point's Δ is a change of)."""
    with torch.no_grad():
        outputs = torch.cat([net.logits(theta, x[i : i + chunk]) for i in range(0, len(y), chunk)])
    return {**net.task.evaluate(outputs, y), "measurements": net.task.measurement(outputs, y)}


def training_flags(net, train_eval: dict, y_train: torch.Tensor, n_outputs: int) -> list[str]:
    return net.task.training_flags(train_eval, y_train, n_outputs)
