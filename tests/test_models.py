from __future__ import annotations

import pytest
import torch
from torch import nn

from automl_prune.errors import ConfigError, UnknownNameError
from automl_prune.models import build_model, model_names

ZOO = ["tiny-cnn", "tiny-resnet", "vgg-small", "mobilenetv2-small", "resnet20", "resnet56"]
TORCHVISION = ["torchvision:resnet18", "torchvision:mobilenet_v2"]


def test_model_names_lists_the_zoo() -> None:
    assert sorted(ZOO) == model_names()
    assert "torchvision:resnet18" in model_names(include_torchvision=True)


@pytest.mark.parametrize("name", ZOO + TORCHVISION)
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 10), (3, 32, 7)])
def test_forward_shape(name: str, channels: int, size: int, classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels, classes, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_ends_with_one_linear_classifier(name: str) -> None:
    model = build_model(name, 1, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    assert linears[0].out_features == 10
    assert list(model.modules())[-1] is linears[0]


def test_torchvision_first_conv_takes_in_channels() -> None:
    model = build_model("torchvision:resnet18", 1, 10, 28)
    assert model.conv1.in_channels == 1
    assert model.conv1.out_channels == 64 and model.conv1.stride == (2, 2)


def test_unknown_zoo_name_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'resnet20'"):
        build_model("resnet2", 1, 10)


def test_unknown_torchvision_name_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'torchvision:resnet18'"):
        build_model("torchvision:resnet81", 1, 10)


def test_bad_channel_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("tiny-cnn", 0, 10)


def test_residual_shortcut_is_a_conv_when_shape_changes() -> None:
    model = build_model("tiny-resnet", 1, 10)
    shortcuts = [m.shortcut for m in model.modules() if hasattr(m, "shortcut")]
    assert isinstance(shortcuts[0], nn.Identity)
    assert isinstance(shortcuts[1][0], nn.Conv2d) and shortcuts[1][0].kernel_size == (1, 1)
