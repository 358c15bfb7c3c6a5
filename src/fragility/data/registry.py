"""Dataset loaders by config name.

A study's `datasets.<id>` block names its loader with `loader:` (default: the id). A loader is
either a shipped one, by name (`LOADERS`), or a user's own, by import path:

    datasets:
      mydata:
        loader: "examples/my_data.py:load"      # or "mypackage.data:load"
        n_points: 400                           # every other key is passed to the loader

A loader is called as `loader(data_dir=..., **options)` and must return a `Split`
(`data/split.py`). Options are checked against its signature when the DAG is built, read from
the source without importing it (`plugins.parameters`), so this module imports no torch.
"""

from __future__ import annotations

from .. import plugins

LOADERS = {
    "iris": "fragility.data.tabular:load_iris",
    "mnist_offline": "fragility.data.images:load_mnist_offline",
    "mnist": "fragility.data.images:load_mnist",
    "cifar10": "fragility.data.images:load_cifar10",
    "cifar100": "fragility.data.images:load_cifar100",
    "imagenet": "fragility.data.imagenet:load_imagenet",
}


def loader_spec(dataset_id: str, cfg: dict) -> str:
    """The import path of the loader of `datasets.<dataset_id>` (a shipped name or a path)."""
    name = cfg.get("loader", dataset_id)
    if name in LOADERS:
        return LOADERS[name]
    if ":" not in str(name):
        raise ValueError(f"datasets.{dataset_id}.loader: unknown dataset loader '{name}'; known: {sorted(LOADERS)}, "
                         "or a loader of your own written 'path/to/file.py:function' or 'package.module:function'")
    return name


def dataset_options(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "loader"}


def dataset_loader(dataset_id: str, cfg: dict) -> str:
    """Check the block `datasets.<dataset_id>` (loader found, options it takes); return the
    loader's import path. ValueError naming the key."""
    spec = loader_spec(dataset_id, cfg)
    name = cfg.get("loader", dataset_id)
    plugins.check_options(spec, f"datasets.{dataset_id}.loader", dataset_options(cfg), supplied=("data_dir",),
                          options_key=f"datasets.{dataset_id}",
                          label=f"the '{name}' loader" if name in LOADERS else f"the loader '{spec}'")
    return spec


def load_split(dataset_id: str, cfg: dict, data_dir: str = "data"):
    """Build the split described by a study's `datasets.<id>` config block, and check its shapes."""
    from .split import Split

    key = f"datasets.{dataset_id}.loader"
    spec = dataset_loader(dataset_id, cfg)
    split = plugins.call(spec, key, data_dir=data_dir, **dataset_options(cfg))
    if not isinstance(split, Split):
        raise plugins.PluginError(f"{key}: '{spec}' returned {type(split).__name__}, not a fragility.data.split.Split")
    try:
        split.check()
    except ValueError as err:
        raise plugins.PluginError(f"{key}: '{spec}' returned a bad split: {err}") from None
    return split


# Rows per class of the shipped loaders that split a labelled set themselves (stratified_split),
# and the fixed train/test sizes of the torchvision ones: enough to know a split's sizes from its
# options alone, without loading anything.
_STRATIFIED = {"iris": (3, 50, 0.2), "mnist_offline": (10, 500, 0.2)}  # classes, rows per class, default test_fraction
_FIXED = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar100": (50000, 10000)}


def expected_sizes(dataset_id: str, cfg: dict) -> tuple[int, int] | None:
    """(n_train, n_test) that the loader of `datasets.<dataset_id>` will return, computed from its
    options as the loader computes them (stratified_split's round(test_fraction · n_c) test rows
    per class; training_subset's max(1, round(f · n)) or subset_size rows); None for a loader of
    one's own, whose sizes are known only once `prepare_data` has run."""
    name = cfg.get("loader", dataset_id)
    if name in _STRATIFIED:
        classes, per_class, default_fraction = _STRATIFIED[name]
        k = int(round(float(cfg.get("test_fraction", default_fraction)) * per_class))
        n_train, n_test = classes * (per_class - k), classes * k
    elif name in _FIXED:
        n_train, n_test = _FIXED[name]
    else:
        return None
    if name != "iris":  # the image loaders train on an optional subset
        if cfg.get("subset_fraction") is not None:
            n_train = max(1, int(round(float(cfg["subset_fraction"]) * n_train)))
        elif cfg.get("subset_size") is not None:
            if int(cfg["subset_size"]) > n_train:
                raise ValueError(f"datasets.{dataset_id}.subset_size: {cfg['subset_size']} is more than the "
                                 f"{n_train} training points of '{name}'")
            n_train = int(cfg["subset_size"])
    return n_train, n_test
