"""`SearchSpace`: one width decision per prunable channel group of a network."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_prune.cost import CostModel, Costs
from automl_prune.errors import BudgetError, ConfigError, InvalidArchitectureError
from automl_prune.graph import NetworkGraph, analyze, measure_flops
from search_spaces.architecture import Architecture

__all__ = ["SearchSpace", "WidthDecision"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class WidthDecision:
    """How many channels a group may keep: ``min_keep..size`` in steps of ``round_to`` (``size`` always)."""

    name: str
    size: int
    min_keep: int
    round_to: int = 1

    def allows(self, channels: int) -> bool:
        """Whether ``channels`` is a valid width for this group."""
        if channels == self.size:
            return True
        return self.min_keep <= channels <= self.size and channels % self.round_to == 0

    def choices(self) -> list[int]:
        """Every valid width, ascending."""
        values = list(range(self.min_keep, self.size + 1, self.round_to))
        if values[-1] != self.size:
            values.append(self.size)
        return values

    def round(self, channels: float) -> int:
        """The nearest valid width to ``channels`` (clipped into range)."""
        choices = self.choices()
        return min(choices, key=lambda c: (abs(c - channels), c))

    def floor(self, channels: float) -> int:
        """The largest valid width not above ``channels`` (``min_keep`` if none is)."""
        best = self.min_keep
        for c in self.choices():
            if c <= channels + 1e-9:
                best = c
        return best

    def from_ratio(self, ratio: float) -> int:
        """The valid width nearest to ``ratio`` x ``size``."""
        return self.round(ratio * self.size)


class SearchSpace:
    """Width decisions over a network's channel groups, in the order the network runs them."""

    def __init__(self, graph: NetworkGraph, decisions: list[WidthDecision], model_name: str | None = None):
        self.graph = graph
        self.decisions = decisions
        self.model_name = model_name
        self._by_name = {d.name: d for d in decisions}
        unknown = set(self._by_name) - set(graph.group_index)
        if unknown:
            raise InvalidArchitectureError(f"decisions name groups the network does not have: {sorted(unknown)}")
        self.cost_model = CostModel(graph)

    # construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        min_keep_ratio: float = 0.1,
        round_to: int = 1,
        model_name: str | None = None,
    ) -> SearchSpace:
        """Analyze ``model`` and make one decision per prunable channel group.

        Args:
            model: Any CNN; it is traced once, not modified.
            example_input: A tensor shaped like the model's input (the batch size is ignored).
            min_keep_ratio: Every group keeps at least this fraction of its channels (and at least 1).
            round_to: Widths are multiples of this (the full width is always allowed).
            model_name: Recorded so that an architecture of another model is recognized.
        """
        if not 0.0 < min_keep_ratio <= 1.0:
            raise BudgetError(f"`0 < min_keep_ratio <= 1` must hold, but got {min_keep_ratio=}")
        if round_to < 1:
            raise BudgetError(f"`round_to >= 1` must hold, but got {round_to=}")
        graph = analyze(model, example_input)
        decisions = []
        for group in graph.groups:
            # A GroupNorm keeps its number of groups, so its channels must stay a multiple of it.
            step = round_to
            for member in group.members:
                module = model.get_submodule(member.layer)
                if isinstance(module, nn.GroupNorm):
                    step = math.lcm(step, module.num_groups)
            min_keep = max(1, math.ceil(min_keep_ratio * group.size))
            min_keep = min(group.size, math.ceil(min_keep / step) * step)
            decisions.append(WidthDecision(group.name, group.size, min_keep, step))
        space = cls(graph, decisions, model_name=model_name)
        measured = measure_flops(model, tuple(example_input.shape))
        if measured != space.full_flops:
            raise ConfigError(
                f"the cost model counts {space.full_flops:,} FLOPs for this model but torch's FlopCounterMode "
                f"measures {measured:,} (an operation outside Conv2d/Linear layers, such as a functional conv "
                "or an attention matmul), so FLOPs budgets would not be exact; this model is not supported"
            )
        return space

    # access ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.decisions)

    def __getitem__(self, name: str) -> WidthDecision:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        """Decision names in execution order."""
        return [d.name for d in self.decisions]

    # architectures ---------------------------------------------------------------------------------------
    def full(self) -> Architecture:
        """Every group at full width."""
        return Architecture({d.name: d.size for d in self.decisions})

    def smallest(self) -> Architecture:
        """Every group at its minimum width."""
        return Architecture({d.name: d.min_keep for d in self.decisions})

    def from_ratios(self, ratios: Mapping[str, float] | float) -> Architecture:
        """Widths nearest to a keep ratio per group (or one ratio for all)."""
        if isinstance(ratios, (int, float)):
            return Architecture({d.name: d.from_ratio(float(ratios)) for d in self.decisions})
        return Architecture({d.name: d.from_ratio(float(ratios[d.name])) for d in self.decisions})

    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly random valid architecture."""
        return Architecture({d.name: int(rng.choice(d.choices())) for d in self.decisions})

    def validate(self, architecture: Architecture) -> Architecture:
        """Raise `InvalidArchitectureError` naming the first problem; return the architecture otherwise."""
        unknown = sorted(set(architecture.widths) - set(self._by_name))
        if unknown:
            hint = "" if self.model_name is None else f" of model {self.model_name!r}"
            raise InvalidArchitectureError(
                f"architecture names groups that are not in the search space{hint}: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; valid groups are {self.names[:5]}"
                f"{' ...' if len(self.names) > 5 else ''} (is the architecture from another model?)"
            )
        for name, channels in architecture.widths.items():
            decision = self._by_name[name]
            if not decision.allows(channels):
                step = f" in steps of {decision.round_to}" if decision.round_to > 1 else ""
                raise InvalidArchitectureError(
                    f"width of group {name!r} must be between {decision.min_keep} and {decision.size}{step}, "
                    f"but got {channels}"
                )
        return architecture

    def complete(self, architecture: Architecture) -> Architecture:
        """The same architecture with every group spelled out (full width where it was left out)."""
        widths = {d.name: int(architecture.widths.get(d.name, d.size)) for d in self.decisions}
        return Architecture(widths, dict(architecture.bits))

    # costs -----------------------------------------------------------------------------------------------
    def costs(self, architecture: Architecture | Mapping[str, int]) -> Costs:
        """FLOPs and params of an architecture, analytically."""
        widths = architecture.widths if isinstance(architecture, Architecture) else architecture
        return self.cost_model.costs(widths)

    def flops(self, architecture: Architecture | Mapping[str, int]) -> int:
        """FLOPs per sample."""
        return self.costs(architecture).flops

    @property
    def full_flops(self) -> int:
        """FLOPs of the unpruned network."""
        return self.cost_model.full.flops

    @property
    def min_flops(self) -> int:
        """FLOPs with every group at its minimum width: no budget below this can be met."""
        return self.flops(self.smallest())

    def flops_budget(self, fraction: float) -> int:
        """The FLOPs limit for a budget given as a fraction of the full network's FLOPs."""
        if not 0.0 < fraction <= 1.0:
            raise BudgetError(f"the FLOPs budget must be a fraction in (0, 1], but got {fraction}")
        budget = math.floor(fraction * self.full_flops)
        if budget < self.min_flops:
            raise BudgetError(
                f"a FLOPs budget of {fraction:g} ({budget:,} FLOPs) is below what this search space can reach: "
                f"with every group at its minimum width the model still needs {self.min_flops:,} FLOPs "
                f"({self.min_flops / self.full_flops:.3f} of full); raise the budget or lower min_keep_ratio"
            )
        return budget

    # serialization ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model_name": self.model_name,
            "decisions": [
                {"name": d.name, "size": d.size, "min_keep": d.min_keep, "round_to": d.round_to}
                for d in self.decisions
            ],
            "graph": self.graph.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """Inverse of `to_dict`."""
        graph = NetworkGraph.from_dict(data["graph"])
        decisions = [WidthDecision(**d) for d in data["decisions"]]
        return cls(graph, decisions, model_name=data.get("model_name"))

    def save(self, path: str | Path) -> None:
        """Write the space as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a space written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
