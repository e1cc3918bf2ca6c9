"""The Python API's data: ``(images, labels)`` tensors or a ``DataLoader``, as in-memory splits.

A ``DataLoader`` (or any iterable of ``(images, labels)`` batches) is read once, in order, into memory: the
search scores hundreds of candidates on the same validation images and fine-tunes on the training images many
times, which is fastest from tensors. The images are used exactly as given (already normalized the way the
model expects); no augmentation is added.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from automl_prune.data.datasets import DatasetSpec, Split, Splits
from automl_prune.errors import ConfigError

__all__ = ["as_split", "user_splits"]


def as_split(data: Any, name: str) -> Split:
    """One split from ``(images, labels)`` or an iterable of such batches; errors name the argument."""
    if isinstance(data, Split):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        images, labels = data
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Tensor)):
        images, labels = _collect(data, name)
    else:
        raise ConfigError(f"`{name}` must be (images, labels) tensors or a DataLoader of such batches, "
                          f"but got {type(data).__name__}")
    if images.dim() != 4:
        raise ConfigError(f"`{name}` images must be N x C x H x W, but got shape {list(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ConfigError(f"`{name}` labels must be one class index per image ({images.shape[0]}), but got shape "
                          f"{list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"`{name}` labels must be integer class indices, but got {labels.dtype}")
    if images.shape[0] == 0:
        raise ConfigError(f"`{name}` holds no images")
    if images.dtype.is_floating_point and not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
        raise ConfigError(f"`{name}` image {bad} holds NaN or infinite values; every input must be finite")
    if int(labels.min()) < 0:
        raise ConfigError(f"`{name}` holds the label {int(labels.min())}; class indices start at 0")
    return Split(images.detach().to("cpu", torch.float32).contiguous(), labels.detach().to("cpu", torch.int64))


def _collect(batches: Iterable[Any], name: str) -> tuple[Tensor, Tensor]:
    images: list[Tensor] = []
    labels: list[Tensor] = []
    for index, batch in enumerate(batches):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor)):
            raise ConfigError(f"`{name}` batch {index} is not (images, labels, ...): got {type(batch).__name__}")
        images.append(batch[0].detach().cpu())
        labels.append(torch.as_tensor(batch[1]).detach().cpu())
    if not images:
        raise ConfigError(f"`{name}` yielded no batches")
    return torch.cat(images), torch.cat(labels)


def user_splits(model: torch.nn.Module, train: Any, val: Any, test: Any | None) -> Splits:
    """`Splits` of the user's data; the spec is read off the images and the model's output."""
    train_split, val_split = as_split(train, "train"), as_split(val, "val")
    test_split = as_split(test, "test") if test is not None else None
    shape = tuple(train_split.images.shape[1:])
    for other, name in ((val_split, "val"), (test_split, "test")):
        if other is not None and tuple(other.images.shape[1:]) != shape:
            raise ConfigError(f"`{name}` images are {list(other.images.shape[1:])}, but `train` images are "
                              f"{list(shape)}")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            out = model(val_split.images[:1])
        except Exception as exc:
            raise ConfigError(f"the model cannot run on one `val` image of shape {list(shape)}: "
                              f"{type(exc).__name__}: {exc}") from exc
    model.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ConfigError("the model must return class scores of shape N x classes, but returned "
                          f"{getattr(out, 'shape', type(out).__name__)}")
    num_classes = int(out.shape[1])
    top = max(int(s.labels.max()) for s in (train_split, val_split, test_split) if s is not None)
    if top >= num_classes:
        raise ConfigError(f"a label is {top}, but the model has {num_classes} outputs")
    channels = shape[0]
    spec = DatasetSpec(name="user-data", in_channels=channels, num_classes=num_classes, input_size=shape[-1],
                       mean=(0.0,) * channels, std=(1.0,) * channels)
    return Splits(train=train_split, val=val_split, test=test_split, spec=spec)  # type: ignore[arg-type]
