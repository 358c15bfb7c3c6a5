"""ImageNet (ILSVRC-2012) from the on-disk layout a cluster already has, as a bounded `Split`.

    <root>/train/<wnid>/*.JPEG      (1,281,167 images, 1,000 classes)
    <root>/val/<wnid>/*.JPEG        (50,000 images, 50 per class)

i.e. what `torchvision.datasets.ImageFolder` reads (and `torchvision.datasets.ImageNet` leaves
after its one-time preparation). `root` defaults to `<data_dir>/imagenet`. It is never downloaded.

Memory. The workflow keeps a study's images in one in-memory tensor (`data.pt`, read by every
job), which cannot hold ImageNet: 1.28 M images at 3×224×224 in float32 are 770 GB. This loader
therefore takes a subset: `classes` (a number of classes drawn with `subset_seed`, or a list of
wnids), `train_per_class` and `test_per_class` images of each (drawn with `subset_seed`; the
test images come from `val/`). Files are decoded one at a time, straight into a preallocated
uint8 tensor (a quarter of the float32 result), never holding the files or a list of decoded
images; the job's peak is then about twice the float32 result (scaling and standardising). A
subset whose float32 tensors would exceed `max_gb` stops the data job before anything is
decoded, with the numbers.
The paper's ImageNet cells re-train for 2 epochs, so its full set is out of reach of leave-one-out
on any cluster anyway; a subset of classes and images per class is how such a cell is run here.

Preprocessing (the usual 224-px evaluation transform, deterministic): resize the shorter side
to `resize` (256) with bilinear interpolation and antialiasing, centre-crop `image_size` (224),
RGB; then, as for the other image loaders, scale to [0, 1] and, with `normalize: true`,
standardise per channel with the statistics of the chosen training images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import EXTENSIONS, ImageNetFilesMissing, class_folders, imagenet_root, missing_imagenet  # noqa: F401
from .split import Split

def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def choose(items: list, k: int | None, rng: np.random.Generator, what: str) -> list:
    """k of `items` drawn without replacement (all when k is None), in their original order."""
    if k is None:
        return list(items)
    if not 1 <= int(k) <= len(items):
        raise ValueError(f"ImageNet: {what} is {k}, but there are {len(items)}")
    return [items[i] for i in sorted(rng.choice(len(items), size=int(k), replace=False))]


def decode(path: Path, resize: int, image_size: int) -> torch.Tensor:
    """One image file → uint8 [3, image_size, image_size]: shorter side to `resize`, centre crop."""
    from PIL import Image
    from torchvision.transforms import functional as F
    from torchvision.transforms import InterpolationMode

    with Image.open(path) as image:
        image = image.convert("RGB")
        image = F.resize(image, resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
        image = F.center_crop(image, [image_size, image_size])
        return F.pil_to_tensor(image)


def load_imagenet(data_dir: str = "data", root: str | None = None, classes: int | list[str] | None = None,
                  train_per_class: int | None = None, test_per_class: int | None = None, subset_seed: int = 0,
                  image_size: int = 224, resize: int = 256, normalize: bool = True, max_gb: float = 32.0) -> Split:
    """A seeded subset of ImageNet from `root` (default `<data_dir>/imagenet`), decoded to
    [N, 3, image_size, image_size]; labels are the positions of the chosen wnids in sorted order."""
    from .images import _finish

    if resize < image_size:
        raise ValueError(f"ImageNet: resize ({resize}) must be at least image_size ({image_size})")
    root = imagenet_root(data_dir, root)
    wnids = class_folders(root)
    rng = np.random.default_rng(subset_seed)
    if isinstance(classes, (list, tuple)):
        unknown = sorted(set(classes) - set(wnids))
        if unknown:
            raise ValueError(f"ImageNet: classes {unknown[:5]} have no folder in {(root / 'train').resolve()}")
        chosen = sorted(set(classes))
    else:
        chosen = choose(wnids, classes, rng, "classes")
    files = {"train": [], "val": []}
    labels = {"train": [], "val": []}
    for label, wnid in enumerate(chosen):
        for part, k in (("train", train_per_class), ("val", test_per_class)):
            folder = root / part / wnid
            if not folder.is_dir():
                raise missing_imagenet(root, f"class {wnid} has no folder {folder.resolve()}")
            picked = choose(image_files(folder), k, rng, f"{part}_per_class for {wnid}" if part == "train"
                            else f"test_per_class for {wnid} (images in val/{wnid})")
            files[part] += picked
            labels[part] += [label] * len(picked)
    n_total = len(files["train"]) + len(files["val"])
    gigabytes = n_total * 3 * image_size * image_size * 4 / 1e9
    if gigabytes > max_gb:
        raise ValueError(f"ImageNet: {n_total} images at {image_size} px are {gigabytes:.1f} GB as float32, over "
                         f"max_gb = {max_gb:g} (the study's images live in memory); lower classes, "
                         "train_per_class or test_per_class, or raise max_gb")
    images = {}
    for part in ("train", "val"):
        out = torch.empty((len(files[part]), 3, image_size, image_size), dtype=torch.uint8)
        for row, path in enumerate(files[part]):
            out[row] = decode(path, resize, image_size)
        images[part] = out
    meta = {"source": f"ImageNet folders in {root.resolve()} (train/ and val/, one folder per wnid)",
            "classes": chosen, "subset_seed": subset_seed, "image_size": image_size, "resize": resize,
            "train_files": [str(p.relative_to(root)) for p in files["train"]],
            "test_files": [str(p.relative_to(root)) for p in files["val"]]}
    return _finish(images["train"], np.asarray(labels["train"]), images["val"], np.asarray(labels["val"]),
                   len(chosen), meta, normalize)
