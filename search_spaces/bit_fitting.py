"""HAQ's projection: bits taken off the costliest layers of an architecture until it fits size and BOPs budgets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from automl_prune.errors import BudgetError
from automl_prune.quantize.bits import FLOAT_BITS
from automl_prune.quantize.cost import QuantCostModel, choices_per_layer
from search_spaces.architecture import Architecture

__all__ = ["fit_bits"]


def _step_down(value: int, allowed: tuple[int, ...]) -> int | None:
    """The next allowed bit width below ``value`` (32 steps to the largest allowed), or None at the bottom."""
    lower = [c for c in allowed if c < value]
    return max(lower) if lower else None


def fit_bits(
    cost: QuantCostModel,
    architecture: Architecture,
    *,
    choices: Sequence[int] | Mapping[str, Sequence[int]],
    max_size_bits: int | None = None,
    max_bops: int | None = None,
) -> Architecture:
    """The architecture with bits taken off the costliest layers until it fits both budgets (HAQ's projection).

    Widths are kept. While the size is over ``max_size_bits``, the layer whose weights take the most bits
    (weights x weight bits) loses one step of weight bits (32 steps to the largest allowed width); while the BOPs
    are over ``max_bops``, the layer with the most BOPs loses one step of the bit width (weight or activation)
    whose step saves more (weight on a tie). Ties between layers go to the earlier layer. Bits are never raised, so
    an architecture already within budget is returned unchanged. Deterministic.

    Args:
        cost: The network's `QuantCostModel`.
        architecture: Widths and starting bits (layers not named are at 32/32).
        choices: Allowed bits (below 32), for every layer or per layer name (pinned layers: one value).
        max_size_bits: Size budget in bits, or None.
        max_bops: BOPs budget, or None.

    Raises:
        BudgetError: Even every layer at its lowest allowed bits does not fit.
    """
    widths = architecture.widths
    allowed = choices_per_layer(cost.layer_names, choices)
    w_bits, a_bits = cost.bit_arrays(architecture.bits)
    weights, channels = cost.layer_weights(widths), cost.layer_out_channels(widths)
    macs, params = cost.layer_macs(widths), cost.cost_model.params(widths)
    names = cost.layer_names

    def size() -> int:
        return QuantCostModel._breakdown(weights, channels, params, w_bits, a_bits).total

    while True:
        over_size = max_size_bits is not None and size() > max_size_bits
        over_bops = max_bops is not None and int((macs * w_bits * a_bits).sum()) > max_bops
        if not (over_size or over_bops):
            break
        # candidates: (cost of the layer, -index, which bit width, new value); the max wins
        best: tuple[int, int, int, int] | None = None
        for i, name in enumerate(names):
            w_next = _step_down(int(w_bits[i]), allowed[name])
            if over_size:
                if w_next is not None and weights[i] > 0:
                    candidate = (int(weights[i] * w_bits[i]), -i, 0, w_next)
                    best = candidate if best is None or candidate > best else best
                continue
            a_next = _step_down(int(a_bits[i]), allowed[name])
            saves_w = -1 if w_next is None else int(macs[i] * (w_bits[i] - w_next) * a_bits[i])
            saves_a = -1 if a_next is None else int(macs[i] * w_bits[i] * (a_bits[i] - a_next))
            if max(saves_w, saves_a) <= 0:
                continue
            which, value = (0, w_next) if saves_w >= saves_a else (1, a_next)
            candidate = (int(macs[i] * w_bits[i] * a_bits[i]), -i, which, int(value))  # type: ignore[arg-type]
            best = candidate if best is None or candidate > best else best
        if best is None:
            what = "size" if over_size else "BOPs"
            limit = max_size_bits if over_size else max_bops
            raise BudgetError(
                f"the {what} budget ({limit:,}) cannot be met by these widths even with every layer at its lowest "
                f"allowed bits; raise the budget, lower the widths, or allow fewer bits"
            )
        _, neg_i, which, value = best
        (w_bits if which == 0 else a_bits)[-neg_i] = value
    bits = {
        name: (int(w_bits[i]), int(a_bits[i]))
        for i, name in enumerate(names)
        if (int(w_bits[i]), int(a_bits[i])) != (FLOAT_BITS, FLOAT_BITS)
    }
    return replace(architecture, bits=bits)
