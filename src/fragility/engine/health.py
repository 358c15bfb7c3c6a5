"""Did the model train? Deep narrow ReLU networks under decay can collapse to a constant.

A model is flagged
- `constant_outputs` when its logits barely vary across training inputs
  (max over classes of the std across inputs < `tol`), and
- `chance_accuracy` when its training accuracy is no better than always predicting the most
  frequent class (+ `margin`).
Flags travel with every correlation of the cell, so no table shows such a cell as a plain number.
"""

from __future__ import annotations

import torch


def evaluate(net, theta, x, y, chunk: int = 2048) -> dict:
    with torch.no_grad():
        logits = torch.cat([net.logits(theta, x[i : i + chunk]) for i in range(0, len(y), chunk)])
    losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return {
        "loss": float(losses.mean()),
        "accuracy": float((logits.argmax(1) == y).double().mean()),
        "losses": losses,
        "logit_spread": float(logits.std(dim=0).max()) if len(y) > 1 else 0.0,
    }


def training_flags(train_eval: dict, y_train: torch.Tensor, n_classes: int, tol: float = 1e-4, margin: float = 0.02) -> list[str]:
    flags = []
    if train_eval["logit_spread"] < tol:
        flags.append("constant_outputs")
    majority = float(torch.bincount(y_train, minlength=n_classes).max()) / len(y_train)
    if train_eval["accuracy"] <= majority + margin:
        flags.append("chance_accuracy")
    return flags
