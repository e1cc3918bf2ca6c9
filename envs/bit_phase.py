"""`BitPhase`: HAQ's layer-by-layer bit decisions under size and BOPs walls, shared by the quantization and the
joint environments (`envs.bits_env`).

Each quantizable layer (conv or linear, execution order) gets a weight and an activation bit width from its
allowed set in one step. An action value in ``[-1, 1]`` per bit width maps piecewise linearly onto the index of
the layer's allowed bits: ``-1`` the lowest, ``0`` the *uniform* bits (the highest single bit width whose
assignment to every layer meets the budgets at these widths, HAQ's uniform baseline), ``+1`` the highest;
then rounded to the nearest index. HAQ's action wall then clips the pair so that, with every later layer at its
lowest bits, the size and BOPs stay within budget: among the pairs at or below the asked ones, the fitting pair
with the most ``weight_bits x activation_bits`` (then more weight bits) is taken. Since an episode starts
with the lowest bits everywhere within budget, and each step keeps that so, every episode ends within budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from automl_prune.errors import BudgetError, ConfigError
from search_spaces import Architecture, Budget, SearchSpace

__all__ = ["BIT_FEATURES", "BitPhase"]

#: Observation features of a layer, in order (HAQ's layer embedding, Wang et al. 2019, section 3.2). The first
#: ten are static at the episode's widths, normalized by their maximum over layers at full width; the last four
#: change during the episode and are fractions already.
BIT_FEATURES: tuple[str, ...] = (
    "index",
    "layer_type",  # 0 conv, 1 linear
    "depthwise",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "feature_map_size",
    "weights",  # weight elements (HAQ: n_params)
    "macs",
    "size_used",  # size with the bits decided so far and the rest at their lowest, / the size budget
    "bops_used",  # the same for BOPs
    "previous_weight_bits",  # the previous layer's weight bits as a fraction of its range (1 at the start)
    "previous_activation_bits",
)


class BitPhase:
    """Bits for every quantizable layer of ``space``, one layer per `decide`, under size and BOPs budgets.

    Args:
        space: The search space (its bit decisions, in execution order, are the steps).
        budget: Its ``size_bits`` and ``bops`` limits (either may be ``None``) are what the final architecture may
            not exceed; its width limit is the width phase's business.
    """

    def __init__(self, space: SearchSpace, budget: Budget) -> None:
        if not space.bit_decisions:
            raise ConfigError("the search space has no conv or linear layer: there is nothing to quantize")
        self.space = space
        self.budget = budget
        self.layers = space.quantizable_layers
        self.choices = [d.choices for d in space.bit_decisions]
        self._lowest = {name: (c[0], c[0]) for name, c in zip(self.layers, self.choices, strict=True)}
        self._kinds = [space.graph.layers[name] for name in self.layers]
        rows = {name: i for i, name in enumerate(space.cost_model.layer_names)}
        self._rows = np.array([rows[name] for name in self.layers], dtype=np.int64)
        self._peak = self._raw_static({}).max(axis=0)
        self._widths: dict[str, int] = {}
        self._bits: dict[str, tuple[int, int]] = {}
        self._static = np.zeros((len(self.layers), 10))
        self._centre: list[int] = []

    def __len__(self) -> int:
        return len(self.layers)

    # budgets ----------------------------------------------------------------------------------------------
    def fits(self, widths: Mapping[str, int], bits: Mapping[str, tuple[int, int]]) -> bool:
        """Whether ``widths`` with ``bits`` meet the size and BOPs budgets."""
        cost = self.space.quant_cost_model
        size, bops = self.budget.size_bits, self.budget.bops
        return ((size is None or cost.size_bits(widths, bits) <= size)
                and (bops is None or cost.bops(widths, bits) <= bops))

    def fits_at_lowest(self, widths: Mapping[str, int]) -> bool:
        """Whether ``widths`` with every layer at its lowest bits meet the budgets (the episode's invariant)."""
        return self.fits(widths, self._lowest)

    def _with_rest_lowest(self, index: int, pair: tuple[int, int]) -> dict[str, tuple[int, int]]:
        bits = {**self._lowest, **self._bits}
        bits[self.layers[index]] = pair
        return bits

    # the episode ------------------------------------------------------------------------------------------
    def start(self, widths: Mapping[str, int]) -> None:
        """Begin deciding bits for ``widths`` (every group named); they must fit at the lowest bits."""
        self._widths = dict(widths)
        if not self.fits_at_lowest(self._widths):
            raise BudgetError(
                "the size or BOPs budget cannot be met by these widths even with every layer at its lowest bits"
            )
        self._bits = {}
        raw = self._raw_static(self._widths)
        self._static = np.divide(raw, self._peak, out=np.zeros_like(raw), where=self._peak > 0)
        uniform = self._uniform_bits()
        self._centre = [c.index(uniform) if uniform in c else 0 for c in self.choices]

    def _uniform_bits(self) -> int:
        """The highest single bit width that meets the budgets on every (unpinned) layer at these widths."""
        values = sorted({b for c in self.choices for b in c}, reverse=True)
        for value in values:
            bits = {name: (value, value) if value in c else (c[0], c[0])
                    for name, c in zip(self.layers, self.choices, strict=True)}
            if self.fits(self._widths, bits):
                return value
        return values[-1]

    def bits_for(self, index: int, action: np.ndarray) -> tuple[int, int]:
        """The (weight, activation) bits layer ``index`` gets for a two-value ``action`` in ``[-1, 1]``."""
        choices = self.choices[index]
        asked = tuple(choices[self._index(index, float(v))] for v in action[:2])
        w_asked, a_asked = int(asked[0]), int(asked[1])
        if self.fits(self._widths, self._with_rest_lowest(index, (w_asked, a_asked))):
            return w_asked, a_asked
        best: tuple[int, int, int] | None = None
        for w_bits in (c for c in choices if c <= w_asked):
            # the most activation bits that still fit with these weight bits (costs grow with both)
            for a_bits in sorted((c for c in choices if c <= a_asked), reverse=True):
                if self.fits(self._widths, self._with_rest_lowest(index, (w_bits, a_bits))):
                    candidate = (w_bits * a_bits, w_bits, a_bits)
                    best = candidate if best is None or candidate > best else best
                    break
        if best is None:  # cannot happen: the lowest pair fits by the episode's invariant
            raise RuntimeError(f"no bits of layer {self.layers[index]!r} keep the budget reachable")
        return best[1], best[2]

    def _index(self, index: int, value: float) -> int:
        """The index into layer ``index``'s allowed bits for one action value (0 at the uniform bits)."""
        top = len(self.choices[index]) - 1
        centre = self._centre[index]
        value = min(1.0, max(-1.0, value))
        position = centre + value * (centre if value <= 0.0 else top - centre)
        return min(top, max(0, math.floor(position + 0.5)))

    def decide(self, index: int, pair: tuple[int, int]) -> None:
        """Record layer ``index``'s bits."""
        self._bits[self.layers[index]] = (int(pair[0]), int(pair[1]))

    def architecture(self, extra: Mapping[str, tuple[int, int]] | None = None) -> Architecture:
        """The episode's widths with the bits decided so far (and ``extra``)."""
        return Architecture(dict(self._widths)).with_bits({**self._bits, **(extra or {})})

    @property
    def bits(self) -> dict[str, tuple[int, int]]:
        """The bits decided so far in this episode."""
        return dict(self._bits)

    # embedding --------------------------------------------------------------------------------------------
    def _raw_static(self, widths: Mapping[str, int]) -> np.ndarray:
        cost = self.space.quant_cost_model
        cin, cout = (a[self._rows] for a in self.space.cost_model.layer_widths(widths))
        weights, macs = cost.layer_weights(widths), cost.layer_macs(widths)
        table = [
            [float(i), 1.0 if layer.kind == "linear" else 0.0, float(layer.depthwise), float(cin[i]),
             float(cout[i]), float(layer.kernel_elems), float(layer.stride) if layer.kind == "conv" else 0.0,
             float(layer.out_size), float(weights[i]), float(macs[i])]
            for i, layer in enumerate(self._kinds)
        ]
        return np.array(table, dtype=np.float64)

    def features(self, index: int, previous: tuple[float, float]) -> np.ndarray:
        """Layer ``index``'s embedding (`BIT_FEATURES`) given the bits decided so far."""
        bits = {**self._lowest, **self._bits}
        cost = self.space.quant_cost_model
        size_scale = self.budget.size_bits or cost.full_size_bits
        bops_scale = self.budget.bops or cost.full_bops
        dynamic = [cost.size_bits(self._widths, bits) / size_scale, cost.bops(self._widths, bits) / bops_scale,
                   previous[0], previous[1]]
        return np.clip(np.concatenate([self._static[index], dynamic]), 0.0, 1.0)

    def fraction(self, index: int, pair: tuple[int, int]) -> tuple[float, float]:
        """``pair`` as fractions of layer ``index``'s range of bits (the next step's previous-action features)."""
        choices = self.choices[index]
        top = max(1, len(choices) - 1)
        return choices.index(pair[0]) / top, choices.index(pair[1]) / top
