"""A user's trained weights: ``--weights PATH`` read safely and loaded strictly, with one-line errors.

Accepted files: ``.pt`` / ``.pth`` (``torch.save`` of a state dict, read with ``weights_only=True``: nothing
pickled is executed) and ``.safetensors``. A ``.pt`` holding ``{"state_dict": {...}}`` (PyTorch Lightning and
many training scripts) or our own checkpoint format is unwrapped; a ``module.`` prefix (``DataParallel``) is
stripped when every key has it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from automl_prune.errors import CheckpointError, ConfigError

__all__ = ["SUFFIXES", "check_finite", "check_weights_path", "load_state_dict_file", "load_weights_into"]

SUFFIXES = (".pt", ".pth", ".safetensors")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def check_weights_path(path: str | Path) -> Path:
    """The path, if it is an existing file with an accepted suffix; else one clear `ConfigError`."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"--weights {str(path)!r}: expected a state dict file ending in {list(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"--weights {str(path)!r}: no such file")
    return path


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``path`` (see the module docstring for the formats)."""
    path = check_weights_path(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a dependency
            raise CheckpointError("reading .safetensors needs the safetensors package") from exc
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:
            raise CheckpointError(f"--weights {str(path)!r} is not a readable safetensors file: {exc}") from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        text = _ANSI.sub("", str(exc)).strip()  # torch colours parts of its unpickling message
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"--weights {str(path)!r} cannot be read as a state dict (weights_only): "
                              f"{first}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"--weights {str(path)!r} holds a {type(data).__name__}, not a state dict of "
                              "tensors; save it with torch.save(model.state_dict(), PATH)")
    state = {str(k): v for k, v in data.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights_into(model: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` strictly; the first missing, unexpected or mis-shaped key is the error.

    Args:
        model: The freshly built model.
        state: Its weights.
        source: Named in errors (the file, and the model it was loaded into).

    Raises:
        CheckpointError: One line naming the first bad key and, for a shape mismatch, both shapes.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{source}: missing key {missing[0]!r}{more}, expected shape "
                              f"{list(expected[missing[0]].shape)}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r}{more}, which the model does not have")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: key {key!r} has shape {list(state[key].shape)}, the model expects "
                                  f"{list(value.shape)}")
    check_finite(state.items(), source)
    model.load_state_dict(state, strict=True)
    return model


def check_finite(tensors: Iterable[tuple[str, Tensor]], source: str) -> None:
    """`CheckpointError` naming the first floating-point tensor that holds NaN or infinity (trained weights that
    diverged would otherwise fail deep inside a criterion's linear algebra)."""
    for name, value in tensors:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: {name!r} holds NaN or infinite values; the weights must be finite")
