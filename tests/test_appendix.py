"""The appendix cells' pieces: the ImageNet loader on tiny JPEG files in the real on-disk layout
(train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) read through the loader registry, and re-training
length in epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fragility.data.registry import load_split
from fragility.study.grid import check_config
from fragility.study.pipeline import retraining_steps

WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_imagenet(root, train=4, val=2, size=(40, 30)):
    """Tiny ImageNet folders of real JPEG files (PIL), each image a distinct smooth random picture
    (colour gradients: resampling them differs little between implementations)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    for part, count in (("train", train), ("val", val)):
        for c, wnid in enumerate(WNIDS):
            folder = root / part / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                a, b, o = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(0.3, 0.7, 3)
                pixels = np.clip(255 * (o + 0.4 * (a * xx[..., None] + b * yy[..., None])), 0, 255).astype(np.uint8)
                name = f"{wnid}_{k}.JPEG" if part == "train" else f"ILSVRC2012_val_{c * 100 + k:08d}.JPEG"
                Image.fromarray(pixels).save(folder / name, quality=95)
    return root


def test_imagenet_loader_reads_the_folder_layout_with_the_224px_transform(tmp_path):
    root = write_imagenet(tmp_path / "data" / "imagenet")
    split = load_split("imagenet", {"image_size": 24, "resize": 32, "normalize": False}, data_dir=str(tmp_path / "data"))
    assert split.x_train.shape == (12, 3, 24, 24) and split.x_test.shape == (6, 3, 24, 24)
    assert split.n_classes == 3
    assert split.y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and split.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    # each row is its file with the usual transform: shorter side to `resize`, centre crop, /255
    path = root / split.meta["train_files"][5]
    with Image.open(path) as image:
        w, h = image.size
        scale = 32 / min(w, h)
        resized = image.convert("RGB").resize((round(w * scale), round(h * scale)), Image.BILINEAR,
                                              reducing_gap=None)
    left, top = (resized.width - 24) // 2, (resized.height - 24) // 2
    reference = torch.from_numpy(np.array(resized.crop((left, top, left + 24, top + 24)))).permute(2, 0, 1)
    assert split.meta["train_files"][5].startswith(f"train/{WNIDS[1]}/")
    diff = (split.x_train[5] * 255 - reference.float()).abs()
    assert diff.mean() < 1.5 and diff.max() <= 6, (diff.mean(), diff.max())  # PIL's own resize, one rounding apart
    assert (split.x_train[5] - split.x_train[4]).abs().mean() > 0.05  # and another file's differs far more
    assert torch.equal(split.x_train[5], split.x_train[5].clamp(0, 1))


def test_imagenet_subset_is_seeded_and_bounded(tmp_path):
    write_imagenet(tmp_path / "in")
    opts = {"root": str(tmp_path / "in"), "classes": 2, "train_per_class": 3, "test_per_class": 1,
            "image_size": 16, "resize": 20, "subset_seed": 5}
    a, b = (load_split("imagenet", opts, data_dir="unused") for _ in range(2))
    assert a.x_train.shape == (6, 3, 16, 16) and a.x_test.shape == (2, 3, 16, 16) and a.n_classes == 2
    assert a.meta["classes"] == b.meta["classes"] and set(a.meta["classes"]) < set(WNIDS)
    assert a.meta["train_files"] == b.meta["train_files"] and torch.equal(a.x_train, b.x_train)
    # standardised with the training images' statistics
    assert torch.allclose(a.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    other = load_split("imagenet", {**opts, "subset_seed": 6}, data_dir="unused")
    assert (other.meta["classes"], other.meta["train_files"]) != (a.meta["classes"], a.meta["train_files"])
    named = load_split("imagenet", {**opts, "classes": [WNIDS[2], WNIDS[0]]}, data_dir="unused")
    assert named.meta["classes"] == [WNIDS[0], WNIDS[2]]
    with pytest.raises(ValueError, match=r"train_per_class for n\d+ is 9, but there are 4"):
        load_split("imagenet", {**opts, "train_per_class": 9}, data_dir="unused")
    with pytest.raises(ValueError, match=r"over max_gb = 1e-05"):
        load_split("imagenet", {**opts, "max_gb": 1e-5}, data_dir="unused")
    with pytest.raises(ValueError, match=r"classes \['n99999999'\] have no folder"):
        load_split("imagenet", {**opts, "classes": ["n99999999"]}, data_dir="unused")


def test_missing_imagenet_says_where_the_files_must_be(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_split("imagenet", {}, data_dir=str(tmp_path / "data"))
    message = str(err.value)
    assert f"{(tmp_path / 'data' / 'imagenet').resolve()}/train/<wnid>/*.JPEG" in message
    assert "val/<wnid>/*.JPEG" in message and "never downloaded" in message
    (tmp_path / "x" / "train" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no folder .*x/val"):
        load_split("imagenet", {"root": str(tmp_path / "x")}, data_dir="unused")


def test_imagenet_options_are_checked_when_the_dag_is_built():
    with pytest.raises(ValueError, match="imagenet"):
        load_split("imagenet", {"train_per_klass": 3}, data_dir="unused")


def test_retraining_length_in_epochs():
    # an epoch of batch_rows is ceil(n / b) minibatches: 1,000 points in batches of 128 → 8 steps
    assert retraining_steps({"epochs": 2}, {"batch_size": 128}, 1000) == 16
    assert retraining_steps({"epochs": 0.5}, {"batch_size": 128}, 1000) == 4
    assert retraining_steps({"epochs": 3}, {"batch_size": None}, 1000) == 3  # full batch: one step per epoch
    assert retraining_steps({"epochs": 1}, {"batch_size": 5000}, 1000) == 1
    assert retraining_steps({"steps": 60}, {"batch_size": 128}, 1000) == 60
    with pytest.raises(ValueError, match="exactly one of loo.steps and loo.epochs"):
        retraining_steps({"steps": 60, "epochs": 2}, {}, 1000)


def test_steps_and_epochs_together_stop_the_config_check():
    import yaml

    from workflow_files import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["studies"]["iris"]["overrides"] = {"mlp-d1-w5": {"loo": {"epochs": 2}}}
    with pytest.raises(ValueError, match=r"studies\.iris\.loo \(architecture mlp-d1-w5\): set exactly one .* both"):
        check_config(config)
