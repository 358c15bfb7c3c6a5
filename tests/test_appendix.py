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
from fragility.truths.retrain import retraining_steps

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
    assert retraining_steps({"steps": None, "epochs": 2}, {"batch_size": 128}, 1000) == 16  # null unsets
    with pytest.raises(ValueError, match="exactly one"):
        retraining_steps({"steps": None}, {}, 1000)


def test_steps_and_epochs_together_stop_the_config_check():
    import yaml

    from workflow_files import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["studies"]["iris"]["overrides"] = {"mlp-d1-w5": {"loo": {"epochs": 2}}}
    with pytest.raises(ValueError, match=r"studies\.iris\.loo \(architecture mlp-d1-w5\): set exactly one .* both"):
        check_config(config)
    config["studies"]["iris"]["overrides"] = {"mlp-d1-w5": {"loo": {"epochs": 2, "steps": None}}}
    check_config(config)  # an override switching to epochs unsets steps with null


# ----------------------------------------------------------------------------- through the workflow
def snakemake(work, *args, timeout=300):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([str(Path(sys.executable).parent / "snakemake"), *args], cwd=work, capture_output=True,
                          text=True, timeout=timeout)


def imagenet_overlay(root) -> str:
    return f"""
studies:
  appendix_imagenet:
    datasets:
      imagenet: {{root: "{root}", classes: 2, train_per_class: 3, test_per_class: 2, image_size: 16, resize: 20}}
    select: {{rules: [{{top_k: 4}}]}}   # of the 6 training images
"""


def test_imagenet_study_prepares_its_data_from_the_jpeg_folders(tmp_path):
    from workflow_files import copy_workflow

    from fragility.data.split import Split

    root = write_imagenet(tmp_path / "imagenet")
    work = copy_workflow(tmp_path / "wf", overlays={"imagenet_test.yaml": imagenet_overlay(root)})
    target = "results/appendix_imagenet/imagenet/data.pt"
    proc = snakemake(work, target, "--cores", "1", "--configfile", "configs/imagenet_test.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    split = Split.load(work / target)
    direct = load_split("imagenet", {"root": str(root), "classes": 2, "train_per_class": 3, "test_per_class": 2,
                                     "image_size": 16, "resize": 20, "subset_seed": 0, "normalize": True},
                        data_dir="unused")
    assert split.x_train.shape == (6, 3, 16, 16) and split.x_test.shape == (4, 3, 16, 16)
    assert torch.equal(split.x_train, direct.x_train) and torch.equal(split.y_test, direct.y_test)
    assert (work / "results/appendix_imagenet/imagenet/imagenet_folders.json").exists()


def test_missing_imagenet_folders_stop_the_run_before_any_job(tmp_path):
    from workflow_files import copy_workflow

    missing = tmp_path / "nowhere"
    work = copy_workflow(tmp_path / "wf", overlays={"imagenet_test.yaml": imagenet_overlay(missing)})
    proc = snakemake(work, "results/appendix_imagenet/imagenet/data.pt", "--cores", "1",
                     "--configfile", "configs/imagenet_test.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error in rule check_imagenet" in out and f"{missing.resolve()}/train/<wnid>/*.JPEG" in out, out[-4000:]
    assert "never downloaded" in out
    assert not (work / "results/logs/appendix_imagenet/imagenet/prepare_data.log").exists()  # nothing else ran


def test_appendix_dry_run_lists_gpu_jobs_with_their_resources(tmp_path):
    import re

    from workflow_files import copy_workflow

    work = copy_workflow(tmp_path / "wf")
    proc = snakemake(work, "-n", "--profile", "slurm", "appendix")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", proc.stdout, re.M)
    by_rule: dict[str, list[str]] = {}
    for rule, body in jobs:
        by_rule.setdefault(rule, []).append(body)
    for rule in ("train", "influence", "loo_drift"):
        studies = {re.search(r"results/(appendix_\w+?)/", body).group(1) for body in by_rule[rule]
                   if "gpu=1" in body}
        assert studies == {"appendix_cifar100", "appendix_imagenet"}, (rule, by_rule[rule])
    imagenet_train = next(b for b in by_rule["train"] if "appendix_imagenet" in b)
    assert "mem_mb=64000" in imagenet_train and "runtime=1440" in imagenet_train and "cpus_per_task=8" in imagenet_train
    imagenet_data = next(b for b in by_rule["prepare_data"] if "appendix_imagenet" in b)
    assert "mem_mb=32000" in imagenet_data and "gpu=" not in imagenet_data
    # the folder check and the download run where Snakemake runs (localrules), before any GPU job
    assert len(by_rule["check_imagenet"]) == 1 and len(by_rule["download_cifar100"]) == 1


# ----------------------------------------------------------------------------- the new config keys
@pytest.mark.parametrize("path, value, ok", [
    (("test_points",), ["random2"], True), (("test_points",), ["random"], False),
    (("loo",), {"epochs": 2, "chunk_size": 1}, True), (("loo",), {"epochs": 0, "chunk_size": 1}, False),
    (("loo",), {"chunk_size": 1}, False), (("loo",), {"steps": None, "epochs": 2, "chunk_size": 1}, True),
    (("resources", "group"), ["fit"], True), (("resources", "group"), ["fit", "loo"], True),
    (("resources", "group"), True, True), (("resources", "group"), ["train"], False),
    (("resources", "group"), "fit", False), (("resources", "data"), {"mem_mb": 8000}, True),
])
def test_schema_of_the_new_keys(path, value, ok):
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from workflow_files import REPO

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    block = config["studies"]["iris"]
    for key in path[:-1]:
        block = block.setdefault(key, {})
    block[path[-1]] = value
    schema = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
    if ok:
        validate(config, schema)
    else:
        with pytest.raises(WorkflowError):
            validate(config, schema)


@pytest.mark.parametrize("study", ["appendix_cifar100", "appendix_imagenet"])
def test_appendix_studies_follow_the_paper(study):
    import yaml

    from workflow_files import REPO

    block = yaml.safe_load((REPO / "config.yaml").read_text())["studies"][study]
    assert block["enabled"] is False
    if study == "appendix_cifar100":
        assert block["architectures"] == ["resnet18"] and block["decays"] == [0.0005]
        assert list(block["datasets"]) == ["cifar100"]
    else:
        assert block["architectures"] == ["resnet50-imagenet"] and block["test_points"] == ["random2"]
        assert block["select"]["rules"] == [{"top_k": 50}] and block["loo"]["epochs"] == 2
        assert "steps" not in block["loo"]


def test_resnet50_imagenet_is_torchvisions_224px_net():
    import torchvision

    from fragility.models.registry import build_model, count_parameters

    net = build_model("resnet50-imagenet", (3, 224, 224), 1000)
    assert count_parameters(net) == count_parameters(torchvision.models.resnet50(weights=None)) == 25_557_032
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, torch.nn.MaxPool2d)
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
