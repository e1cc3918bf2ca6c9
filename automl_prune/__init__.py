"""automl-prune: AutoML channel pruning of CNNs under an exact FLOPs budget.

The public surface: `search` compresses your trained model on your data, `compress` applies widths to a model,
`load` rebuilds an exported model (`automl_prune.api`); the CLI is ``automl-prune``.
"""

from __future__ import annotations

from typing import Any

# Importing the package changes nothing in the caller's process (environment, random generators, matplotlib):
# process-wide settings belong to the CLI (`automl_prune.cli`).

__all__ = ["SearchResult", "__version__", "compress", "load", "search"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `load` depends on `search_spaces`, which itself builds on this package's core modules.
    import importlib

    if name == "load":
        return getattr(importlib.import_module("automl_prune.run.export"), name)
    if name in ("search", "compress", "SearchResult"):
        return getattr(importlib.import_module("automl_prune.api"), name)
    raise AttributeError(f"module 'automl_prune' has no attribute {name!r}")
