"""`Architecture`: one point of a search space, as plain data."""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from automl_prune.errors import ConfigError, InvalidArchitectureError
from automl_prune.quantize.bits import FLOAT_BITS

__all__ = ["Architecture", "InvalidBitsError"]


class InvalidBitsError(InvalidArchitectureError, ConfigError):
    """Bits that are not a ``[weight_bits, activation_bits]`` pair from the allowed set, or name no layer.

    Both an `InvalidArchitectureError` (what `SearchSpace.validate` raises) and a `ConfigError` (bits typed on a
    command line or in a config file), so callers may catch either.
    """


@dataclass(frozen=True)
class Architecture:
    """Channels kept per group (by module path of the group's root) and, optionally, bits per layer.

    Groups left out keep their full width. ``bits`` maps the module path of a conv or linear layer to
    ``(weight_bits, activation_bits)``, the activation being the layer's input; layers left out are not
    quantized (32/32, float), so a width-only architecture is a float model and its `key` is unchanged.
    """

    widths: dict[str, int]
    bits: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Pairs given as lists (from JSON or by hand) become int tuples, so equality and keys do not depend on it.
        object.__setattr__(self, "bits", {str(k): _bit_pair(k, v) for k, v in self.bits.items()})

    def key(self) -> str:
        """A canonical string: equal architectures have equal keys (used for caching)."""
        return json.dumps(
            {"w": sorted(self.widths.items()), "b": sorted((k, list(v)) for k, v in self.bits.items())},
            separators=(",", ":"),
        )

    def __hash__(self) -> int:
        return hash(self.key())

    def with_bits(self, bits: Mapping[str, tuple[int, int]]) -> Architecture:
        """The same widths with ``bits`` instead of the current bits (pairs at 32/32 are dropped: float)."""
        kept = {k: _bit_pair(k, v) for k, v in bits.items()}
        return Architecture(dict(self.widths), {k: v for k, v in kept.items() if v != (FLOAT_BITS, FLOAT_BITS)})

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        data: dict[str, Any] = {"widths": dict(self.widths)}
        if self.bits:
            data["bits"] = {k: list(v) for k, v in self.bits.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Inverse of `to_dict`; also accepts an exported ``arch.json`` (which has a ``widths`` key)."""
        if not isinstance(data, dict) or not isinstance(data.get("widths"), dict):
            raise InvalidArchitectureError(
                "an architecture must be a JSON object with a 'widths' object mapping group names to channels"
            )
        widths = {str(k): _channel_count(k, v) for k, v in data["widths"].items()}
        bits = data.get("bits") or {}
        if not isinstance(bits, dict):
            raise InvalidBitsError(
                f"'bits' must be a JSON object mapping layer names to [weight_bits, activation_bits], "
                f"but got {type(bits).__name__}"
            )
        return cls(widths=widths, bits=bits)

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))


def _channel_count(group: object, value: object) -> int:
    """``value`` as a whole number of channels (``3`` or ``3.0``), or an `InvalidArchitectureError` naming ``group``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise InvalidArchitectureError(
        f"the width of group {group!r} must be a whole number of channels, but got {value!r}"
    )


def _bit_pair(layer: object, value: object) -> tuple[int, int]:
    """``value`` as an ``(int, int)`` pair, or an `InvalidBitsError` naming ``layer``."""
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        return int(value[0]), int(value[1])
    raise InvalidBitsError(
        f"bits of layer {layer!r} must be a pair [weight_bits, activation_bits] of integers, but got {value!r}"
    )
