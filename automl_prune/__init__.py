"""automl-prune: AutoML channel pruning of CNNs under an exact FLOPs budget.

The public surface: `load` rebuilds an exported model; the CLI is ``automl-prune``.
"""

from __future__ import annotations

import os

# Must precede the first torch import to take effect: with OpenMP's default spinning, elementwise ops ran
# 10-40x slower here whenever another process shared a core (measured; see automl_prune.runtime).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from automl_prune.export import export, load

__all__ = ["__version__", "export", "load"]

__version__ = "0.1.0"
