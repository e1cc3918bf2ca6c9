"""Baselines every searcher must beat: one uniform width, and random search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agents.base import Searcher
from agents.budget import project_to_budget, uniform_architecture

__all__ = ["RandomSearcher", "UniformSearcher"]


class UniformSearcher(Searcher):
    """One keep ratio for every group, the largest that meets the budget; a single evaluation."""

    name = "uniform"

    def _run(self) -> None:
        if len(self.history) == 0:
            self._evaluate(uniform_architecture(self.space, self.budget_flops))


class RandomSearcher(Searcher):
    """Uniformly random keep ratios per group, projected onto the budget when over it."""

    name = "random"

    def _run(self) -> None:
        # The generator is re-derived from the seed and the count done so far, so resume continues the stream.
        while self.remaining:
            rng = np.random.default_rng([self.seed, len(self.history)])
            lows = {d.name: d.min_keep / d.size for d in self.space.decisions}
            ratios = {name: float(rng.uniform(low, 1.0)) for name, low in lows.items()}
            arch = self.space.from_ratios(ratios)
            self._evaluate(project_to_budget(self.space, arch, self.budget_flops))

    def save(self, path: str | Path) -> None:
        """Nothing to learn; records the seed for a faithful continuation."""
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "random.json").write_text(json.dumps({"seed": self.seed}))

    def restore(self, path: str | Path) -> None:
        """Reads the seed written by `save`."""
        file = Path(path) / "random.json"
        if file.exists():
            self.seed = int(json.loads(file.read_text())["seed"])
