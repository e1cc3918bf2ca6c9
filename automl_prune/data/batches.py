"""Batches of any structure: how a model is called on a batch's inputs, how a batch moves and is counted.

A batch is ``(inputs, targets)``. ``inputs`` is a tensor (``model(x)``), a tuple or list (``model(*x)``) or a
dict (``model(**x)``); ``targets`` is whatever the task's loss and metric take (class indices, a mask, a list of
dicts of boxes and labels). Tensors anywhere inside are moved to the model's device; other values pass as they
are. A batch's items are counted along a tensor's first dimension, or a list's length (a list holds one value per
item: images of different sizes, one target dict per image); a tuple or dict is a structure of such values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from automl_prune.errors import ConfigError

__all__ = ["call_model", "count_items", "first_items", "first_tensor", "move", "nbytes", "split_batch", "tensor_inputs"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple or list, ``model(**x)`` for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def move(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor inside (tuples, lists, dicts, nested) on ``device``: to a GPU through pinned
    memory without blocking, elsewhere as ``Tensor.to`` does."""
    device = torch.device(device)
    if isinstance(value, Tensor):
        if device.type == "cuda" and value.device.type == "cpu":
            return value.pin_memory().to(device, non_blocking=True)
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: move(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(move(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(move(v, device) for v in value)
    return value


def count_items(inputs: Any) -> int:
    """Items in a batch: a tensor's first dimension; a list's length (one value per item); a tuple's or dict's
    first element's count."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    if isinstance(inputs, list):
        return len(inputs)
    values = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
    if isinstance(values, (tuple, list)) and values:
        return count_items(values[0])
    raise ConfigError(f"cannot tell how many items a batch of {type(inputs).__name__} holds; batch inputs must "
                      "be a tensor, a list with one value per item, or a tuple or dict of those")


def first_items(value: Any, n: int) -> Any:
    """The first ``n`` items of a batch's inputs or targets: a tensor sliced along its first dimension, a list
    (one value per item) cut to ``n``, a tuple or dict element by element; anything else as it is."""
    if isinstance(value, Tensor):
        return value[:n] if value.dim() else value
    if isinstance(value, list):
        return value[:n]
    if isinstance(value, Mapping):
        return {k: first_items(v, n) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(first_items(v, n) for v in value)
    return value


def first_tensor(inputs: Any) -> Tensor:
    """The first tensor of a batch's inputs (the tensor itself, or the first one inside a tuple, list or dict)."""
    if isinstance(inputs, Tensor):
        return inputs
    values = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
    if isinstance(values, (tuple, list)):
        for value in values:
            if isinstance(value, (Tensor, Mapping, tuple, list)):
                try:
                    return first_tensor(value)
                except ConfigError:
                    continue
    raise ConfigError(f"a batch's inputs hold no tensor ({type(inputs).__name__})")


def split_batch(batch: Any, name: str, index: int) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one batch of the user's loader; anything else is one `ConfigError` line."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ConfigError(f"`{name}` batch {index} must be (inputs, targets), but is "
                      f"{type(batch).__name__}{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")


def tensor_inputs(inputs: Any) -> bool:
    """Whether a batch's inputs are one tensor (what pixel-level tools, channels-last and the CLI assume)."""
    return isinstance(inputs, Tensor)


def nbytes(value: Any) -> int:
    """Bytes the tensors inside ``value`` hold."""
    if isinstance(value, Tensor):
        return value.element_size() * value.numel()
    if isinstance(value, Mapping):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return sum(nbytes(v) for v in value)
    return 0
