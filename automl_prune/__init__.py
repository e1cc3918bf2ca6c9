"""automl-prune: AutoML channel pruning of CNNs under an exact FLOPs budget."""

from __future__ import annotations

__version__ = "0.1.0"
