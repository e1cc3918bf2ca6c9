"""Budget guarantees shared by every searcher: uniform scaling and projection onto a FLOPs limit."""

from __future__ import annotations

from collections.abc import Mapping

from search_spaces import Architecture, SearchSpace

__all__ = ["fill_budget", "project_to_budget", "uniform_architecture"]

_BISECTION_STEPS = 40


def _scaled(space: SearchSpace, target: Mapping[str, float], scale: float) -> dict[str, int]:
    return {d.name: d.floor(target[d.name] * scale) for d in space.decisions}


def uniform_architecture(space: SearchSpace, budget_flops: int) -> Architecture:
    """The largest single keep ratio for every group whose architecture fits ``budget_flops``."""
    sizes = {d.name: float(d.size) for d in space.decisions}
    return Architecture(_largest_fitting(space, sizes, budget_flops))


def _largest_fitting(space: SearchSpace, target: Mapping[str, float], budget_flops: int) -> dict[str, int]:
    """Scale ``target`` widths down by one factor (bisection) until FLOPs fit; floors keep it monotone."""
    full = _scaled(space, target, 1.0)
    if space.flops(full) <= budget_flops:
        return full
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if space.flops(_scaled(space, target, mid)) <= budget_flops:
            lo = mid
        else:
            hi = mid
    widths = _scaled(space, target, lo)
    if space.flops(widths) > budget_flops:  # only if even the minimum does not fit
        raise ValueError(f"no architecture fits {budget_flops} FLOPs (minimum is {space.min_flops})")
    return widths


def fill_budget(space: SearchSpace, widths: Mapping[str, int], budget_flops: int,
                target: Mapping[str, float] | None = None) -> dict[str, int]:
    """Greedily widen groups (most under their target first) while the FLOPs stay within budget."""
    widths = dict(widths)
    target = target or {d.name: float(d.size) for d in space.decisions}
    improved = True
    while improved:
        improved = False
        order = sorted(space.decisions, key=lambda d: widths[d.name] - target[d.name])
        for d in order:
            choices = d.choices()
            i = choices.index(widths[d.name])
            if i + 1 >= len(choices):
                continue
            trial = dict(widths)
            trial[d.name] = choices[i + 1]
            if space.flops(trial) <= budget_flops:
                widths = trial
                improved = True
                break
    return widths


def project_to_budget(space: SearchSpace, architecture: Architecture | Mapping[str, int], budget_flops: int,
                      *, fill: bool = False) -> Architecture:
    """The architecture itself if it fits; else its widths scaled down together until they do.

    With ``fill`` the leftover budget is then spent by widening groups that were scaled down most, so
    FLOPs end close to the budget. The result always satisfies ``flops <= budget_flops``.
    """
    widths = architecture.widths if isinstance(architecture, Architecture) else architecture
    widths = {d.name: int(widths.get(d.name, d.size)) for d in space.decisions}
    if space.flops(widths) <= budget_flops:
        return Architecture(widths)
    target = {k: float(v) for k, v in widths.items()}
    projected = _largest_fitting(space, target, budget_flops)
    if fill:
        projected = fill_budget(space, projected, budget_flops, target)
    return Architecture(projected)
