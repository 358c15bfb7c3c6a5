"""Feed-forward ReLU networks: the Iris study's models (`mlp-d{depth}-w{width}`)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    """x ↦ W_{L+1} relu(W_L … relu(W_1 x + b_1) …) + b_{L+1}; depth 0 is a linear model."""

    def __init__(self, in_features: int, n_classes: int, depth: int, width: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        last = in_features
        for _ in range(depth):
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

    def as_sequential(self) -> nn.Sequential:
        """The chain `forward` runs (FlatModel evaluates it without functional_call)."""
        return self.net


def mlp(input_shape, n_classes: int, depth: int, width: int) -> nn.Module:
    """`depth` hidden ReLU layers of `width` units on flattened inputs; depth 0 is a linear model
    (multinomial logistic regression under cross-entropy, least squares under MSE)."""
    if depth > 0 and width <= 0:
        raise ValueError(f"architecture 'mlp-d{depth}-w{width}': width must be positive when depth > 0")
    n_in = 1
    for s in input_shape:
        n_in *= s
    return MLP(n_in, n_classes, depth, width)
