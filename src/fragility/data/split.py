"""The project's dataset type: a seeded train/test split held as in-memory tensors, with the metadata
to reproduce it, plus the splitting and standardising helpers the loaders share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..io import load_torch, plain, save_torch


@dataclass
class Split:
    """Train and test tensors. Floating-point features (float32 from the shipped loaders) are cast
    to the study's dtype by the jobs (`model_inputs`); integer features (token ids, indices into an
    `nn.Embedding`) stay integers. `n_classes` is the number of model outputs: classes, or regression targets per row."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_regression(self) -> bool:
        """Floating-point targets are regression targets ([n] or [n, d]; `n_classes` is then d,
        the number of model outputs); integer targets are class labels in [0, n_classes)."""
        return self.y_train.is_floating_point()

    def check(self) -> None:
        """ValueError unless the split is usable: non-empty parts, matching lengths and input
        shapes, finite features, labels in range (or targets with n_classes columns)."""
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise ValueError(f"x_{part} and y_{part} must be torch tensors")
            if len(y) == 0:
                raise ValueError(f"the {part} set is empty")
            if x.dim() < 2 or len(x) != len(y):
                raise ValueError(f"x_{part} must be [n, ...] with one row per entry of y_{part}; got shapes "
                                 f"{tuple(x.shape)} and {tuple(y.shape)}")
            if not torch.isfinite(x.float()).all():
                raise ValueError(f"x_{part} has non-finite values")
            if self.is_regression != y.is_floating_point():
                raise ValueError("y_train and y_test must both be labels (integers) or both targets (floats)")
            if self.is_regression:
                width = 1 if y.dim() == 1 else y.shape[1]
                if y.dim() > 2 or width != self.n_classes:
                    raise ValueError(f"regression targets y_{part} of shape {tuple(y.shape)} need n_classes = {width} "
                                     f"(the number of outputs), got {self.n_classes}")
            elif y.dim() != 1 or int(y.min()) < 0 or int(y.max()) >= self.n_classes:
                raise ValueError(f"labels y_{part} must be a vector of integers in [0, n_classes = {self.n_classes})")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"train inputs {tuple(self.x_train.shape[1:])} and test inputs "
                             f"{tuple(self.x_test.shape[1:])} differ in shape")

    def save(self, path) -> None:
        save_torch(
            {
                "x_train": self.x_train,
                "y_train": self.y_train,
                "x_test": self.x_test,
                "y_test": self.y_test,
                "n_classes": int(self.n_classes),
                "meta": plain(self.meta),  # a loader of one's own may put numpy numbers there
            },
            path,
        )

    @classmethod
    def load(cls, path) -> "Split":
        obj = load_torch(path, required_keys=("x_train", "y_train", "x_test", "y_test", "n_classes"))
        return cls(**{k: obj[k] for k in ("x_train", "y_train", "x_test", "y_test", "n_classes")}, meta=obj.get("meta", {}))


def model_inputs(x: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    """The inputs as the model receives them: floating-point features cast to the study's `dtype`,
    integer (and boolean) ones, such as token ids, moved to `device` as they are."""
    if x.is_floating_point() or x.is_complex():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


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
