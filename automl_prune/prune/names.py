"""Names of the pruning settings' values, importable without torch: the config validates them at import."""

from __future__ import annotations

__all__ = ["REGULARIZERS"]

REGULARIZERS = ("none", "group-lasso", "growing-l2")
"""The `regularize` setting's values: none, group lasso (seed 003), growing L2 (Wang et al.)."""
