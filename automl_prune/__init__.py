"""automl-prune: AutoML channel pruning of CNNs under an exact FLOPs budget.

The public surface: `load` rebuilds an exported model; the CLI is ``automl-prune``.
"""

from __future__ import annotations

from automl_prune.export import export, load

__all__ = ["__version__", "export", "load"]

__version__ = "0.1.0"
