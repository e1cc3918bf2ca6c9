"""Any torchvision classification model, randomly initialised (never weights, never downloads)."""

from __future__ import annotations

from torch import nn

from automl_prune.errors import ConfigError, UnknownNameError

__all__ = ["PREFIX", "build_torchvision_model", "torchvision_model_names"]

PREFIX = "torchvision:"


def torchvision_model_names() -> list[str]:
    """Torchvision's classification models (``torchvision.models``), without the ``torchvision:`` prefix."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision_model(
    name: str, in_channels: int, num_classes: int, *, valid: list[str] | None = None
) -> nn.Module:
    """Build torchvision model ``name``: ``num_classes`` outputs, first conv taking ``in_channels``.

    Args:
        name: A torchvision model name such as ``"resnet18"`` (no prefix).
        in_channels: Input channels; the first ``nn.Conv2d`` is replaced by one of the same config with
            this many inputs.
        num_classes: Number of classes of the classifier.
        valid: The full list of valid model names, for the error message of an unknown name.

    Returns:
        The randomly initialised model.

    Raises:
        UnknownNameError: ``name`` is not a torchvision classification model.
        ConfigError: The model has no ``nn.Conv2d`` to adapt to ``in_channels``.
    """
    import torchvision

    if name not in torchvision_model_names():
        raise UnknownNameError("model", PREFIX + name, valid or [PREFIX + n for n in torchvision_model_names()])
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    _replace_first_conv(model, in_channels, PREFIX + name)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int, label: str) -> None:
    """Swap the first ``nn.Conv2d`` (in module order) for one taking ``in_channels`` inputs."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            if module.groups != 1:
                raise ConfigError(f"model {label!r}: first conv {path!r} is grouped; cannot change its inputs")
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,  # type: ignore[arg-type]
                module.stride,  # type: ignore[arg-type]
                module.padding,  # type: ignore[arg-type]
                module.dilation,  # type: ignore[arg-type]
                bias=module.bias is not None,
                padding_mode=module.padding_mode,
            )
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, new)
            return
    raise ConfigError(f"model {label!r} has no nn.Conv2d whose inputs could be set to {in_channels}")
