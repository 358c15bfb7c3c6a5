"""Which files on disk each torchvision dataset is, and fetching them: the part of the image data
that the workflow needs when it builds the DAG (download rules, `prepare_data` inputs), so it
imports neither torch nor torchvision at module level."""

from __future__ import annotations

import os

# torchvision dataset name, its folder under data_dir, and the files its loader reads
TORCHVISION = {
    "mnist": {
        "class": "MNIST",
        "folder": "MNIST/raw",
        "files": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    },
    "cifar10": {
        "class": "CIFAR10",
        "folder": "cifar-10-batches-py",
        "files": [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"],
    },
    "cifar100": {
        "class": "CIFAR100",
        "folder": "cifar-100-python",
        "files": ["train", "test", "meta"],
    },
}

# which dataset of the paper a loader's data are (tables compare like with like)
DATASET_FAMILY = {"mnist_offline": "mnist", "mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100"}


class DatasetMissingError(FileNotFoundError):
    """The files of a torchvision dataset are not in `data_dir`."""


def download_files(name: str, data_dir: str) -> list[str]:
    """The files under `data_dir` that torchvision's loader for dataset `name` reads."""
    if name not in TORCHVISION:
        raise ValueError(f"'{name}' is not a torchvision dataset; known: {sorted(TORCHVISION)}")
    spec = TORCHVISION[name]
    return [os.path.join(data_dir, spec["folder"], f) for f in spec["files"]]


def download(name: str, data_dir: str) -> list[str]:
    """Fetch dataset `name` into `data_dir` with torchvision (needs internet); returns its files."""
    import torchvision

    cls = getattr(torchvision.datasets, TORCHVISION[name]["class"])
    for train in (True, False):
        cls(root=data_dir, train=train, download=True)
    return download_files(name, data_dir)


def required_files(dataset_id: str, dataset_cfg: dict, data_dir: str) -> list[str]:
    """The torchvision files a config's dataset block needs ([] for sources that ship offline)."""
    loader = dataset_cfg.get("loader", dataset_id)
    return download_files(loader, data_dir) if loader in TORCHVISION else []


def check_download_allowed(studies: dict, name: str, data_dir: str) -> None:
    """Refuse to fetch torchvision dataset `name` when a dataset using it sets `download: false`."""
    for study, block in studies.items():
        for key, cfg in block["datasets"].items():
            if cfg.get("loader", key) == name and cfg.get("download", True) is False:
                raise RuntimeError(f"studies.{study}.datasets.{key}.download is false: copy torchvision's files "
                                   f"{download_files(name, data_dir)} into place instead of downloading")


def _require_files(name: str, data_dir: str) -> None:
    missing = [f for f in download_files(name, data_dir) if not os.path.exists(f)]
    if missing:
        raise DatasetMissingError(
            f"dataset '{name}': {len(missing)} file(s) missing under data_dir '{data_dir}' (first: {missing[0]}). "
            f"Compute jobs never download. Get the data with `snakemake --cores 1 download_{name}` on a machine "
            f"with internet access, or copy torchvision's '{TORCHVISION[name]['folder'].split('/')[0]}' folder into "
            f"'{data_dir}' (the top-level `data_dir` config key)."
        )
