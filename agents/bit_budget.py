"""Bits under size and BOPs budgets: HAQ's projection (bits off the costliest layers), the highest uniform bits,
and the widths shrunk when even the lowest bits do not fit.

Every function keeps the FLOPs of its input or lowers them (widths are only ever narrowed), so an architecture
within a FLOPs budget stays within it.
"""

from __future__ import annotations

from automl_prune.errors import BudgetError
from search_spaces import Architecture, SearchSpace
from search_spaces.bit_fitting import fit_bits

__all__ = ["fits_bit_budgets", "project_bits", "shrink_to_lowest_bits", "uniform_bits_architecture"]

_BISECTION_STEPS = 40


def fits_bit_budgets(space: SearchSpace, architecture: Architecture, size_bits: int | None,
                     bops: int | None) -> bool:
    """Whether ``architecture`` (widths and bits) meets the size and BOPs budgets (``None``: no budget)."""
    return ((size_bits is None or space.size_bits(architecture) <= size_bits)
            and (bops is None or space.bops(architecture) <= bops))


def shrink_to_lowest_bits(space: SearchSpace, architecture: Architecture, size_bits: int | None,
                          bops: int | None) -> Architecture:
    """``architecture``'s widths (bits kept), scaled down together until its lowest bits meet the budgets.

    The widths themselves when they already do; otherwise the largest single scale of them (bisection, floors,
    so monotone) whose every layer at its lowest bits fits. The searcher checks beforehand that the smallest
    widths at the lowest bits fit (`agents.base.Searcher`).

    Raises:
        BudgetError: Not even every group at its minimum width with every layer at its lowest bits fits.
    """
    widths = space.complete(architecture).widths

    def scaled(scale: float) -> dict[str, int]:
        return {d.name: d.floor(widths[d.name] * scale) for d in space.decisions}

    def fits(candidate: dict[str, int]) -> bool:
        return fits_bit_budgets(space, space.lowest_bits(Architecture(candidate)), size_bits, bops)

    if fits(widths):
        return architecture
    if not fits(scaled(0.0)):
        raise BudgetError("the size or BOPs budget cannot be met even by the smallest widths at the lowest bits")
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if fits(scaled(mid)):
            lo = mid
        else:
            hi = mid
    return Architecture(scaled(lo), dict(architecture.bits))


def project_bits(space: SearchSpace, architecture: Architecture, size_bits: int | None,
                 bops: int | None) -> Architecture:
    """``architecture`` within the size and BOPs budgets: bits taken off the costliest layers, as HAQ does.

    `search_spaces.bit_fitting.fit_bits` (what `SearchSpace.fit_bits` does for fractions) with absolute limits;
    when the widths are too wide for the budgets even at the lowest bits, they are first narrowed
    (`shrink_to_lowest_bits`). Bits are never raised; an architecture within budget is returned unchanged.
    """
    if size_bits is None and bops is None:
        return architecture
    narrowed = shrink_to_lowest_bits(space, space.validate(architecture), size_bits, bops)
    return fit_bits(
        space.quant_cost_model,
        narrowed,
        choices={d.name: d.choices for d in space.bit_decisions},
        max_size_bits=size_bits,
        max_bops=bops,
    )


def uniform_bits_architecture(space: SearchSpace, architecture: Architecture, size_bits: int | None,
                              bops: int | None) -> Architecture:
    """``architecture``'s widths with the highest single bit width (weights and activations) that meets the budgets.

    Pinned layers keep their pinned bits. When even the lowest bit width does not fit, the widths are narrowed
    first (`shrink_to_lowest_bits`) and every layer gets its lowest bits.
    """
    for bits in sorted(space.bit_choices, reverse=True):
        candidate = space.uniform_bits(bits, bits, architecture)
        if fits_bit_budgets(space, candidate, size_bits, bops):
            return candidate
    lowest = min(space.bit_choices)
    return space.uniform_bits(lowest, lowest, shrink_to_lowest_bits(space, architecture, size_bits, bops))
