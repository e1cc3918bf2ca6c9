"""The Python API's data: ``(inputs, targets)`` tensors held in memory, or the user's loaders, read when needed.

Tensors are kept as they are given (already normalized the way the model expects); the search slices them
into batches and adds no augmentation. A ``DataLoader`` (or any re-iterable of ``(inputs, targets)`` batches)
becomes a `LoaderSplit`: nothing reads it whole, fine-tunes draw its batches with its own shuffling and
augmentation, and its batches may have any structure (`automl_prune.data.batches`).

What is checked up front, before anything is written: the model runs on one item of ``val``; with the default
task (cross-entropy, top-1) the model returns N x classes scores and the targets are class indices below the
number of classes (every label of in-memory tensors; the first batch of a loader).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from automl_prune.data.batches import call_model, first_items
from automl_prune.data.datasets import DatasetSpec, Split, Splits
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.errors import ConfigError

__all__ = ["as_split", "user_splits"]


def as_split(data: Any, name: str, *, classification: bool = True) -> Split | LoaderSplit:
    """One split from ``(inputs, targets)`` tensors or a re-iterable of such batches; errors name the argument.

    Args:
        data: The user's data.
        name: The argument it came from (``train``, ``val``, ``test``).
        classification: Check in-memory targets as class indices (the default task).
    """
    if isinstance(data, (Split, LoaderSplit)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return _tensor_split(data[0], data[1], name, classification)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Tensor, dict)):
        return LoaderSplit(data, name)
    raise ConfigError(f"`{name}` must be (inputs, targets) tensors or a DataLoader of (inputs, targets) batches, "
                      f"but got {type(data).__name__}")


def _tensor_split(images: Tensor, labels: Tensor, name: str, classification: bool) -> Split:
    if images.shape[0] == 0:
        raise ConfigError(f"`{name}` holds no inputs")
    if labels.dim() == 0 or labels.shape[0] != images.shape[0]:
        raise ConfigError(f"`{name}` needs one target per input ({images.shape[0]}), but the targets have shape "
                          f"{list(labels.shape)}")
    if images.dtype.is_floating_point and not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).nonzero()[0])
        raise ConfigError(f"`{name}` input {bad} holds NaN or infinite values; every input must be finite")
    if classification:
        if labels.dim() != 1:
            raise ConfigError(f"`{name}` labels must be one class index per input ({images.shape[0]}), but got shape "
                              f"{list(labels.shape)}; for another task give a `loss` and a `metric`")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ConfigError(f"`{name}` labels must be integer class indices, but got {labels.dtype}")
        if int(labels.min()) < 0:
            raise ConfigError(f"`{name}` holds the label {int(labels.min())}; class indices start at 0")
        labels = labels.to(torch.int64)
    inputs = images.detach().to("cpu", torch.float32) if images.dtype.is_floating_point else images.detach().cpu()
    return Split(inputs.contiguous(), labels.detach().cpu())


def user_splits(model: nn.Module, train: Any, val: Any, test: Any | None, *, classification: bool = True,
                workers: int = 0) -> Splits:
    """`Splits` of the user's data; the spec is read off one input and the model's output.

    Args:
        model: The user's model (in eval mode for the check; its mode is restored).
        train, val, test: The user's data (``test`` may be None).
        classification: The default task (cross-entropy, top-1): outputs and targets are checked for it.
        workers: Ray worker processes of the run: the loaders must pickle for them.
    """
    splits = {"train": as_split(train, "train", classification=classification),
              "val": as_split(val, "val", classification=classification)}
    if test is not None:
        splits["test"] = as_split(test, "test", classification=classification)
    for split in splits.values():
        if isinstance(split, LoaderSplit):
            split.check_picklable(workers)
    val_split = splits["val"]
    inputs, targets = _first_batch(val_split)
    example = first_items(inputs, 1)
    shape = list(example.shape[1:]) if isinstance(example, Tensor) else None
    for name, split in splits.items():
        if name != "val" and isinstance(split, Split) and isinstance(val_split, Split) and \
                split.images.shape[1:] != val_split.images.shape[1:]:
            raise ConfigError(f"`{name}` inputs are {list(split.images.shape[1:])}, but `val` inputs are {shape}")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        try:
            out = call_model(model, example)
        except Exception as exc:
            what = f"shape {shape}" if shape is not None else type(example).__name__
            raise ConfigError(f"the model cannot run on one `val` input of {what}: {type(exc).__name__}: "
                              f"{exc}") from exc
    model.train(was_training)
    num_classes = int(out.shape[1]) if isinstance(out, Tensor) and out.dim() == 2 else 0
    if classification:
        if num_classes == 0:
            raise ConfigError("with the default task (cross-entropy, top-1) the model must return class scores of "
                              f"shape N x classes, but returned {_describe(out)}; for another task give a `loss` "
                              "and a `metric`")
        _check_labels(splits, targets, num_classes)
    channels = int(example.shape[1]) if isinstance(example, Tensor) and example.dim() >= 2 else 0
    size = int(example.shape[-1]) if isinstance(example, Tensor) and example.dim() >= 3 else 0
    spec = DatasetSpec(name="user-data", in_channels=channels, num_classes=num_classes, input_size=size,
                       mean=(0.0,) * channels, std=(1.0,) * channels)
    return Splits(train=splits["train"], val=val_split, test=splits.get("test"), spec=spec)


def _first_batch(split: Split | LoaderSplit) -> tuple[Any, Any]:
    if isinstance(split, LoaderSplit):
        return split.first_batch()
    return split.images[:2], split.labels[:2]


def _check_labels(splits: dict[str, Split | LoaderSplit], val_targets: Any, num_classes: int) -> None:
    """Class indices below ``num_classes``: all of an in-memory split's, a loader's first batch's."""
    for name, split in splits.items():
        if isinstance(split, Split):
            labels = split.labels
        else:
            labels = val_targets if name == "val" else split.first_batch()[1]
            if not (isinstance(labels, Tensor) and labels.dim() == 1 and not labels.dtype.is_floating_point
                    and labels.dtype != torch.bool):
                raise ConfigError(f"with the default task (cross-entropy, top-1) a `{name}` batch's targets must be "
                                  f"one class index per item, but got {_describe(labels)}; for another task give "
                                  "a `loss` and a `metric`")
        if len(labels) and int(labels.max()) >= num_classes:
            raise ConfigError(f"a `{name}` label is {int(labels.max())}, but the model has {num_classes} outputs")
        if len(labels) and int(labels.min()) < 0:
            raise ConfigError(f"`{name}` holds the label {int(labels.min())}; class indices start at 0")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__
