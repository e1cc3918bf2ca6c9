"""Baselines every searcher must beat: one uniform width (and bit width), and random search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agents.base import SearchContext, Searcher
from agents.bit_budget import project_bits, uniform_bits_architecture
from agents.budget import (
    around_uniform,
    check_prior,
    project_to_budget,
    sample_multipliers,
    uniform_architecture,
    uniform_ratios,
)
from search_spaces import Architecture

__all__ = ["RandomSearcher", "UniformSearcher"]


class UniformSearcher(Searcher):
    """One keep ratio for every group, the largest that meets the budget; a single evaluation.

    With ``search="bits"`` every group keeps its full width; with ``"bits"`` or ``"both"`` every layer then
    gets the highest single bit width (weights and activations alike) that meets the size and BOPs budgets
    (`agents.bit_budget.uniform_bits_architecture`).
    """

    name = "uniform"

    def architecture(self) -> Architecture:
        """The one architecture this searcher evaluates."""
        budget = self.budget
        if not self.searches_bits:
            return uniform_architecture(self.space, budget.flops)
        widths = uniform_architecture(self.space, budget.flops) if self.searches_widths else self.space.full()
        return uniform_bits_architecture(self.space, widths, budget.size_bits, budget.bops)

    def _run(self) -> None:
        if len(self.history) == 0:
            self._evaluate(self.architecture())


class RandomSearcher(Searcher):
    """Random keep ratios per group around the uniform architecture, projected onto the budget when over it.

    Args:
        context: As every `Searcher`.
        prior: ``"uniform"`` (default): each group's keep ratio is its uniform ratio for the budget times a
            log-uniform factor in ``[1 / spread, spread]``, so draws concentrate around the strongest simple
            solution; ``"box"``: uniformly over ``[min_keep / size, 1]`` (the whole space).
        spread: The largest factor away from the uniform ratio (``prior="uniform"`` only).

    A draw over budget is scaled down onto it, then the leftover budget is spent
    (`agents.budget.project_to_budget` with ``fill=True``). With ``search="bits"`` (full widths) or ``"both"``
    (widths drawn as above) every layer then gets uniformly random weight and activation bits
    (`SearchSpace.sample_bits`), projected onto the size and BOPs budgets by taking bits off the costliest
    layers (`agents.bit_budget.project_bits`).
    """

    name = "random"

    def __init__(self, context: SearchContext, *, prior: str = "uniform", spread: float = 2.0) -> None:
        super().__init__(context)
        check_prior(prior, spread)
        self.prior = prior
        self.spread = float(spread)
        self._centre = uniform_ratios(self.space, self.budget.flops)

    def sample(self, rng: np.random.Generator) -> Architecture:
        """One draw from the prior (before the budget projection)."""
        if self.prior == "uniform":
            return around_uniform(self.space, self._centre, sample_multipliers(rng, self.space.names, self.spread))
        return self.space.from_ratios({d.name: float(rng.uniform(d.min_keep / d.size, 1.0))
                                       for d in self.space.decisions})

    def _run(self) -> None:
        # Each draw's generator is derived from the seed and its index, so resume continues the stream and the
        # candidates do not depend on how many are evaluated at once.
        while self.remaining:
            start = len(self.history)
            batch = []
            for index in range(start, start + min(self.remaining, self.batch_size)):
                rng = np.random.default_rng([self.seed, index])
                batch.append(self.candidate(rng))
            self._evaluate_many(batch)

    def candidate(self, rng: np.random.Generator) -> Architecture:
        """One draw, projected onto every budget (widths first, then bits)."""
        if self.searches_widths:
            arch = project_to_budget(self.space, self.sample(rng), self.budget.flops, fill=True)
        else:
            arch = self.space.full()
        if not self.searches_bits:
            return arch
        return project_bits(self.space, self.space.sample_bits(rng, arch), self.budget.size_bits, self.budget.bops)

    def save(self, path: str | Path) -> None:
        """Nothing to learn; records the seed for a faithful continuation."""
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "random.json").write_text(json.dumps({"seed": self.seed}))

    def restore(self, path: str | Path) -> None:
        """Reads the seed written by `save`."""
        file = Path(path) / "random.json"
        if file.exists():
            self.seed = int(json.loads(file.read_text())["seed"])
