"""Image architectures for 1- or 3-channel inputs of about 28–32 pixels, registered by name.

- `smallcnn`: Koh & Liang's All-CNN-C, the paper's small CNN: five 3×3 convolutions with 8
  channels, tanh, strides 1, 2, 1, 2, 1, no padding; a 1×1 convolution to 10 channels (tanh, as
  in Koh & Liang's code); the mean over positions; a 10×10 linear layer. 2,616 parameters on 1×28×28 input (10 classes).
- `lenet`: LeNet-5 with ReLU and max pooling (6 and 16 5×5 filters, 120-84-classes). A 28-pixel
  input is zero-padded by 2 in the first convolution so the maps match the 32-pixel original.
- `vgg13`: torchvision's configuration "B" (10 convolutions, batch norm) + 3 linear layers = 13
  weight layers; `vgg14` adds one 512-channel convolution to the last block (14 weight layers;
  the paper does not define it, this is this project's reading). For small images the classifier
  is 512-512-classes after a global average pool (torchvision's is 25088-4096-4096-classes, for
  224 pixels), without dropout (re-training must be deterministic given the minibatch order),
  and a max pool that would shrink a map below 1×1 (28-pixel input) is left out.
- `resnet18`, `resnet50`: torchvision's ResNets with the usual small-image stem: a 3×3 stride-1
  first convolution taking C channels and no max pool.

Every constructor is `fn(input_shape, n_classes)` with `input_shape = (C, H, W)`.
`python -m fragility.image_models` prints the parameter counts.
"""

from __future__ import annotations

import torch
from torch import nn


def _shape(input_shape) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"image architectures need input of shape (C, H, W), got {tuple(input_shape)}")
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


class SmallCNN(nn.Module):
    """All-CNN-C (Koh & Liang 2017): x ↦ W · mean_{positions}(conv1×1(tanh ∘ conv3×3 ∘ … (x))) + b."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        last = in_channels
        for stride in (1, 2, 1, 2, 1):
            layers += [nn.Conv2d(last, width, kernel_size=3, stride=stride), nn.Tanh()]
            last = width
        layers += [nn.Conv2d(last, n_classes, kernel_size=1), nn.Tanh()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(n_classes, n_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class LeNet(nn.Module):
    """LeNet-5: conv5(6)-pool-conv5(16)-pool-fc120-fc84-fc(classes), ReLU."""

    def __init__(self, in_channels: int, height: int, width: int, n_classes: int):
        super().__init__()
        pad = max(0, (32 - min(height, width)) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_channels, height, width)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg_config(name: str) -> list:
    from torchvision.models.vgg import cfgs

    base = list(cfgs["B"])
    if name == "vgg13":
        return base
    if name == "vgg14":
        return base[:-1] + [512, "M"]
    raise ValueError(f"no VGG configuration named '{name}'")


def vgg_features(config: list, in_channels: int, size: int) -> nn.Sequential:
    """torchvision's `make_layers(cfg, batch_norm=True)` for `in_channels`, skipping any max pool
    that would take a map of side `size` below 1."""
    layers: list[nn.Module] = []
    for v in config:
        if v == "M":
            if size >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
        else:
            layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


class SmallImageVGG(nn.Module):
    """VGG features (batch norm) → global average pool → 512-512-classes classifier."""

    def __init__(self, config: list, in_channels: int, size: int, n_classes: int):
        super().__init__()
        self.features = vgg_features(config, in_channels, size)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        width = [v for v in config if v != "M"][-1]
        self.classifier = nn.Sequential(nn.Linear(width, 512), nn.ReLU(inplace=True), nn.Linear(512, 512),
                                        nn.ReLU(inplace=True), nn.Linear(512, n_classes))
        for m in self.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def small_image_resnet(name: str, in_channels: int, n_classes: int) -> nn.Module:
    """torchvision's ResNet with a 3×3 stride-1 stem for `in_channels` and no max pool."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=n_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def smallcnn(input_shape, n_classes: int) -> nn.Module:
    c, _, _ = _shape(input_shape)
    return SmallCNN(c, n_classes)


def lenet(input_shape, n_classes: int) -> nn.Module:
    c, h, w = _shape(input_shape)
    return LeNet(c, h, w, n_classes)


def vgg13(input_shape, n_classes: int) -> nn.Module:
    c, h, w = _shape(input_shape)
    return SmallImageVGG(vgg_config("vgg13"), c, min(h, w), n_classes)


def vgg14(input_shape, n_classes: int) -> nn.Module:
    c, h, w = _shape(input_shape)
    return SmallImageVGG(vgg_config("vgg14"), c, min(h, w), n_classes)


def resnet18(input_shape, n_classes: int) -> nn.Module:
    c, _, _ = _shape(input_shape)
    return small_image_resnet("resnet18", c, n_classes)


def resnet50(input_shape, n_classes: int) -> nn.Module:
    c, _, _ = _shape(input_shape)
    return small_image_resnet("resnet50", c, n_classes)


def resnet50_imagenet(input_shape, n_classes: int) -> nn.Module:
    """torchvision's ResNet50 as defined for 224-px ImageNet: 7×7 stride-2 stem and 3×3 max pool
    (23.5 M parameters for 1,000 classes; the small-image `resnet50` keeps full resolution in its
    first stage, 16× the work at 224 px)."""
    import torchvision

    c, _, _ = _shape(input_shape)
    model = torchvision.models.resnet50(weights=None, num_classes=n_classes)
    if c != 3:
        model.conv1 = nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


IMAGE_ARCHITECTURES = {"smallcnn": smallcnn, "lenet": lenet, "vgg13": vgg13, "vgg14": vgg14, "resnet18": resnet18,
                       "resnet50": resnet50, "resnet50-imagenet": resnet50_imagenet}
INPUT_SHAPES = {"MNIST (1×28×28)": (1, 28, 28), "CIFAR (3×32×32)": (3, 32, 32)}


def parameter_counts(n_classes: int = 10) -> dict[str, dict[str, int]]:
    """{architecture: {input: number of parameters}} for the standard inputs."""
    return {arch: {label: sum(p.numel() for p in build(shape, n_classes).parameters()) for label, shape in INPUT_SHAPES.items()}
            for arch, build in IMAGE_ARCHITECTURES.items()}


if __name__ == "__main__":
    counts = parameter_counts()
    labels = list(INPUT_SHAPES)
    print(f"{'architecture':<12}" + "".join(f"{label:>20}" for label in labels))
    for arch, row in counts.items():
        print(f"{arch:<12}" + "".join(f"{row[label]:>20,}" for label in labels))
