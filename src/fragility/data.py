"""Datasets as in-memory tensors: a seeded train/test split plus the metadata to reproduce it.

Every loader returns a `Split`. Image loaders live in `image_data.py` and register themselves in
`LOADERS` under their config name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .io import load_torch, save_torch


@dataclass
class Split:
    """Train and test tensors. Features are float32 here; training casts to the study's dtype."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def save(self, path) -> None:
        save_torch(
            {
                "x_train": self.x_train,
                "y_train": self.y_train,
                "x_test": self.x_test,
                "y_test": self.y_test,
                "n_classes": self.n_classes,
                "meta": self.meta,
            },
            path,
        )

    @classmethod
    def load(cls, path) -> "Split":
        obj = load_torch(path, required_keys=("x_train", "y_train", "x_test", "y_test", "n_classes"))
        return cls(**{k: obj[k] for k in ("x_train", "y_train", "x_test", "y_test", "n_classes")}, meta=obj.get("meta", {}))


LOADERS: dict[str, Callable[..., Split]] = {}


def register_loader(name: str):
    def wrap(fn):
        LOADERS[name] = fn
        return fn

    return wrap


def dataset_loader(dataset_id: str, cfg: dict) -> Callable[..., Split]:
    """The loader of a study's `datasets.<id>` block (its `loader` key, else the id), after
    checking that the block holds only options that loader takes; ValueError naming the key."""
    name = cfg.get("loader", dataset_id)
    if name not in LOADERS:
        try:
            from . import image_data  # noqa: F401  (registers the image loaders)
        except ImportError:
            pass
    if name not in LOADERS:
        raise ValueError(f"datasets.{dataset_id}.loader: unknown dataset loader '{name}'; known: {sorted(LOADERS)}")
    accepted = sorted(set(inspect.signature(LOADERS[name]).parameters) - {"data_dir"})
    unknown = sorted(set(cfg) - set(accepted) - {"loader"})
    if unknown:
        raise ValueError(f"datasets.{dataset_id}: {', '.join(unknown)} is not an option of the '{name}' loader, "
                         f"which takes {', '.join(accepted)}")
    return LOADERS[name]


def load_split(dataset_id: str, cfg: dict, data_dir: str = "data") -> Split:
    """Build the split described by a study's `datasets.<id>` config block."""
    loader = dataset_loader(dataset_id, cfg)
    return loader(data_dir=data_dir, **{k: v for k, v in cfg.items() if k != "loader"})


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class seeded shuffle; round(test_fraction·n_c) of each class goes to the test set."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"dataset.test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """z-score both sets with the mean and standard deviation of the training set only."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x_train - mean) / std, (x_test - mean) / std, {"mean": mean.tolist(), "std": std.tolist()}


@register_loader("iris")
def load_iris(data_dir: str = "data", test_fraction: float = 0.2, split_seed: int = 0, standardize: bool = True) -> Split:
    """Fisher's Iris (150 × 4, 3 classes) from scikit-learn, stratified and seeded split."""
    from sklearn.datasets import load_iris as sklearn_iris

    bunch = sklearn_iris()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(y, test_fraction, split_seed)
    x_train, x_test = x[train_idx], x[test_idx]
    meta = {"source": "sklearn.datasets.load_iris", "split_seed": split_seed, "test_fraction": test_fraction,
            "train_rows": train_idx.tolist(), "test_rows": test_idx.tolist()}
    if standardize:
        x_train, x_test, stats = standardise(x_train, x_test)
        meta["standardisation"] = stats
    return Split(
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y[train_idx]),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y[test_idx]),
        n_classes=3,
        meta=meta,
    )
