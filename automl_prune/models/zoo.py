"""Our own small CNNs for 28x28 / 32x32 inputs; each ends in global average pooling and one `nn.Linear`.

Every shortcut that changes shape is a 1x1 conv + BN ("option B"), so the dependency graph of
torch-pruning sees ordinary convs and every model here is prunable without special cases.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "InvertedResidual",
    "MobileNetV2Small",
    "TinyCNN",
    "VGGSmall",
    "mobilenetv2_small",
    "resnet20",
    "resnet56",
    "tiny_cnn",
    "tiny_resnet",
    "vgg_small",
]


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """A conv (no bias) followed by BatchNorm and ReLU, padding keeping the size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """The two-conv residual block of CIFAR ResNets, with a 1x1-conv shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        """Residual forward: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2): a 3x3 stem and three stages of blocks."""

    def __init__(self, blocks_per_stage: int, widths: Sequence[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, widths[0])
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class VGGSmall(nn.Module):
    """VGG-style stacks of conv-bn-relu separated by 2x2 max pools; ``"M"`` in ``config`` is a pool."""

    def __init__(self, config: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn_relu(in_ch, int(item)))
                in_ch = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.fc(self.flatten(self.pool(self.features(x))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(in_ch, hidden, kernel=1))
        layers.append(conv_bn_relu(hidden, hidden, stride=stride, groups=hidden))
        layers += [nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        """Block output, with the identity added when the block keeps the shape."""
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expansion, channels, blocks, first stride): MobileNetV2's table cut down for 28x28/32x32 inputs.
_MOBILENET_SMALL_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))


class MobileNetV2Small(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for small inputs: stride-1 stem, fewer stages, width multiplier."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 0.5, last_channels: int = 256) -> None:
        super().__init__()
        stem = _make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, stem)]
        in_ch = stem
        for expand, channels, blocks, stride in _MOBILENET_SMALL_CONFIG:
            out_ch = _make_divisible(channels * width)
            for i in range(blocks):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expand))
                in_ch = out_ch
        layers.append(conv_bn_relu(in_ch, last_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last_channels, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.fc(self.flatten(self.pool(self.features(x))))


class TinyCNN(nn.Module):
    """Test fixture: three conv-bn-relu layers (8, 16, 16 channels), global pooling, one linear layer."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, 8)
        self.conv2 = conv_bn_relu(8, 16, stride=2)
        self.conv3 = conv_bn_relu(16, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.fc(self.flatten(self.pool(self.conv3(self.conv2(self.conv1(x))))))


def resnet20(in_channels: int, num_classes: int) -> CifarResNet:
    """ResNet-20: 3 stages x 3 basic blocks, 16-32-64 channels (0.27M parameters)."""
    return CifarResNet(3, (16, 32, 64), in_channels, num_classes)


def resnet56(in_channels: int, num_classes: int) -> CifarResNet:
    """ResNet-56: 3 stages x 9 basic blocks, 16-32-64 channels (0.85M parameters)."""
    return CifarResNet(9, (16, 32, 64), in_channels, num_classes)


def tiny_resnet(in_channels: int, num_classes: int) -> CifarResNet:
    """Test fixture: a stem and two residual blocks (8 channels, then 16 with a 1x1-conv shortcut)."""
    return CifarResNet(1, (8, 16), in_channels, num_classes)


VGG_SMALL_CONFIG: tuple[int | str, ...] = (16, "M", 32, 32, "M", 64, 64, "M", 128)


def vgg_small(in_channels: int, num_classes: int) -> VGGSmall:
    """VGG-style net for fast CPU training: conv stages of 16-32-64-128 channels with max pools."""
    return VGGSmall(VGG_SMALL_CONFIG, in_channels, num_classes)


def mobilenetv2_small(in_channels: int, num_classes: int) -> MobileNetV2Small:
    """MobileNetV2 for small inputs at width 0.5."""
    return MobileNetV2Small(in_channels, num_classes)


def tiny_cnn(in_channels: int, num_classes: int) -> TinyCNN:
    """Test fixture: `TinyCNN`."""
    return TinyCNN(in_channels, num_classes)


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, never below 90% of the value (as MobileNetV2)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BN, small-normal linear layers (the usual CIFAR initialisation)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
