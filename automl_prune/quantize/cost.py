"""Analytic size and BOPs of a (width-compressed) architecture with per-layer bits, and the bit choices per layer.

Model size in bits, exactly what `automl_prune.quantize.packing` stores (its payload is ``ceil(size / 8)`` bytes):

- every quantized weight (a conv/linear layer with ``weight_bits < 32``): ``weight_bits`` bits;
- per quantized layer, one float32 scale per output channel (32 bits each; symmetric: no zero point);
- per layer with quantized activations, the input's float32 scale and float32 zero point (64 bits);
- every other parameter (biases, batch-norm and other per-channel parameters, the weights of float layers,
  parameters outside conv/linear/norm layers): 32 bits.

Buffers (batch-norm running statistics) are not parameters and are not counted: a deployment folds them into
the preceding conv, and `CostModel.params` does not count them either.

BOPs, the HAWQ-V3 form: ``sum over conv and linear layers of MACs x weight_bits x activation_bits``, with the
MACs of the compressed widths from `CostModel.layer_macs`; a float layer counts 32 x 32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from automl_prune.cost.flops import CostModel
from automl_prune.errors import BudgetError, ConfigError
from automl_prune.quantize.bits import FLOAT_BITS

__all__ = ["SCALE_BITS", "QuantCostModel", "SizeBreakdown", "bops_budget", "choices_per_layer", "size_budget"]

SCALE_BITS = 32
"""Bits of one stored quantization parameter (a float32 weight scale, activation scale or zero point)."""

Bits = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class SizeBreakdown:
    """Where the bits of a model's size go (see the module docstring); `total` is the size."""

    weight_bits: int
    scale_bits: int
    activation_bits: int
    float_bits: int

    @property
    def total(self) -> int:
        """Model size in bits."""
        return self.weight_bits + self.scale_bits + self.activation_bits + self.float_bits


class QuantCostModel:
    """Size in bits and BOPs of any widths + bits assignment, from a `CostModel` (microseconds per call)."""

    def __init__(self, cost_model: CostModel) -> None:
        self.cost_model = cost_model
        kinds = [cost_model.graph.layers[name].kind for name in cost_model.layer_names]
        self._rows = np.array([i for i, kind in enumerate(kinds) if kind in ("conv", "linear")], dtype=np.int64)
        self.layer_names: list[str] = [cost_model.layer_names[i] for i in self._rows]
        """Quantizable layers (conv and linear), in execution order."""
        self._index = {name: i for i, name in enumerate(self.layer_names)}
        self.full_size_bits = cost_model.full.params * FLOAT_BITS
        """Size of the unpruned float32 model."""
        self.full_bops = self.bops({}, {})
        """BOPs of the unpruned model at 32/32 bits."""

    # per layer -------------------------------------------------------------------------------------------
    def bit_arrays(self, bits: Bits) -> tuple[np.ndarray, np.ndarray]:
        """Weight and activation bits of every layer in `layer_names` order (32 where ``bits`` is silent)."""
        w_bits = np.full(len(self.layer_names), FLOAT_BITS, dtype=np.int64)
        a_bits = w_bits.copy()
        for name, pair in bits.items():
            i = self._index.get(name)
            if i is None:
                raise ConfigError(
                    f"bits name layer {name!r}, which is not a conv or linear layer of this network; "
                    f"quantizable layers are {self.layer_names[:5]}{' ...' if len(self.layer_names) > 5 else ''}"
                )
            w_bits[i], a_bits[i] = int(pair[0]), int(pair[1])
        return w_bits, a_bits

    def layer_macs(self, widths: Mapping[str, int]) -> np.ndarray:
        """MACs per sample of every quantizable layer (`layer_names` order) at ``widths``."""
        return self.cost_model.layer_macs(widths)[self._rows]

    def layer_weights(self, widths: Mapping[str, int]) -> np.ndarray:
        """Weight elements (no bias) of every quantizable layer at ``widths``."""
        return self.cost_model.layer_weight_params(widths)[self._rows]

    def layer_out_channels(self, widths: Mapping[str, int]) -> np.ndarray:
        """Output channels of every quantizable layer at ``widths`` (one weight scale each when quantized)."""
        return self.cost_model.layer_widths(widths)[1][self._rows]

    def layer_bops(self, widths: Mapping[str, int], bits: Bits) -> np.ndarray:
        """MACs x weight bits x activation bits of every quantizable layer."""
        w_bits, a_bits = self.bit_arrays(bits)
        return self.layer_macs(widths) * w_bits * a_bits

    # totals ----------------------------------------------------------------------------------------------
    def bops(self, widths: Mapping[str, int], bits: Bits) -> int:
        """Bit operations per sample (HAWQ-V3: MACs x b_w x b_a summed over conv and linear layers)."""
        return int(self.layer_bops(widths, bits).sum())

    def size_breakdown(self, widths: Mapping[str, int], bits: Bits) -> SizeBreakdown:
        """Model size in bits, by kind of storage (see the module docstring)."""
        w_bits, a_bits = self.bit_arrays(bits)
        return self._breakdown(self.layer_weights(widths), self.layer_out_channels(widths),
                               self.cost_model.params(widths), w_bits, a_bits)

    def size_bits(self, widths: Mapping[str, int], bits: Bits) -> int:
        """Model size in bits (what the packed weights take, but for padding the last byte)."""
        return self.size_breakdown(widths, bits).total

    def size_fraction(self, widths: Mapping[str, int], bits: Bits) -> float:
        """Size as a fraction of the unpruned float32 model."""
        return self.size_bits(widths, bits) / self.full_size_bits

    def bops_fraction(self, widths: Mapping[str, int], bits: Bits) -> float:
        """BOPs as a fraction of the unpruned model at 32/32 bits."""
        return self.bops(widths, bits) / self.full_bops

    @staticmethod
    def _breakdown(weights: np.ndarray, channels: np.ndarray, params: int, w_bits: np.ndarray,
                   a_bits: np.ndarray) -> SizeBreakdown:
        quantized = w_bits < FLOAT_BITS
        q_weights = int(np.where(quantized, weights, 0).sum())
        return SizeBreakdown(
            weight_bits=int(np.where(quantized, weights * w_bits, 0).sum()),
            scale_bits=int(np.where(quantized, channels, 0).sum()) * SCALE_BITS,
            activation_bits=int((a_bits < FLOAT_BITS).sum()) * 2 * SCALE_BITS,
            float_bits=(params - q_weights) * FLOAT_BITS,
        )

    # bounds ----------------------------------------------------------------------------------------------
    def lowest_bits(self, choices: Sequence[int] | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int]]:
        """Every layer at its smallest allowed weight and activation bits."""
        allowed = choices_per_layer(self.layer_names, choices)
        return {name: (min(allowed[name]), min(allowed[name])) for name in self.layer_names}


def choices_per_layer(layers: Sequence[str], choices: Sequence[int] | Mapping[str, Sequence[int]]) -> dict[
        str, tuple[int, ...]]:
    if isinstance(choices, Mapping):
        allowed = {name: tuple(sorted(int(c) for c in choices[name])) for name in layers}
    else:
        one = tuple(sorted(int(c) for c in choices))
        allowed = dict.fromkeys(layers, one)
    empty = [name for name, values in allowed.items() if not values]
    if empty:
        raise ConfigError(f"layer {empty[0]!r} has no allowed bit width")
    return allowed


def size_budget(cost: QuantCostModel, fraction: float) -> int:
    """The size limit in bits for a budget given as a fraction of the unpruned float32 model."""
    if not 0.0 < fraction <= 1.0:
        raise BudgetError(f"the size budget must be a fraction in (0, 1], but got {fraction}")
    return math.floor(fraction * cost.full_size_bits)


def bops_budget(cost: QuantCostModel, fraction: float) -> int:
    """The BOPs limit for a budget given as a fraction of the unpruned model at 32/32 bits."""
    if not 0.0 < fraction <= 1.0:
        raise BudgetError(f"the BOPs budget must be a fraction in (0, 1], but got {fraction}")
    return math.floor(fraction * cost.full_bops)
