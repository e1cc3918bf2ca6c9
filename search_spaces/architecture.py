"""`Architecture`: one point of a search space, as plain data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Architecture"]


@dataclass(frozen=True)
class Architecture:
    """Channels kept per group (by module path of the group's root) and, optionally, bits per layer.

    Groups left out keep their full width.
    """

    widths: dict[str, int]
    bits: dict[str, tuple[int, int]] = field(default_factory=dict)

    def key(self) -> str:
        """A canonical string: equal architectures have equal keys (used for caching)."""
        return json.dumps(
            {"w": sorted(self.widths.items()), "b": sorted((k, list(v)) for k, v in self.bits.items())},
            separators=(",", ":"),
        )

    def __hash__(self) -> int:
        return hash(self.key())

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
            from automl_prune.errors import InvalidArchitectureError

            raise InvalidArchitectureError(
                "an architecture must be a JSON object with a 'widths' object mapping group names to channels"
            )
        widths = {str(k): int(v) for k, v in data["widths"].items()}
        bits = {str(k): (int(v[0]), int(v[1])) for k, v in data.get("bits", {}).items()}
        return cls(widths=widths, bits=bits)

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Inverse of `to_json`."""
        return cls.from_dict(json.loads(text))
