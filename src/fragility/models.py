"""Architecture registry. A name in the config maps to a constructor.

Names are either registered exactly (`smallcnn`, `lenet`, ...; see `image_models.py`) or are a
pattern: `mlp-d{depth}-w{width}` is a feed-forward ReLU network with `depth` hidden layers of
`width` units (`mlp-d0-w0` is multinomial logistic regression, a convex model).
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}
MLP_NAME = re.compile(r"^mlp-d(\d+)-w(\d+)$")


def register(name: str):
    def wrap(fn):
        ARCHITECTURES[name] = fn
        return fn

    return wrap


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


def known_architecture(name: str) -> bool:
    if MLP_NAME.match(name):
        return True
    _load_image_models()
    return name in ARCHITECTURES


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Instantiate architecture `name` for inputs of `input_shape` (no batch dimension)."""
    match = MLP_NAME.match(name)
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        if depth > 0 and width == 0:
            raise ValueError(f"architecture '{name}': width must be positive when depth > 0")
        n_in = 1
        for s in input_shape:
            n_in *= s
        return MLP(n_in, n_classes, depth, width)
    _load_image_models()
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture '{name}'; known: mlp-d<depth>-w<width> and {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name](input_shape=input_shape, n_classes=n_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_image_models() -> None:
    try:
        from . import image_models  # noqa: F401  (registers the image architectures)
    except ImportError:
        pass


def init_model(name: str, input_shape, n_classes: int, seed: int, dtype=torch.float32) -> nn.Module:
    """Build with a seeded initialisation (the same seed gives the same θ₀)."""
    torch.manual_seed(seed)
    return build_model(name, input_shape, n_classes).to(dtype)
