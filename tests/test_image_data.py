"""Image loaders: torchvision's MNIST / CIFAR readers on tiny files written in torchvision's exact
on-disk format (idx ubyte files; pickled batches), the offline MNIST source, training subsets,
normalisation, and the download rules' place in the workflow (dry runs, no data needed)."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fragility.data import files as image_files
from fragility.data import images as image_data
from fragility.data.registry import expected_sizes, load_split

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- format writers
def write_idx_images(path: Path, images: np.ndarray) -> None:
    """MNIST idx3-ubyte: magic 0x00000803, count, rows, cols (big-endian int32), then uint8 pixels."""
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">iiii", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """MNIST idx1-ubyte: magic 0x00000801, count, then uint8 labels."""
    path.write_bytes(struct.pack(">ii", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {
        "train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
        "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)),
    }
    for prefix, (images, labels) in data.items():
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return data


def fake_cifar(root: Path, monkeypatch, name: str = "cifar10", per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict:
    """Pickled batches as torchvision expects them ([n, 3072] uint8 rows, channel-major), and the
    class's md5 lists pointed at these files so its integrity check passes on them."""
    import torchvision

    rng = np.random.default_rng(seed)
    cls = getattr(torchvision.datasets, image_files.TORCHVISION[name]["class"])
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    n_classes, label_key, names_key = (10, "labels", "label_names") if name == "cifar10" else (100, "fine_labels", "fine_label_names")

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3 * 32 * 32)).astype(np.uint8), label_key: rng.integers(0, n_classes, n).tolist()}

    def dump(obj, filename):
        path = folder / filename
        path.write_bytes(pickle.dumps(obj))
        return [filename, hashlib.md5(path.read_bytes()).hexdigest()]

    train_batches = {f: batch(per_batch) for f, _ in cls.train_list}
    test_batches = {f: batch(n_test) for f, _ in cls.test_list}
    monkeypatch.setattr(cls, "train_list", [dump(b, f) for f, b in train_batches.items()])
    monkeypatch.setattr(cls, "test_list", [dump(b, f) for f, b in test_batches.items()])
    meta = dump({names_key: [f"class{i}" for i in range(n_classes)]}, cls.meta["filename"])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta[1]})
    x_train = np.concatenate([b["data"] for b in train_batches.values()])
    y_train = np.concatenate([b[label_key] for b in train_batches.values()])
    test = next(iter(test_batches.values()))
    return {"x_train": x_train, "y_train": y_train, "x_test": test["data"], "y_test": np.asarray(test[label_key]), "n_classes": n_classes}


# --------------------------------------------------------------------------- torchvision MNIST
def test_mnist_loader_reads_idx_files(tmp_path):
    data = fake_mnist(tmp_path)
    split = load_split("mnist", {"normalize": False}, data_dir=str(tmp_path))
    images, labels = data["train"]
    assert split.x_train.shape == (12, 1, 28, 28) and split.x_test.shape == (5, 1, 28, 28)
    assert split.n_classes == 10 and split.x_train.dtype == torch.float32
    np.testing.assert_allclose(split.x_train[:, 0].numpy(), images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(split.y_train.numpy(), labels)
    np.testing.assert_allclose(split.x_test[:, 0].numpy(), data["t10k"][0] / 255.0, rtol=1e-6)


def test_mnist_subset_is_seeded_and_recorded(tmp_path):
    data = fake_mnist(tmp_path)
    cfg = {"subset_size": 5, "subset_seed": 3, "normalize": False}
    a = load_split("mnist", cfg, data_dir=str(tmp_path))
    b = load_split("mnist", cfg, data_dir=str(tmp_path))
    c = load_split("mnist", {**cfg, "subset_seed": 4}, data_dir=str(tmp_path))
    rows = a.meta["train_rows"]
    assert len(rows) == 5 == len(set(rows)) and rows == b.meta["train_rows"] and rows != c.meta["train_rows"]
    np.testing.assert_array_equal(a.y_train.numpy(), data["train"][1][rows])
    np.testing.assert_allclose(a.x_train[:, 0].numpy(), data["train"][0][rows] / 255.0, rtol=1e-6)
    assert len(a.y_test) == 5  # the test set is never subset
    half = load_split("mnist", {"subset_fraction": 0.5}, data_dir=str(tmp_path))
    assert len(half.y_train) == 6


def test_normalisation_uses_training_statistics(tmp_path):
    fake_mnist(tmp_path)
    raw = load_split("mnist", {"normalize": False}, data_dir=str(tmp_path))
    norm = load_split("mnist", {"normalize": True}, data_dir=str(tmp_path))
    mean, std = raw.x_train.mean(), raw.x_train.std()
    assert abs(float(norm.x_train.mean())) < 1e-5 and abs(float(norm.x_train.std()) - 1) < 1e-3
    torch.testing.assert_close(norm.x_test, (raw.x_test - mean) / std, rtol=1e-4, atol=1e-4)
    assert norm.meta["normalisation"]["mean"] == pytest.approx([float(mean)], rel=1e-5)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(image_files.DatasetMissingError, match="download_mnist") as err:
        load_split("mnist", {}, data_dir=str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value) and "never download" in str(err.value)
    with pytest.raises(image_files.DatasetMissingError, match="download_cifar10"):
        load_split("cifar10", {"download": True}, data_dir=str(tmp_path))  # `download` never fetches here


# --------------------------------------------------------------------------- torchvision CIFAR
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_pickled_batches(tmp_path, monkeypatch, name):
    data = fake_cifar(tmp_path, monkeypatch, name)
    split = load_split(name, {"normalize": False}, data_dir=str(tmp_path))
    n_train = {"cifar10": 5 * 3, "cifar100": 3}[name]  # five training batches vs one file
    assert split.x_train.shape == (n_train, 3, 32, 32) and split.x_test.shape == (4, 3, 32, 32)
    assert split.n_classes == data["n_classes"]
    # a row is 1024 red, then green, then blue values, each row-major over 32 × 32 pixels
    expected = data["x_train"].reshape(-1, 3, 32, 32) / 255.0
    np.testing.assert_allclose(split.x_train.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(split.y_train.numpy(), data["y_train"])
    np.testing.assert_array_equal(split.y_test.numpy(), data["y_test"])


def test_cifar_normalisation_is_per_channel(tmp_path, monkeypatch):
    fake_cifar(tmp_path, monkeypatch)
    split = load_split("cifar10", {"subset_size": 10, "subset_seed": 1}, data_dir=str(tmp_path))
    assert len(split.meta["normalisation"]["mean"]) == 3
    torch.testing.assert_close(split.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(split.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_download_files_match_torchvision_layout(tmp_path, monkeypatch):
    """The files the download rule checks are the ones torchvision's own classes name."""
    import torchvision

    fake_mnist(tmp_path)
    fake_cifar(tmp_path, monkeypatch)
    for name in ("mnist", "cifar10"):
        files = image_files.download_files(name, str(tmp_path))
        assert files and all(Path(f).exists() for f in files)
    mnist = image_files.download_files("mnist", str(tmp_path))
    assert {Path(f).name for f in mnist} == {name.removesuffix(".gz") for name, _ in torchvision.datasets.MNIST.resources}
    assert {str(Path(f).parent) for f in mnist} == {str(tmp_path / "MNIST" / "raw")}
    cifar = {Path(f).relative_to(tmp_path) for f in image_files.download_files("cifar10", str(tmp_path))}
    expected = {Path(torchvision.datasets.CIFAR10.base_folder) / name for name, _ in
                torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list}
    assert expected <= cifar  # plus batches.meta


# --------------------------------------------------------------------------- offline MNIST
@pytest.fixture(scope="module")
def offline():
    return load_split("mnist_offline", {"test_fraction": 0.2, "split_seed": 0})


def test_offline_mnist_is_split_here_and_shuffled(offline):
    assert offline.x_train.shape == (4000, 1, 28, 28) and offline.x_test.shape == (1000, 1, 28, 28)
    train_rows, test_rows = offline.meta["train_rows"], offline.meta["test_rows"]
    assert not set(train_rows) & set(test_rows) and len(set(train_rows) | set(test_rows)) == 5000
    assert np.bincount(offline.y_test.numpy(), minlength=10).tolist() == [100] * 10  # stratified
    # the source is sorted by class; the split is not
    assert (np.diff(offline.y_train[:200].numpy()) != 0).sum() > 100
    assert "test set split off here" in offline.meta["source"]


def test_offline_mnist_is_seeded_and_subsets(offline):
    small = load_split("mnist_offline", {"test_fraction": 0.2, "split_seed": 0, "subset_size": 300, "subset_seed": 2})
    assert small.meta["test_rows"] == offline.meta["test_rows"]  # same seed, same split, whatever the subset
    assert len(small.y_train) == 300 and set(small.meta["train_rows"]) <= set(offline.meta["train_rows"])
    # the sizes the DAG build checks test points and selection rules against, known without loading
    assert expected_sizes("mnist_offline", {"test_fraction": 0.2}) == (4000, 1000) == (len(offline.y_train), len(offline.y_test))
    assert expected_sizes("mnist_offline", {"subset_size": 300}) == (300, len(small.y_test))
    other = load_split("mnist_offline", {"test_fraction": 0.2, "split_seed": 1})
    assert other.meta["test_rows"] != offline.meta["test_rows"]


def test_training_subset_rules():
    assert len(image_data.training_subset(100, 0.1, None, 0)) == 10
    np.testing.assert_array_equal(image_data.training_subset(7, None, None, 0), np.arange(7))
    with pytest.raises(ValueError, match="not both"):
        image_data.training_subset(100, 0.1, 10, 0)
    with pytest.raises(ValueError, match="subset_size"):
        image_data.training_subset(100, None, 101, 0)
    with pytest.raises(ValueError, match="subset_fraction"):
        image_data.training_subset(100, 1.5, None, 0)


# --------------------------------------------------------------------------- the workflow's download rules
def _dry_run(tmp_path, *args) -> str:
    work = tmp_path / "wf"
    work.mkdir(parents=True)
    for name in ["Snakefile", "config.yaml", "configs", "workflow", "profiles", "envs", "src"]:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, work / name)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    out = subprocess.run([snakemake, "-n", "--cores", "1", *args], cwd=work, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.mark.slow
def test_table1_dag_downloads_first_and_default_run_never_downloads(tmp_path):
    plan = _dry_run(tmp_path, "table1")
    assert "rule download_mnist:" in plan and "rule download_cifar10:" in plan
    assert "input: data/MNIST/raw/train-images-idx3-ubyte" in plan  # prepare_data waits for the download
    for rule in ("train", "influence", "loo_drift", "aggregate", "table1_tables"):
        assert f"rule {rule}:" in plan
    default = _dry_run(tmp_path / "default")
    assert "download_" not in default
