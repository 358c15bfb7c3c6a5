"""Small tabular datasets that ship offline with scikit-learn."""

from __future__ import annotations

import numpy as np
import torch

from .split import Split, standardise, stratified_split


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
