"""`Budget`: every limit of one run, in absolute units, and the checks of an architecture against them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automl_prune.errors import BudgetError, ConfigError
from search_spaces.architecture import Architecture
from search_spaces.space import SearchSpace

__all__ = ["FLOPS_UNIT", "LATENCY_UNIT", "Budget"]

FLOPS_UNIT = "FLOPs"
"""The width unit of a FLOPs budget (a space with the analytic FLOPs as its width cost)."""

LATENCY_UNIT = "ns"
"""The width unit of a latency budget: predicted nanoseconds (`automl_prune.cost.latency.LatencyCostModel`)."""


@dataclass(frozen=True)
class Budget:
    """States and checks every limit of a run; the one value a searcher, an environment or a stage is given.

    Every limit is absolute. ``flops`` limits the space's width cost (`SearchSpace.flops`), whose unit
    ``width_unit`` names: ``"FLOPs"``, or ``"ns"`` of predicted latency for a latency budget (the space's width
    cost is then a `LatencyCostModel`, `SearchSpace.with_width_cost`). A budget applies only to a space with
    the same width unit (`check`).

    Attributes:
        flops: The width-cost limit (as `SearchSpace.flops_budget`, or `automl_prune.cost.latency.latency_budget`).
        size_bits: Model size in bits (as `SearchSpace.size_budget`), or ``None``: no size limit.
        bops: Bit operations (as `SearchSpace.bops_budget`), or ``None``: no BOPs limit.
        width_unit: What ``flops`` counts: `FLOPS_UNIT` or `LATENCY_UNIT` (a space's `width_cost_unit`).
    """

    flops: int
    size_bits: int | None = None
    bops: int | None = None
    width_unit: str = FLOPS_UNIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops", int(self.flops))
        for name in ("size_bits", "bops"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))
        object.__setattr__(self, "width_unit", str(self.width_unit))

    # construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_fractions(cls, space: SearchSpace, flops: float = 1.0, *, size: float | None = None,
                       bops: float | None = None, latency: float | None = None) -> Budget:
        """The budget of limits given as fractions of the full model, each checked reachable.

        Args:
            space: The search space the budget is for.
            flops: Of the full model's width cost (`SearchSpace.flops_budget`); 1: no width limit.
            size: Of the float32 model's size (`SearchSpace.size_budget`), or ``None``.
            bops: Of the 32/32-bit model's BOPs (`SearchSpace.bops_budget`), or ``None``.
            latency: Of the full model's predicted latency, or ``None``; needs a space whose width cost is
                predicted latency, and replaces the FLOPs limit (``flops`` must be 1).

        Raises:
            BudgetError: A fraction outside (0, 1], or one below what the space can reach.
            ConfigError: ``latency`` with a space that does not predict latency, or with ``flops`` below 1.
        """
        unit = space.width_cost_unit
        if latency is None:
            width = space.flops_budget(flops)
        else:
            if unit != LATENCY_UNIT:
                raise ConfigError(f"a latency budget needs a space whose width cost is predicted latency "
                                  f"({LATENCY_UNIT}), but this space's is {unit}")
            if flops < 1.0:
                raise ConfigError(f"a latency budget replaces the FLOPs budget: give latency or flops, not both "
                                  f"(got latency {latency} and flops {flops})")
            from automl_prune.cost.latency import latency_budget

            width = latency_budget(space, latency)
        return cls(width, None if size is None else space.size_budget(size),
                   None if bops is None else space.bops_budget(bops), width_unit=unit)

    def without_bit_limits(self) -> Budget:
        """The same width limit without the size and BOPs limits (what a float model's widths must meet)."""
        return dataclasses.replace(self, size_bits=None, bops=None)

    # what it limits ---------------------------------------------------------------------------------------
    @property
    def latency(self) -> bool:
        """Whether the width limit is predicted latency (``width_unit`` is `LATENCY_UNIT`), not FLOPs."""
        return self.width_unit == LATENCY_UNIT

    @property
    def has_bit_limits(self) -> bool:
        """Whether a size or a BOPs limit is set (they need a search that decides bits)."""
        return self.size_bits is not None or self.bops is not None

    # checks -----------------------------------------------------------------------------------------------
    def costs(self, space: SearchSpace, architecture: Architecture) -> dict[str, int]:
        """Each limited quantity of ``architecture`` (the keys of `limits`): width cost, size, BOPs."""
        found = {"flops": space.flops(architecture)}
        if self.size_bits is not None:
            found["size_bits"] = space.size_bits(architecture)
        if self.bops is not None:
            found["bops"] = space.bops(architecture)
        return found

    def violations(self, space: SearchSpace, architecture: Architecture) -> list[str]:
        """One line per limit ``architecture`` is over (FLOPs, size, BOPs); empty when it meets them all."""
        found = []
        costs = self.costs(space, architecture)
        if costs["flops"] > self.flops:
            found.append(f"{costs['flops']:,} FLOPs over the FLOPs budget of {self.flops:,}")
        if self.size_bits is not None and costs["size_bits"] > self.size_bits:
            found.append(f"{costs['size_bits']:,} bits of model size over the size budget of {self.size_bits:,}")
        if self.bops is not None and costs["bops"] > self.bops:
            found.append(f"{costs['bops']:,} BOPs over the BOPs budget of {self.bops:,}")
        return found

    def fits(self, space: SearchSpace, architecture: Architecture) -> bool:
        """Whether ``architecture`` meets every limit."""
        return not self.violations(space, architecture)

    def check(self, space: SearchSpace, search: str = "widths") -> None:
        """Refuse a budget that no architecture of ``space`` a ``search`` may propose can meet.

        ``search`` is what is decided: ``"widths"`` (a float model, so no size or BOPs limit), ``"bits"`` (every
        group at full width) or ``"both"``.

        Raises:
            ConfigError: Another width unit than the space's, or bit limits with ``search="widths"``.
            BudgetError: A limit below what the space can reach under ``search``.
        """
        if self.width_unit != space.width_cost_unit:
            raise ConfigError(f"the budget limits {self.width_unit} but the search space's width cost is "
                              f"{space.width_cost_unit}; make the budget from this space (Budget.from_fractions)")
        if self.flops < space.min_flops:
            raise BudgetError(
                f"`budget_flops >= min_flops` must hold, but got budget_flops={self.flops} < {space.min_flops} "
                f"(valid range: {space.min_flops}..{space.full_flops})"
            )
        if search == "widths":
            if self.has_bit_limits:
                raise ConfigError("size and BOPs budgets need search='bits' or 'both' (search='widths' keeps a "
                                  "float model)")
            return
        if search == "bits" and space.full_flops > self.flops:
            raise BudgetError(
                f"search='bits' keeps every channel ({space.full_flops:,} FLOPs) but the FLOPs budget is "
                f"{self.flops:,}; use search='both' or a FLOPs budget of 1.0"
            )
        lowest = space.lowest_bits(space.full() if search == "bits" else space.smallest())
        for what, limit, cost in (("size", self.size_bits, space.size_bits), ("BOPs", self.bops, space.bops)):
            if limit is not None and cost(lowest) > limit:
                widths = "full widths" if search == "bits" else "every group at its minimum width"
                raise BudgetError(
                    f"the {what} budget ({limit:,}) cannot be met: with {widths} and every layer at its lowest "
                    f"bits the model needs {cost(lowest):,}; raise the budget"
                    f"{', or use search=both' if search == 'bits' else ''}"
                )

    # serialization ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"flops": self.flops, "size_bits": self.size_bits, "bops": self.bops, "width_unit": self.width_unit}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        """Inverse of `to_dict` (``width_unit`` defaults to FLOPs)."""
        return cls(int(data["flops"]), data.get("size_bits"), data.get("bops"),
                   width_unit=str(data.get("width_unit", FLOPS_UNIT)))
