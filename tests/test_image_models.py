"""Image architectures: output shapes and parameter counts for 1- and 3-channel 28/32-pixel input,
and that the batch-norm nets train under the stacked-copies trainer (running statistics update)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fragility.models.registry import build_model, count_parameters, init_model
from fragility.engine.flat import FlatModel
from fragility.engine.training import TrainSettings, train_copies

SHAPES = [(1, 28, 28), (3, 32, 32)]
ARCHS = ["smallcnn", "lenet", "vgg13", "vgg14", "resnet18", "resnet50"]


def conv_bn(c_in: int, c_out: int) -> int:
    """3×3 convolution with bias + batch norm (weight and bias)."""
    return 9 * c_in * c_out + c_out + 2 * c_out


def expected_vgg(config: list, channels: int, n_classes: int) -> int:
    total, last = 0, channels
    for v in config:
        if v != "M":
            total, last = total + conv_bn(last, v), v
    return total + (last * 512 + 512) + (512 * 512 + 512) + (512 * n_classes + n_classes)


def expected(arch: str, shape: tuple, n_classes: int = 10) -> int:
    """Parameter counts from the architectures' definitions (torchvision's where they come from)."""
    c = shape[0]
    if arch == "smallcnn":  # 3×3 convs C→8, 4 × 8→8, 1×1 conv 8→10, linear 10→10
        return (9 * c * 8 + 8) + 4 * (9 * 8 * 8 + 8) + (8 * n_classes + n_classes) + (n_classes * n_classes + n_classes)
    if arch == "lenet":  # conv5 C→6, conv5 6→16, 16·5·5→120→84→classes
        return (25 * c * 6 + 6) + (25 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * n_classes + n_classes)
    if arch.startswith("vgg"):
        base = list(torchvision.models.vgg.cfgs["B"])
        return expected_vgg(base if arch == "vgg13" else base[:-1] + [512, "M"], c, n_classes)
    reference = count_parameters(getattr(torchvision.models, arch)(weights=None, num_classes=n_classes))
    return reference - 7 * 7 * 3 * 64 + 3 * 3 * c * 64  # only the stem differs


@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_parameter_count(arch, shape):
    model = init_model(arch, shape, 10, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert count_parameters(model) == expected(arch, shape)


def test_small_cnn_is_the_papers_size():
    assert count_parameters(build_model("smallcnn", (1, 28, 28), 10)) == 2616


def test_hundred_classes_and_vgg14_is_one_conv_deeper():
    assert build_model("resnet18", (3, 32, 32), 100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    deeper = count_parameters(build_model("vgg14", (3, 32, 32), 10)) - count_parameters(build_model("vgg13", (3, 32, 32), 10))
    assert deeper == conv_bn(512, 512)


def test_same_seed_same_initialisation():
    a, b = (FlatModel(init_model("lenet", (1, 28, 28), 10, seed=5)).flatten() for _ in range(2))
    c = FlatModel(init_model("lenet", (1, 28, 28), 10, seed=6)).flatten()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_non_image_input_is_refused():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("smallcnn", (784,), 10)


def test_batchnorm_net_trains_as_stacked_copies():
    """Two copies of a VGG on 8×8 inputs (every max pool kept until the map is 1×1): one SGD step
    under vmap changes the parameters and each copy's BatchNorm running statistics."""
    net = FlatModel(init_model("vgg13", (1, 8, 8), 10, seed=0))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    weights = torch.ones(2, 6)
    weights[1, 0] = 0.0  # the second copy leaves point 0 out
    theta0 = net.flatten()
    result = train_copies(net, x, y, 1e-3, theta0[None].repeat(2, 1), weights,
                          TrainSettings(steps=1, lr=0.01, optimizer="sgd", momentum=0.9, batch_size=None), log=lambda *_: None)
    assert all(torch.isfinite(torch.tensor(result.final_losses)))
    assert not torch.equal(result.thetas[0], theta0)
    means = result.buffers["features.1.running_mean"]
    assert means.shape == (2, 64) and means.abs().sum() > 0
    assert not torch.allclose(means[0], means[1])  # different data seen, different statistics
