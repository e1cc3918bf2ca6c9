"""`OptunaMOSearcher`: accuracy against a cost (FLOPs, size or BOPs) as two Optuna objectives, the front drawn."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import optuna

from agents.base import SearchContext, SearchResult
from agents.optuna_search import OBJECTIVES, OptunaSearcher, derived_seed
from agents.pareto import pareto_front, plot_pareto, write_pareto_json
from automl_prune.errors import ConfigError
from search_spaces import Architecture

__all__ = ["OptunaMOSearcher"]


class OptunaMOSearcher(OptunaSearcher):
    """Multi-objective search: maximize accuracy, minimize a cost, with the budget as the front's upper limit.

    Returns (in ``SearchResult.extra["pareto_front"]``) the non-dominated evaluated architectures, and writes
    them to ``run_dir/pareto.json`` and ``run_dir/pareto.png``. ``best`` is the most accurate architecture.

    Args:
        sampler: ``"nsga2"`` (NSGA-II) or ``"tpe"`` (multi-objective TPE).
        population_size: NSGA-II's generation size (the first generation is random).
        objective: The cost minimized, one of `OBJECTIVES`: ``"flops"``, ``"size_bits"`` or ``"bops"``;
            default: ``"bops"`` with a BOPs budget, else ``"size_bits"`` with a size budget, else ``"flops"``.
        **options: As `OptunaSearcher`.
    """

    name: ClassVar[str] = "optuna-mo"
    directions: ClassVar[tuple[Literal["maximize", "minimize"], ...]] = ("maximize", "minimize")
    SAMPLERS: ClassVar[tuple[str, ...]] = ("nsga2", "tpe")

    def __init__(
        self,
        context: SearchContext,
        *,
        sampler: str = "nsga2",
        population_size: int = 16,
        objective: str | None = None,
        **options: Any,
    ) -> None:
        if objective is None:
            budget = context.budget
            objective = "bops" if budget.bops is not None else "size_bits" if budget.size_bits is not None else "flops"
        if objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {objective!r}; must be one of {list(OBJECTIVES)}")
        self.objective = objective
        if sampler not in self.SAMPLERS:
            raise ValueError(f"`sampler` must be one of {list(self.SAMPLERS)}, but got {sampler!r}")
        if population_size < 2:
            raise ValueError(f"`population_size >= 2` must hold, but got {population_size=}")
        self.sampler_name = sampler
        self.population_size = population_size
        super().__init__(context, **options)

    def _make_sampler(self, n_existing: int) -> optuna.samplers.BaseSampler:
        if self.sampler_name == "tpe":
            return super()._make_sampler(n_existing)
        return optuna.samplers.NSGAIISampler(seed=derived_seed(self.seed, n_existing),
                                             population_size=self.population_size)

    def _study_attrs(self) -> dict[str, Any]:
        return {**super()._study_attrs(), "objective": self.objective}

    def _cost(self, metrics: Mapping[str, Any], architecture: Architecture) -> int:
        """The minimized objective of an evaluated architecture (size and BOPs analytic, as the budgets are)."""
        if self.objective == "size_bits":
            return self.space.size_bits(architecture)
        if self.objective == "bops":
            return self.space.bops(architecture)
        return int(metrics["flops"])

    def _values(self, metrics: Mapping[str, Any], architecture: Architecture) -> list[float]:
        return [float(metrics["accuracy"]), float(self._cost(metrics, architecture))]

    def points(self) -> list[dict[str, Any]]:
        """Every evaluated architecture within every budget as a point (index, architecture, flops, accuracy,
        params, and ``size_bits`` and ``bops`` when bits are searched)."""
        points = []
        for e in self.history.entries:
            if e.metrics["flops"] > self.budget.flops or not self.within_budget(e):
                continue
            point = {"index": e.index, "architecture": e.architecture.to_dict(), "flops": int(e.metrics["flops"]),
                     "accuracy": float(e.metrics["accuracy"]), "params": e.metrics.get("params")}
            if self.searches_bits:
                point.update(size_bits=self.space.size_bits(e.architecture), bops=self.space.bops(e.architecture))
            points.append(point)
        return points

    def front(self) -> list[dict[str, Any]]:
        """The non-dominated points (ascending cost: `objective`)."""
        return pareto_front(self.points(), minimize=self.objective)

    def _objective_scale(self) -> tuple[int | None, int]:
        """The budget of the minimized objective (``None``: none given) and its value for the full float model."""
        if self.objective == "size_bits":
            return self.budget.size_bits, self.space.full_size_bits
        if self.objective == "bops":
            return self.budget.bops, self.space.full_bops
        return self.budget.flops, self.space.full_flops

    def write_front(self, directory: str | Path | None = None) -> tuple[Path, Path] | None:
        """Write ``pareto.json`` and ``pareto.png`` into ``directory`` (default ``run_dir``); paths or None."""
        directory = Path(directory) if directory is not None else self.run_dir
        if directory is None:
            return None
        points = self.points()
        key = self.objective
        front = pareto_front(points, minimize=key)
        if key == "flops":
            full = self.space.full_flops
            json_path = write_pareto_json(directory / "pareto.json", front, budget_flops=self.budget.flops,
                                          full_flops=full)
            png_path = plot_pareto(directory / "pareto.png", points, front, budget_flops=self.budget.flops,
                                   full_flops=full, title=f"{self.name}: accuracy vs FLOPs")
            return json_path, png_path
        budget, full = self._objective_scale()
        label = OBJECTIVES[key]
        json_path = write_pareto_json(directory / "pareto.json", front, budget_flops=self.budget.flops,
                                      full_flops=self.space.full_flops, objective=key, budget=budget, full=full)
        # The plot's x axis is the objective: each point's cost goes where the plot reads FLOPs.
        as_x = [{**p, "flops": p[key]} for p in points]
        png_path = plot_pareto(directory / "pareto.png", as_x, [{**p, "flops": p[key]} for p in front],
                               budget_flops=budget, full_flops=full, title=f"{self.name}: accuracy vs {label}",
                               xlabel=label)
        return json_path, png_path

    def _after_run(self) -> None:
        self.write_front()

    def result(self) -> SearchResult:
        """As `OptunaSearcher.result`, plus ``extra["pareto_front"]``."""
        result = super().result()
        result.extra["pareto_front"] = self.front()
        return result
