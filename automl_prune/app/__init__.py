"""The application around the core: Ray orchestration (and, later, the run, the report and the CLI).

Kept apart from the core so that `automl_prune`'s core modules never import Ray.
"""

from __future__ import annotations

__all__: list[str] = []
