"""`SearchSpace`: one width decision per prunable channel group and one bits decision per conv/linear layer."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_prune.cost.flops import CostModel, Costs
from automl_prune.errors import BudgetError, ConfigError, InvalidArchitectureError
from automl_prune.graph.analysis import NetworkGraph, analyze, measure_flops
from automl_prune.quantize.bits import FLOAT_BITS, MAX_BITS, MIN_BITS
from automl_prune.quantize.cost import QuantCostModel, SizeBreakdown
from search_spaces.architecture import Architecture, InvalidBitsError
from search_spaces.bit_fitting import fit_bits

__all__ = ["DEFAULT_BIT_CHOICES", "BitDecision", "SearchSpace", "WidthDecision"]

DEFAULT_BIT_CHOICES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
"""Bit widths a searcher may give a layer's weights and activations (32, float, is always allowed too)."""

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


@dataclass(frozen=True)
class BitDecision:
    """Which bit widths a conv or linear layer's weights and its input may take: ``choices``, or 32 (float)."""

    name: str
    choices: tuple[int, ...]

    def allows(self, bits: int) -> bool:
        """Whether ``bits`` is valid for this layer's weights or activations."""
        return bits == FLOAT_BITS or bits in self.choices

    def describe(self) -> str:
        """The allowed set, as error messages spell it."""
        return f"one of {list(self.choices)} or {FLOAT_BITS} (float)"


class SearchSpace:
    """Width decisions over a network's channel groups, in the order the network runs them, and bit decisions.

    Width cost: `flops` (and `full_flops`, `min_flops`, `flops_budget`, `costs`, `cost_model`) is the analytic FLOPs
    count, or, in a space made by `with_width_cost`, another additive cost of the widths (predicted latency in
    nanoseconds), which every searcher then budgets unchanged (a `search_spaces.budget.Budget` states the unit:
    ``width_unit``, from `width_cost_unit`); `true_costs` is always FLOPs and params.

    Bit decisions: one per conv and linear layer (`quantizable_layers`, execution order), weight and input
    activation bits each from ``bit_choices`` (or 32, float); a layer in ``pinned_bits`` may only take its pinned
    value (or 32). An architecture without bits is a float model and always valid.
    """

    def __init__(
        self,
        graph: NetworkGraph,
        decisions: list[WidthDecision],
        model_name: str | None = None,
        *,
        bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
        pinned_bits: Mapping[str, int] | None = None,
        width_cost: CostModel | None = None,
    ):
        self.graph = graph
        self.decisions = decisions
        self.model_name = model_name
        self._by_name = {d.name: d for d in decisions}
        unknown = set(self._by_name) - set(graph.group_index)
        if unknown:
            raise InvalidArchitectureError(f"decisions name groups the network does not have: {sorted(unknown)}")
        self.flops_model = CostModel(graph)
        if width_cost is not None and width_cost.layer_names != self.flops_model.layer_names:
            raise ConfigError("the width cost model was built for another network (its layers differ)")
        # What searchers see as "FLOPs" (`flops`, `full_flops`, `flops_budget`, `cost_model`): the analytic FLOPs,
        # or a pluggable width cost such as predicted latency (`automl_prune.cost.latency.LatencyCostModel`).
        self.cost_model = self.flops_model if width_cost is None else width_cost
        self.quant_cost_model = QuantCostModel(self.flops_model)
        self.bit_choices = _check_bit_choices(bit_choices)
        self.pinned_bits = {str(k): int(v) for k, v in (pinned_bits or {}).items()}
        layers = self.quant_cost_model.layer_names
        for name, value in self.pinned_bits.items():
            if name not in layers:
                raise InvalidBitsError(f"pinned bits name layer {name!r}, which is not a conv or linear layer")
            if value != FLOAT_BITS:  # pinned to 32: kept float (a layer excluded from compression)
                _check_bit_choices([value])
        self.bit_decisions = [
            BitDecision(name, (self.pinned_bits[name],) if name in self.pinned_bits else self.bit_choices)
            for name in layers
        ]
        self._bits_by_name = {d.name: d for d in self.bit_decisions}

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
        bit_choices: Sequence[int] = DEFAULT_BIT_CHOICES,
        pin_first_last: int | None = None,
    ) -> SearchSpace:
        """Analyze ``model`` and make one decision per prunable channel group.

        Args:
            model: Any CNN; it is traced once, not modified.
            example_input: A tensor shaped like the model's input (the batch size is ignored).
            min_keep_ratio: Every group keeps at least this fraction of its channels (and at least 1).
            round_to: Widths are multiples of this (the full width is always allowed).
            model_name: Recorded so that an architecture of another model is recognized.
            bit_choices: Bit widths each layer's weights and input may take (besides 32, float).
            pin_first_last: Pin the first and the last conv/linear layer to this many bits (HAQ: 8), or None.
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
        pinned: dict[str, int] = {}
        if pin_first_last is not None:
            weighted = sorted((n for n, layer in graph.layers.items() if layer.kind in ("conv", "linear")),
                              key=lambda n: graph.layers[n].order)
            pinned = {weighted[0]: pin_first_last, weighted[-1]: pin_first_last}
        space = cls(graph, decisions, model_name=model_name, bit_choices=bit_choices, pinned_bits=pinned)
        measured = measure_flops(model, tuple(example_input.shape))
        if measured != space.full_flops:
            raise ConfigError(
                f"the cost model counts {space.full_flops:,} FLOPs for this model but torch's FlopCounterMode "
                f"measures {measured:,} (an operation outside Conv2d/Linear layers, such as a functional conv "
                "or an attention matmul), so FLOPs budgets would not be exact; this model is not supported"
            )
        return space

    def with_width_cost(self, width_cost: CostModel | None) -> SearchSpace:
        """The same space whose width cost (what `flops` returns) is ``width_cost`` (``None``: FLOPs)."""
        return SearchSpace(self.graph, list(self.decisions), model_name=self.model_name, bit_choices=self.bit_choices,
                           pinned_bits=self.pinned_bits, width_cost=width_cost)

    @property
    def width_cost_unit(self) -> str:
        """What `flops` counts: ``"FLOPs"``, or the width cost's ``unit`` (``"ns"`` for predicted latency)."""
        return str(getattr(self.cost_model, "unit", "FLOPs")) if self.cost_model is not self.flops_model else "FLOPs"

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
        """Raise `InvalidArchitectureError` naming the first problem; return the architecture otherwise.

        Bits are checked after widths; a problem with bits raises `InvalidBitsError` (also a `ConfigError`).
        """
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
        self._validate_bits(architecture.bits)
        return architecture

    def _validate_bits(self, bits: Mapping[str, tuple[int, int]]) -> None:
        unknown = sorted(set(bits) - set(self._bits_by_name))
        if unknown:
            layers = self.quantizable_layers
            raise InvalidBitsError(
                f"bits name layers that are not conv/linear layers of the search space: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}; quantizable layers are {layers[:5]}"
                f"{' ...' if len(layers) > 5 else ''}"
            )
        for name, (w_bits, a_bits) in bits.items():
            decision = self._bits_by_name[name]
            for kind, value in (("weight", w_bits), ("activation", a_bits)):
                if not decision.allows(value):
                    raise InvalidBitsError(
                        f"{kind} bits of layer {name!r} must be {decision.describe()}, but got {value}"
                    )

    def complete(self, architecture: Architecture) -> Architecture:
        """The same architecture with every group spelled out (full width where it was left out)."""
        widths = {d.name: int(architecture.widths.get(d.name, d.size)) for d in self.decisions}
        return Architecture(widths, dict(architecture.bits))

    # bits ------------------------------------------------------------------------------------------------
    @property
    def quantizable_layers(self) -> list[str]:
        """Module paths of the conv and linear layers (the bit decisions), in execution order."""
        return [d.name for d in self.bit_decisions]

    def bit_decision(self, layer: str) -> BitDecision:
        """The bit decision of ``layer``."""
        return self._bits_by_name[layer]

    def uniform_bits(
        self, weight_bits: int, activation_bits: int | None = None, architecture: Architecture | None = None
    ) -> Architecture:
        """``architecture`` (default: full widths) with every layer at the given bits (pinned layers: pinned)."""
        activation_bits = weight_bits if activation_bits is None else activation_bits
        base = self.full() if architecture is None else architecture
        bits = {
            d.name: (d.choices[0], d.choices[0]) if d.name in self.pinned_bits else (weight_bits, activation_bits)
            for d in self.bit_decisions
        }
        return self.validate(base.with_bits(bits))

    def sample_bits(self, rng: np.random.Generator, architecture: Architecture | None = None) -> Architecture:
        """``architecture`` (default: full widths) with uniformly random weight and activation bits per layer."""
        base = self.full() if architecture is None else architecture
        bits = {d.name: (int(rng.choice(d.choices)), int(rng.choice(d.choices))) for d in self.bit_decisions}
        return base.with_bits(bits)

    def lowest_bits(self, architecture: Architecture | None = None) -> Architecture:
        """``architecture`` (default: smallest widths) with every layer at its lowest allowed bits."""
        base = self.smallest() if architecture is None else architecture
        return base.with_bits({d.name: (min(d.choices), min(d.choices)) for d in self.bit_decisions})

    def size_breakdown(self, architecture: Architecture) -> SizeBreakdown:
        """Model size in bits by kind of storage (`automl_prune.quantize.cost`)."""
        return self.quant_cost_model.size_breakdown(architecture.widths, architecture.bits)

    def size_bits(self, architecture: Architecture) -> int:
        """Model size in bits: quantized weights, their scales, activation ranges, float parameters."""
        return self.quant_cost_model.size_bits(architecture.widths, architecture.bits)

    def bops(self, architecture: Architecture) -> int:
        """Bit operations per sample: MACs x weight bits x activation bits over conv and linear layers."""
        return self.quant_cost_model.bops(architecture.widths, architecture.bits)

    @property
    def full_size_bits(self) -> int:
        """Size of the unpruned float32 model in bits."""
        return self.quant_cost_model.full_size_bits

    @property
    def full_bops(self) -> int:
        """BOPs of the unpruned model at 32/32 bits."""
        return self.quant_cost_model.full_bops

    def size_fraction(self, architecture: Architecture) -> float:
        """Size as a fraction of the unpruned float32 model."""
        return self.size_bits(architecture) / self.full_size_bits

    def bops_fraction(self, architecture: Architecture) -> float:
        """BOPs as a fraction of the unpruned model at 32/32 bits."""
        return self.bops(architecture) / self.full_bops

    def size_budget(self, fraction: float) -> int:
        """The size limit in bits for a budget given as a fraction of the float32 model; checked reachable."""
        return self._bits_budget("size", fraction, self.full_size_bits, self.size_bits(self.lowest_bits()))

    def bops_budget(self, fraction: float) -> int:
        """The BOPs limit for a budget given as a fraction of the 32/32-bit model; checked reachable."""
        return self._bits_budget("BOPs", fraction, self.full_bops, self.bops(self.lowest_bits()))

    @staticmethod
    def _bits_budget(what: str, fraction: float, full: int, lowest: int) -> int:
        if not 0.0 < fraction <= 1.0:
            raise BudgetError(f"the {what} budget must be a fraction in (0, 1], but got {fraction}")
        budget = math.floor(fraction * full)
        if budget < lowest:
            raise BudgetError(
                f"a {what} budget of {fraction:g} ({budget:,}) is below what this search space can reach: with every "
                f"group at its minimum width and every layer at its lowest bits the model still needs {lowest:,} "
                f"({lowest / full:.4f} of full); raise the budget, lower min_keep_ratio, or allow fewer bits"
            )
        return budget

    def fit_bits(
        self, architecture: Architecture, *, size: float | None = None, bops: float | None = None
    ) -> Architecture:
        """Take bits off the costliest layers until ``architecture`` fits the size and BOPs budgets (fractions).

        Widths are kept (`search_spaces.bit_fitting.fit_bits`); bits are never raised.

        Raises:
            BudgetError: A budget that is not a fraction, or that these widths cannot meet at the lowest bits.
        """
        return fit_bits(
            self.quant_cost_model,
            self.validate(architecture),
            choices={d.name: d.choices for d in self.bit_decisions},
            max_size_bits=None if size is None else self.size_budget(size),
            max_bops=None if bops is None else self.bops_budget(bops),
        )

    # costs -----------------------------------------------------------------------------------------------
    def costs(self, architecture: Architecture | Mapping[str, int]) -> Costs:
        """FLOPs (the width cost) and params of an architecture, analytically."""
        widths = architecture.widths if isinstance(architecture, Architecture) else architecture
        return self.cost_model.costs(widths)

    def true_costs(self, architecture: Architecture | Mapping[str, int]) -> Costs:
        """Analytic FLOPs and params, whatever the width cost."""
        widths = architecture.widths if isinstance(architecture, Architecture) else architecture
        return self.flops_model.costs(widths)

    def flops(self, architecture: Architecture | Mapping[str, int]) -> int:
        """FLOPs per sample (the width cost: predicted latency in a `with_width_cost` space)."""
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
            step = max((d.round_to for d in self.decisions), default=1)
            # Which setting holds the minimum up: with round_to > 1 every group keeps at least one multiple of it,
            # whatever min_keep_ratio says.
            floor = self.flops({d.name: min(d.size, d.round_to) for d in self.decisions}) if step > 1 else 0
            advice = (f"lower round_to ({step}: with it every group keeps at least {step} channels, "
                      f"{floor:,} FLOPs) or raise the budget" if floor > budget
                      else "raise the budget or lower min_keep_ratio")
            raise BudgetError(
                f"a FLOPs budget of {fraction:g} ({budget:,} FLOPs) is below what this search space can reach: "
                f"with every group at its minimum width the model still needs {self.min_flops:,} FLOPs "
                f"({self.min_flops / self.full_flops:.3f} of full); {advice}"
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
            "bits": {"choices": list(self.bit_choices), "pinned": dict(self.pinned_bits)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """Inverse of `to_dict`."""
        graph = NetworkGraph.from_dict(data["graph"])
        decisions = [WidthDecision(**d) for d in data["decisions"]]
        bits = data.get("bits") or {}
        return cls(graph, decisions, model_name=data.get("model_name"),
                   bit_choices=bits.get("choices", DEFAULT_BIT_CHOICES), pinned_bits=bits.get("pinned"))

    def save(self, path: str | Path) -> None:
        """Write the space as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read a space written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_bit_choices(choices: Sequence[int]) -> tuple[int, ...]:
    values = tuple(sorted({int(c) for c in choices}))
    bad = [v for v in values if not MIN_BITS <= v <= MAX_BITS]
    if not values or bad:
        raise ConfigError(
            f"bit choices must be a non-empty set of integers in [{MIN_BITS}, {MAX_BITS}] ({FLOAT_BITS}, float, is "
            f"always allowed), but got {list(choices)}"
        )
    return values
