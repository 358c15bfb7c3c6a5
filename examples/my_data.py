"""Datasets the project does not ship, from scikit-learn's offline copies. The workflow calls
`loader(data_dir=..., **options)`; it must return a `fragility.data.split.Split` (integer labels
for classification, floating-point targets for regression)."""

import numpy as np
import torch

from fragility.data.split import Split, standardise, stratified_split


def load_breast_cancer(data_dir="data", test_fraction=0.25, split_seed=0, n_points=None):
    """Wisconsin breast cancer (569 × 30, 2 classes), standardised with training statistics; a
    stratified, seeded split. `n_points` keeps a seeded subset of that many points first."""
    from sklearn.datasets import load_breast_cancer as sklearn_cancer

    bunch = sklearn_cancer()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    if n_points is not None:
        keep = np.sort(np.random.default_rng(split_seed).permutation(len(y))[: int(n_points)])
        x, y = x[keep], y[keep]
    train, test = stratified_split(y, test_fraction, split_seed)
    x_train, x_test, stats = standardise(x[train], x[test])
    return Split(torch.tensor(x_train, dtype=torch.float32), torch.tensor(y[train]),
                 torch.tensor(x_test, dtype=torch.float32), torch.tensor(y[test]), n_classes=2,
                 meta={"source": "sklearn.datasets.load_breast_cancer", "split_seed": split_seed,
                       "standardisation": stats})


def load_diabetes(data_dir="data", test_fraction=0.2, split_seed=0):
    """Diabetes progression (442 × 10), a regression target; features and target standardised
    with training statistics (so a constant prediction has loss ½ and R² 0)."""
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    bunch = sklearn_diabetes()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.float64)
    order = np.random.default_rng(split_seed).permutation(len(y))
    k = int(round(test_fraction * len(y)))
    test, train = np.sort(order[:k]), np.sort(order[k:])
    x_train, x_test, stats = standardise(x[train], x[test])
    mean, std = y[train].mean(), y[train].std()
    return Split(torch.tensor(x_train, dtype=torch.float32), torch.tensor((y[train] - mean) / std, dtype=torch.float32),
                 torch.tensor(x_test, dtype=torch.float32), torch.tensor((y[test] - mean) / std, dtype=torch.float32),
                 n_classes=1, meta={"source": "sklearn.datasets.load_diabetes", "split_seed": split_seed,
                                    "standardisation": stats, "target_mean": mean, "target_std": std})
