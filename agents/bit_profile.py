"""The bits sensitivity profile: the score with ONE layer quantized at each allowed bit width, all else float.

For each conv/linear layer with a choice of bits, and each allowed bit width ``b`` below 32: the network with that
layer's weights at ``b`` bits (its input float), and with its input at ``b`` bits (its weights float); every
other layer float, every group at the widths profiled (full). Plus the float network itself. A layer's drop at
``(w, a)`` is its weight drop at ``w`` plus its activation drop at ``a``, each made monotone (the drop at ``b`` is
the worst drop measured at any bit width ``>= b``, and 0 at 32), so fewer bits never look better.

Why measured rather than a Fisher or Hessian estimate (HAWQ): the drop is exactly the evaluator's metric (top-1
after adaptive BN and calibration, or a task's metric), with the quantizer, the calibration and the proxy the
search is scored with, not a second-order guess of the loss; it costs ``layers x (weight choices + activation
choices) + 1`` evaluations (resnet20, 22 layers x 14 + 1 = 309), which a cache then makes a one-time cost for a
base model (`agents.profile_cache`). What it cannot see is how layers interact: the drops are added.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agents.bit_knapsack import BitPair
from agents.profile_cache import Points
from automl_prune.quantize.bits import FLOAT_BITS
from search_spaces import Architecture, SearchSpace

__all__ = ["FULL", "BitProfilePoint", "bit_drops", "bit_factors", "bit_profile_plan"]

FULL = "<full>"
"""The profile key of the float network (its point key is ``"float"``)."""
_SIDES = ("w", "a")


@dataclass(frozen=True)
class BitProfilePoint:
    """One profile evaluation: ``layer``'s weights (key ``"w<b>"``) or input (``"a<b>"``) at ``b`` bits."""

    layer: str
    key: str
    architecture: Architecture


def bit_profile_plan(space: SearchSpace, options: Mapping[str, Sequence[BitPair]],
                     widths: Architecture | None = None) -> list[BitProfilePoint]:
    """Every point of the bits profile at ``widths`` (default: full), the float network first."""
    base = Architecture(dict(space.complete(widths or space.full()).widths))
    points = [BitProfilePoint(FULL, "float", base)]
    for layer, pairs in options.items():
        if len(pairs) < 2:
            continue  # nothing to decide
        for side, index in zip(_SIDES, (0, 1), strict=True):
            for bits in sorted({p[index] for p in pairs if p[index] < FLOAT_BITS}, reverse=True):
                pair = (bits, FLOAT_BITS) if side == "w" else (FLOAT_BITS, bits)
                points.append(BitProfilePoint(layer, f"{side}{bits}", base.with_bits({layer: pair})))
    return points


def bit_factors(seed: int, index: int, layers: Sequence[str], spread: float = 2.0) -> dict[str, tuple[float, float]]:
    """Per layer, random factors in ``[1/spread, spread]`` (log-uniform) for its weight and activation drops:
    the perturbed profiles a search's later candidates hedge with (a generator per ``index``)."""
    rng = np.random.default_rng([seed, 15485863, index])
    draws = np.exp(rng.uniform(-math.log(spread), math.log(spread), size=(len(layers), 2)))
    return {layer: (float(w), float(a)) for layer, (w, a) in zip(layers, draws, strict=True)}


def bit_drops(points: Points, options: Mapping[str, Sequence[BitPair]],
              factors: Mapping[str, tuple[float, float]] | None = None) -> dict[str, dict[BitPair, float]]:
    """Per layer with a choice, the drop of each option: monotone weight drop + monotone activation drop.

    Args:
        points: The measured profile (``FULL`` -> ``"float"``, and per layer ``"w<b>"``/``"a<b>"``) -> metrics.
        options: Per layer, its ``(weight, activation)`` options (`agents.bit_knapsack.bit_options`).
        factors: Per layer, factors on its weight and activation drops (`bit_factors`); ``None``: 1.

    Raises:
        KeyError: A point of the plan is not measured.
    """
    base = float(points[FULL]["float"]["accuracy"])
    drops: dict[str, dict[BitPair, float]] = {}
    for layer, pairs in options.items():
        if len(pairs) < 2:
            continue
        measured = points.get(layer, {})
        per_side: list[dict[int, float]] = []
        for side, index in zip(_SIDES, (0, 1), strict=True):
            worst, side_drops = 0.0, {}
            for bits in sorted({p[index] for p in pairs}, reverse=True):
                if bits < FLOAT_BITS:
                    worst = max(worst, base - float(measured[f"{side}{bits}"]["accuracy"]))
                side_drops[bits] = worst
            per_side.append(side_drops)
        f_w, f_a = (factors or {}).get(layer, (1.0, 1.0))
        drops[layer] = {(w, a): f_w * per_side[0][w] + f_a * per_side[1][a] for w, a in pairs}
    return drops
