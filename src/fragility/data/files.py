"""Which files on disk each torchvision dataset is, and fetching them: the part of the image data
that the workflow needs when it builds the DAG (download rules, `prepare_data` inputs), so it
imports neither torch nor torchvision at module level."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def fetch(studies: dict, name: str, data_dir: str) -> list[str]:
    """`download` after `check_download_allowed`: what the download rules run."""
    check_download_allowed(studies, name, data_dir)
    return download(name, data_dir)


# ImageNet: the folders a cluster already has (never downloaded); fragility.data.imagenet decodes them
EXTENSIONS = (".jpeg", ".jpg", ".png")


def imagenet_root(data_dir: str, root: str | None) -> Path:
    return Path(root) if root else Path(data_dir) / "imagenet"


class ImageNetFilesMissing(FileNotFoundError):
    """The ImageNet folders are not where the config says; the message says where they must be."""


def missing_imagenet(root: Path, what: str) -> FileNotFoundError:
    return ImageNetFilesMissing(
        f"ImageNet: {what}. The files must be at {root.resolve()}/train/<wnid>/*.JPEG and "
        f"{root.resolve()}/val/<wnid>/*.JPEG (the layout torchvision.datasets.ImageFolder reads; val sorted "
        "into one folder per class). They are never downloaded: copy or link your copy there, or set the "
        "dataset's `root` to the folder that holds train/ and val/.")


def class_folders(root: Path) -> list[str]:
    """The wnids (class folder names) of `root/train`, sorted; FileNotFoundError saying where the files go."""
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise missing_imagenet(root, f"no folder {(root / part).resolve()}")
    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not wnids:
        raise missing_imagenet(root, f"{(root / 'train').resolve()} holds no class folders")
    return wnids


def is_imagenet(dataset_id: str, dataset_cfg: dict) -> bool:
    return dataset_cfg.get("loader", dataset_id) == "imagenet"


def check_imagenet_folders(dataset_cfg: dict, data_dir: str, out_path: str | None = None) -> dict:
    """Check the ImageNet layout a dataset block points at, without decoding anything: train/ and
    val/ exist, and every class folder of train/ has one in val/. Returns (and writes) the counts."""
    root = imagenet_root(data_dir, dataset_cfg.get("root"))
    wnids = class_folders(root)
    classes = dataset_cfg.get("classes")
    wanted = sorted(classes) if isinstance(classes, list) else wnids
    for wnid in wanted:
        for part in ("train", "val"):
            if not (root / part / wnid).is_dir():
                raise missing_imagenet(root, f"class {wnid} has no folder {(root / part / wnid).resolve()}")
    found = {"root": str(root.resolve()), "classes": len(wnids),
             "val_classes": sum(1 for p in (root / "val").iterdir() if p.is_dir())}
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(found, indent=1))
    return found
