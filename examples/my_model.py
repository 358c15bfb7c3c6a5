"""A model the project does not ship: a feed-forward net with tanh units and hidden layers of any
widths. The workflow calls `build(input_shape=..., n_classes=..., **options)`; `options` come
from the config's `models.<name>.options` and are checked against this signature when the DAG
is built."""

from torch import nn


def build(input_shape, n_classes, hidden=(16,), activation="tanh"):
    """x ↦ W_L σ(… σ(W_1 x + b_1) …) + b_L on flattened inputs, σ = tanh or relu."""
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation must be tanh or relu, got {activation!r}")
    layers, width = [nn.Flatten()], 1
    for size in input_shape:
        width *= size
    for units in hidden:
        layers += [nn.Linear(width, units), nn.Tanh() if activation == "tanh" else nn.ReLU()]
        width = units
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)
