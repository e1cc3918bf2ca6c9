"""The bit widths a search may choose: constants the search space needs without importing the quantizer."""

from __future__ import annotations

__all__ = ["FLOAT_BITS", "MAX_BITS", "MIN_BITS"]

FLOAT_BITS = 32
"""The bit width that means "not quantized"."""

MIN_BITS, MAX_BITS = 2, 16
"""Bit widths the quantizers implement (besides 32); a search space usually allows 2..8."""
