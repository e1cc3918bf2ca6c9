"""Models: a small zoo for 28x28/32x32 inputs, any torchvision classifier as ``torchvision:NAME``, and the
user's own as ``package.module:factory``.

```python
model = build_model("tiny-cnn", in_channels=1, num_classes=10)
```
"""

from __future__ import annotations

from torch import nn

from automl_prune.errors import ConfigError, UnknownNameError
from automl_prune.models.import_path import build_from_import_path, is_import_path
from automl_prune.models.torchvision_models import (
    PREFIX,
    build_torchvision_model,
    torchvision_model_names,
)
from automl_prune.registry import Registry

__all__ = ["MODELS", "build_model", "model_names"]

MODELS: Registry[nn.Module] = Registry("model")
MODELS.register("resnet20", "automl_prune.models.zoo:resnet20")
MODELS.register("resnet56", "automl_prune.models.zoo:resnet56")
MODELS.register("vgg-small", "automl_prune.models.zoo:vgg_small")
MODELS.register("mobilenetv2-small", "automl_prune.models.zoo:mobilenetv2_small")
MODELS.register("tiny-cnn", "automl_prune.models.zoo:tiny_cnn")
MODELS.register("tiny-resnet", "automl_prune.models.zoo:tiny_resnet")


def model_names(include_torchvision: bool = False) -> list[str]:
    """Names accepted by `build_model`: the zoo, plus ``torchvision:NAME`` entries when asked."""
    names = MODELS.names()
    if include_torchvision:
        names += [PREFIX + name for name in torchvision_model_names()]
    return names


def build_model(name: str, in_channels: int, num_classes: int, input_size: int = 32) -> nn.Module:
    """Build a randomly initialised model.

    Args:
        name: A zoo name (see `model_names`), ``torchvision:NAME`` for a torchvision classifier, or
            ``package.module:factory`` for a model of the user's (see `automl_prune.models.import_path`).
        in_channels: Image channels (1 for Fashion-MNIST, 3 for CIFAR-10).
        num_classes: Outputs of the final ``nn.Linear``.
        input_size: Image side in pixels. The zoo models pool globally and accept any size of 16 or more;
            it is checked here so that a bad value fails early.

    Returns:
        The model, in training mode.

    Raises:
        UnknownNameError: Unknown ``name``; the message lists valid names and suggests the closest.
        ConfigError: A non-positive ``in_channels``, ``num_classes`` or ``input_size``.
    """
    for label, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("input_size", input_size),
    ):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"`{label}` must be a positive integer, but got {value!r} (model {name!r})")
    if name.startswith(PREFIX):
        return build_torchvision_model(
            name[len(PREFIX) :], in_channels, num_classes, valid=model_names(include_torchvision=True)
        )
    if is_import_path(name):
        return build_from_import_path(name, in_channels, num_classes)
    if name not in MODELS:
        raise UnknownNameError("model", name, model_names(include_torchvision=True))
    return MODELS.create(name, in_channels, num_classes)
