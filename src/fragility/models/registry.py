"""Architectures by config name.

A name in a study's `architectures` list is one of
- `mlp-d{depth}-w{width}`: a feed-forward ReLU net with `depth` hidden layers of `width` units
  (`mlp-d0-w0` is a linear model: logistic regression or least squares, a convex model);
- a shipped image architecture (`ARCHITECTURES`: smallcnn, lenet, vgg13, vgg14, resnet18, resnet50,
  resnet50-imagenet for 224-px inputs);
- a key of the config's top-level `models` block, which names a factory of your own:

      models:
        mynet:
          factory: "examples/my_model.py:build"    # or "mypackage.models:build"
          options: {hidden: 32}                    # passed to the factory

A factory is called as `factory(input_shape=(C, ...), n_classes=k, **options)` (k = the number
of outputs) and returns an `nn.Module`. Shipped architectures are named by the same import paths,
so both go through `plugins`. This module imports torch only when a model is built.
"""

from __future__ import annotations

import re

from .. import plugins

MLP_NAME = re.compile(r"^mlp-d(\d+)-w(\d+)$")
ARCHITECTURES = {name: f"fragility.models.images:{name.replace('-', '_')}" for name in
                 ("smallcnn", "lenet", "vgg13", "vgg14", "resnet18", "resnet50", "resnet50-imagenet")}
MLP_FACTORY = "fragility.models.mlp:mlp"
FACTORY_ARGUMENTS = ("input_shape", "n_classes")


def model_spec(name: str, models_cfg: dict | None = None) -> tuple[str, dict, str]:
    """(factory import path, options, config key) for architecture `name`; ValueError if unknown."""
    models_cfg = models_cfg or {}
    if name in models_cfg:
        entry = models_cfg[name]
        return entry["factory"], dict(entry.get("options", {})), f"models.{name}.factory"
    match = MLP_NAME.match(name)
    if match:
        return MLP_FACTORY, {"depth": int(match.group(1)), "width": int(match.group(2))}, "architectures"
    if name in ARCHITECTURES:
        return ARCHITECTURES[name], {}, "architectures"
    raise ValueError(f"unknown architecture '{name}'; known: mlp-d<depth>-w<width>, {sorted(ARCHITECTURES)}, "
                     f"or a key of the top-level `models` block ({sorted(models_cfg) or 'none defined'})")


def known_architecture(name: str, models_cfg: dict | None = None) -> bool:
    try:
        model_spec(name, models_cfg)
    except ValueError:
        return False
    return True


def check_architecture(name: str, models_cfg: dict | None = None) -> None:
    """At DAG build: the architecture exists and its factory takes its options (torch-free)."""
    spec, options, key = model_spec(name, models_cfg)
    match = MLP_NAME.match(name)
    if match and int(match.group(1)) > 0 and int(match.group(2)) == 0:
        raise ValueError(f"architecture '{name}': width must be positive when depth > 0")
    plugins.check_options(spec, key, options, supplied=FACTORY_ARGUMENTS,
                          options_key=f"models.{name}.options" if key.startswith("models.") else key)


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, models_cfg: dict | None = None):
    """Instantiate architecture `name` for inputs of `input_shape` (no batch dimension)."""
    spec, options, key = model_spec(name, models_cfg)
    return build_from_spec(spec, options, key, input_shape, n_classes)


def build_from_spec(spec: str, options: dict, key: str, input_shape, n_classes: int):
    from torch import nn

    model = plugins.call(spec, key, input_shape=tuple(input_shape), n_classes=int(n_classes), **options)
    if not isinstance(model, nn.Module):
        raise plugins.PluginError(f"{key}: '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise plugins.PluginError(f"{key}: the model '{spec}' returned has no parameters")
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def init_model(name: str, input_shape, n_classes: int, seed: int, dtype=None, models_cfg: dict | None = None):
    """Build with a seeded initialisation (the same seed gives the same θ₀)."""
    spec, options, key = model_spec(name, models_cfg)
    return init_from_spec(spec, options, key, input_shape, n_classes, seed, dtype)


def init_from_spec(spec: str, options: dict, key: str, input_shape, n_classes: int, seed: int, dtype=None):
    import torch

    torch.manual_seed(seed)
    return build_from_spec(spec, options, key, input_shape, n_classes).to(dtype or torch.float32)
