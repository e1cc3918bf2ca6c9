"""Wall time of one phase of a run (the search, the re-ranking), summed over the processes that worked on it.

A run that is interrupted and resumed would otherwise report only the last process's seconds (a search restored
with every evaluation done reported 0 s). The seconds are kept in a small JSON file in the run directory and
saved at the phase's checkpoints (each evaluation; each rung of an in-process re-ranking, only its start under
Ray Tune; interruption; the end); time since the last save is lost only when the process is killed outright.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from automl_prune.atomic import atomic_write_text

__all__ = ["WallClock"]


class WallClock:
    """Seconds spent so far on a phase: those recorded in ``path`` by earlier processes plus this one's."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.before = 0.0
        if self.path.exists():
            try:
                self.before = float(json.loads(self.path.read_text())["seconds"])
            except (ValueError, KeyError, TypeError):
                self.before = 0.0  # an unreadable record counts as nothing rather than stopping the run
        self.start = time.perf_counter()

    @property
    def this_process(self) -> float:
        """Seconds since this process started the clock."""
        return time.perf_counter() - self.start

    def total(self) -> float:
        """Seconds over every process, this one included."""
        return self.before + self.this_process

    def save(self) -> float:
        """Record the total so far (atomically) and return it."""
        total = self.total()
        atomic_write_text(self.path, json.dumps({"seconds": total}))
        return total
