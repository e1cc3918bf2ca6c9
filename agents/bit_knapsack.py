"""Bits per layer as a multiple-choice knapsack: the least summed drop under the size and BOPs limits, exactly.

Each conv/linear layer takes one ``(weight_bits, activation_bits)`` option. Given a drop per layer and option
(how much the score falls with that layer at those bits: `agents.sensitivity`), the allocation minimises the
summed drops subject to ``size <= budget.size_bits`` and ``BOPs <= budget.bops``. Both are sums over layers at
fixed widths (`automl_prune.quantize.cost`):

- size: a layer with quantized weights stores ``weights x w`` bits and one 32-bit scale per output channel, a
  float one ``weights x 32``; quantized activations add a 32-bit scale and zero point (64 bits); every parameter
  that is not a conv/linear weight (biases, norms) is a constant ``x 32``. `BitCosts` keeps these per-layer
  terms and the constant, so ``size_constant + sum of the chosen terms`` is `SearchSpace.size_bits` exactly;
- BOPs: ``MACs x w x a`` per layer (a float side counts 32).

`solve_multiple_choice` solves it as a MILP with `scipy.optimize.milp` (HiGHS): binary ``x[layer, option]``, one
option per layer, the limits as linear rows. Costs are shifted by each layer's cheapest option and scaled by
the slack left, objective values to [0, 1], so the solver works on well-scaled numbers; the answer's costs are
then recounted in integers, and a row the solver's tolerance let over its limit is tightened and solved again.
The allocation is checked once more with `Budget.violations`, the independent count every searcher is held to.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from automl_prune.errors import BudgetError
from automl_prune.quantize.bits import FLOAT_BITS
from automl_prune.quantize.cost import SCALE_BITS
from search_spaces import Architecture, Budget, SearchSpace

__all__ = ["BitCosts", "BitPair", "allocate_bits", "bit_costs", "bit_options", "solve_multiple_choice"]

BitPair = tuple[int, int]
_RETRIES = 4  # re-solves with a tightened row when the solver's tolerance let the answer over a limit


def solve_multiple_choice(
    values: Sequence[Sequence[float]],
    costs: Sequence[Sequence[Sequence[int] | np.ndarray]],
    limits: Sequence[int],
    *,
    tie_break: Sequence[Sequence[float]] | None = None,
    time_limit: float | None = None,
) -> list[int] | None:
    """The option per group with the least summed value whose summed costs meet every limit (exact MILP).

    Args:
        values: Per group, the value of each of its options (minimised).
        costs: Per constraint, per group, the integer cost of each option.
        limits: Per constraint, the most the chosen options' costs may sum to.
        tie_break: Per group, a number in [0, 1] per option, added to the values below their resolution (the
            smallest difference between two distinct values, divided by twice the number of groups), so that of
            options with equal values the one with the smaller number is preferred; ``None``: none.
        time_limit: Seconds HiGHS may take (``None``: until optimal); the best answer found then is returned.

    Returns:
        The chosen option's index per group, or ``None`` when no choice meets the limits.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_groups = len(values)
    sizes = [len(v) for v in values]
    if any(s == 0 for s in sizes):
        raise ValueError("every group needs at least one option")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    upper = np.ones(n)
    rows, slacks, minimums = [], [], []
    for per_group, limit in zip(costs, limits, strict=True):
        arrays = [np.asarray(c, dtype=np.int64) for c in per_group]
        lowest = [int(a.min()) for a in arrays]
        slack = int(limit) - sum(lowest)
        if slack < 0:
            return None
        relative = np.concatenate([a - low for a, low in zip(arrays, lowest, strict=True)])
        upper[relative > slack] = 0.0  # an option over the slack on its own is never chosen
        minimums.append(lowest)
        slacks.append(slack)
        rows.append(relative / slack if slack > 0 else None)  # slack 0: the bounds above already decide it
    if any(upper[offsets[g]:offsets[g + 1]].max() == 0 for g in range(n_groups)):
        return None
    flat = np.concatenate([np.asarray(v, dtype=float) - float(np.min(v)) for v in values])
    scale = float(flat.max()) if flat.size and float(flat.max()) > 0 else 1.0
    objective = flat / scale
    if tie_break is not None:
        distinct = np.unique(np.round(objective, 12))
        gaps = np.diff(distinct)
        resolution = float(gaps[gaps > 0].min()) if (gaps > 0).any() else 1.0
        objective = objective + resolution / (2 * (n_groups + 1)) * np.concatenate(
            [np.clip(np.asarray(t, dtype=float), 0.0, 1.0) for t in tie_break])
    one_hot = np.zeros((n_groups, n))
    for g in range(n_groups):
        one_hot[g, offsets[g]:offsets[g + 1]] = 1.0
    tighten = [0.0] * len(rows)
    options = {"mip_rel_gap": 0.0, **({"time_limit": float(time_limit)} if time_limit is not None else {})}
    for _ in range(_RETRIES):
        constraints = [LinearConstraint(one_hot, 1.0, 1.0)]
        constraints += [LinearConstraint(row[None, :], -np.inf, 1.0 - t)
                        for row, t in zip(rows, tighten, strict=True) if row is not None]
        with _solver_output_hidden():
            result = milp(objective, integrality=np.ones(n), bounds=Bounds(np.zeros(n), upper),
                          constraints=constraints, options=options)
        if result.status == 2:  # infeasible
            return None
        if result.x is None:
            raise RuntimeError(f"HiGHS found no answer to the bit allocation: {result.message}")
        choice = [int(np.argmax(result.x[offsets[g]:offsets[g + 1]])) for g in range(n_groups)]
        over = False
        for c, (per_group, limit) in enumerate(zip(costs, limits, strict=True)):
            total = sum(int(per_group[g][k]) for g, k in enumerate(choice))
            if total > int(limit):  # within the solver's tolerance, not within the limit: tighten the row
                over = True
                tighten[c] += 2.0 * (total - int(limit)) / slacks[c] + 1e-9
        if not over:
            return choice
    raise RuntimeError("the bit allocation stayed over a limit after tightening it; this is a bug")


@contextlib.contextmanager
def _solver_output_hidden() -> Iterator[None]:
    """Send the process's standard output to /dev/null while HiGHS solves: some HiGHS versions print a debug
    line ("HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();", ERGO-Code/HiGHS#2783)
    from C++ whatever ``disp`` says, into the user's log. A solve takes milliseconds. C++ writes to file
    descriptor 1 whatever ``sys.stdout`` is; where that descriptor is not open, nothing is redirected."""
    fd = 1
    try:
        sys.stdout.flush()
        saved: int | None = os.dup(fd)
    except (AttributeError, OSError, ValueError):
        saved = None
    if saved is None:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def bit_options(space: SearchSpace, *, float_choice: bool = False) -> dict[str, list[BitPair]]:
    """Per quantizable layer (execution order), the ``(weight, activation)`` pairs the allocation may give it.

    Every pair of the layer's allowed bits (a pinned layer: its pinned value; a layer pinned to 32: only float);
    with ``float_choice`` 32 (float) is one more choice for either side.
    """
    options = {}
    for d in space.bit_decisions:
        allowed = sorted(set(d.choices) | ({FLOAT_BITS} if float_choice else set()))
        options[d.name] = [(w, a) for w in allowed for a in allowed]
    return options


@dataclass(frozen=True)
class BitCosts:
    """Size and BOPs of each option of each layer at fixed widths (see the module docstring).

    ``size_constant + sum(size[i][k_i])`` is the model's size and ``sum(bops[i][k_i])`` its BOPs for the
    choice ``k`` (an option index per layer, in `layers` order).
    """

    layers: list[str]
    options: list[list[BitPair]]
    size: list[np.ndarray]
    bops: list[np.ndarray]
    size_constant: int

    def size_bits(self, choice: Sequence[int]) -> int:
        """Model size in bits of ``choice``."""
        return self.size_constant + sum(int(self.size[i][k]) for i, k in enumerate(choice))

    def total_bops(self, choice: Sequence[int]) -> int:
        """BOPs of ``choice``."""
        return sum(int(self.bops[i][k]) for i, k in enumerate(choice))

    def bits(self, choice: Sequence[int]) -> dict[str, BitPair]:
        """``choice`` as an architecture's bits."""
        return {name: self.options[i][k] for i, (name, k) in enumerate(zip(self.layers, choice, strict=True))}


def bit_costs(space: SearchSpace, widths: Mapping[str, int], options: Mapping[str, Sequence[BitPair]]) -> BitCosts:
    """The per-layer size and BOPs of every option at ``widths`` (every group named, as `SearchSpace.complete`)."""
    quant = space.quant_cost_model
    weights = quant.layer_weights(widths).astype(np.int64)
    channels = quant.layer_out_channels(widths).astype(np.int64)
    macs = quant.layer_macs(widths).astype(np.int64)
    params = int(quant.cost_model.params(widths))
    sizes, bops, all_options = [], [], []
    for i, name in enumerate(quant.layer_names):
        pairs = list(options[name])
        w = np.array([p[0] for p in pairs], dtype=np.int64)
        a = np.array([p[1] for p in pairs], dtype=np.int64)
        weight_part = np.where(w < FLOAT_BITS, weights[i] * w + channels[i] * SCALE_BITS, weights[i] * FLOAT_BITS)
        sizes.append(weight_part + np.where(a < FLOAT_BITS, 2 * SCALE_BITS, 0))
        bops.append(macs[i] * w * a)
        all_options.append(pairs)
    constant = (params - int(weights.sum())) * FLOAT_BITS
    return BitCosts(list(quant.layer_names), all_options, sizes, bops, constant)


def allocate_bits(
    space: SearchSpace,
    architecture: Architecture,
    budget: Budget,
    drops: Mapping[str, Mapping[BitPair, float]],
    *,
    float_choice: bool = False,
    prefer_more_bits: bool = True,
) -> Architecture:
    """``architecture``'s widths with the bits of least summed drop that meet the budget's size and BOPs limits.

    Args:
        space: The search space.
        architecture: The widths (its bits are replaced).
        budget: The limits; the FLOPs limit is the widths' business (checked with the rest at the end).
        drops: Per layer, the drop of each option of `bit_options` (a layer with one option may be left out).
        float_choice: Whether 32 (float) is a choice (`bit_options`).
        prefer_more_bits: Of options with equal drops, prefer more bits (spends budget the drops do not tell
            how to spend on the hedge that hurts least); otherwise ties go wherever the solver lands.

    Raises:
        BudgetError: No bits at these widths meet the limits (even the lowest are over them).
    """
    options = bit_options(space, float_choice=float_choice)
    widths = space.complete(architecture).widths
    table = bit_costs(space, widths, options)
    values = [[float(drops[name][p]) if len(table.options[i]) > 1 else 0.0 for p in table.options[i]]
              for i, name in enumerate(table.layers)]
    costs, limits = [], []
    if budget.size_bits is not None:
        costs.append(table.size)
        limits.append(budget.size_bits - table.size_constant)
    if budget.bops is not None:
        costs.append(table.bops)
        limits.append(budget.bops)
    tie_break = ([[1.0 - (w + a) / (2 * FLOAT_BITS) for w, a in pairs] for pairs in table.options]
                 if prefer_more_bits else None)
    choice = solve_multiple_choice(values, costs, limits, tie_break=tie_break)
    if choice is None:
        raise BudgetError(
            f"no bits meet the budget at these widths (size {budget.size_bits}, BOPs {budget.bops}): even every "
            "layer at its lowest bits is over it; raise the budget, narrow the widths, or allow fewer bits"
        )
    allocated = Architecture(dict(widths)).with_bits(table.bits(choice))
    over = budget.violations(space, allocated)
    if over:
        raise RuntimeError(f"the bit allocation is over budget by the independent count ({'; '.join(over)}); "
                           "the cost table and the space's cost model disagree: this is a bug")
    return allocated
