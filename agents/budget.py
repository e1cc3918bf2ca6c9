"""Budget guarantees shared by every searcher: uniform scaling, projection onto a FLOPs limit, and the prior
around the uniform architecture that the sampling searchers draw from."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from automl_prune.errors import ConfigError
from search_spaces import Architecture, SearchSpace

__all__ = [
    "PRIORS",
    "around_uniform",
    "check_prior",
    "fill_budget",
    "project_to_budget",
    "sample_multipliers",
    "uniform_architecture",
    "uniform_ratios",
]

#: Where sampling searchers draw keep ratios: ``"uniform"`` (default) multiplies each group's uniform keep
#: ratio by a factor in ``[1 / spread, spread]`` (log-uniform, so half above and half below uniform);
#: ``"box"`` draws each ratio uniformly from the whole ``[min_keep / size, 1]``.
PRIORS: tuple[str, ...] = ("uniform", "box")

_BISECTION_STEPS = 40


def _scaled(space: SearchSpace, target: Mapping[str, float], scale: float) -> dict[str, int]:
    return {d.name: d.floor(target[d.name] * scale) for d in space.decisions}


def uniform_architecture(space: SearchSpace, max_flops: int) -> Architecture:
    """The largest single keep ratio for every group whose architecture fits ``max_flops``."""
    sizes = {d.name: float(d.size) for d in space.decisions}
    return Architecture(_largest_fitting(space, sizes, max_flops))


def _largest_fitting(space: SearchSpace, target: Mapping[str, float], max_flops: int) -> dict[str, int]:
    """Scale ``target`` widths down by one factor (bisection) until FLOPs fit; floors keep it monotone."""
    full = _scaled(space, target, 1.0)
    if space.flops(full) <= max_flops:
        return full
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if space.flops(_scaled(space, target, mid)) <= max_flops:
            lo = mid
        else:
            hi = mid
    widths = _scaled(space, target, lo)
    if space.flops(widths) > max_flops:  # only if even the minimum does not fit
        raise ValueError(f"no architecture fits {max_flops} FLOPs (minimum is {space.min_flops})")
    return widths


def fill_budget(space: SearchSpace, widths: Mapping[str, int], max_flops: int,
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
            if space.flops(trial) <= max_flops:
                widths = trial
                improved = True
                break
    return widths


def project_to_budget(space: SearchSpace, architecture: Architecture | Mapping[str, int], max_flops: int,
                      *, fill: bool = False) -> Architecture:
    """The architecture itself if it fits; else its widths scaled down together until they do.

    With ``fill`` the leftover budget is then spent by widening groups that were scaled down most, so
    FLOPs end close to the budget. The result always satisfies ``flops <= max_flops``.
    """
    widths = architecture.widths if isinstance(architecture, Architecture) else architecture
    widths = {d.name: int(widths.get(d.name, d.size)) for d in space.decisions}
    if space.flops(widths) <= max_flops:
        return Architecture(widths)
    target = {k: float(v) for k, v in widths.items()}
    projected = _largest_fitting(space, target, max_flops)
    if fill:
        projected = fill_budget(space, projected, max_flops, target)
    return Architecture(projected)


def uniform_ratios(space: SearchSpace, max_flops: int) -> dict[str, float]:
    """Each group's keep ratio (width / size) in the uniform architecture of ``max_flops``."""
    widths = uniform_architecture(space, max_flops).widths
    return {d.name: widths[d.name] / d.size for d in space.decisions}


def check_prior(prior: str, spread: float) -> None:
    """Raise `ConfigError` unless ``prior`` is one of `PRIORS` and ``spread > 1``."""
    if prior not in PRIORS:
        raise ConfigError(f"unknown prior {prior!r}; must be one of {list(PRIORS)}")
    if not (math.isfinite(spread) and spread > 1.0):
        raise ConfigError(f"`spread > 1` must hold (a factor around the uniform ratio), but got {spread=}")


def sample_multipliers(rng: np.random.Generator, names: list[str], spread: float) -> dict[str, float]:
    """One log-uniform factor in ``[1 / spread, spread]`` per name (median 1: the uniform ratio)."""
    logs = rng.uniform(-math.log(spread), math.log(spread), size=len(names))
    return {name: float(math.exp(v)) for name, v in zip(names, logs, strict=True)}


def around_uniform(space: SearchSpace, centre: Mapping[str, float], multipliers: Mapping[str, float]) -> Architecture:
    """Widths at ``centre`` ratio x multiplier per group (nearest valid width, clipped into the group's range).

    A multiplier of 1 everywhere gives back the widths of ``centre`` exactly when ``centre`` came from
    `uniform_ratios`.
    """
    return Architecture({d.name: d.from_ratio(min(1.0, centre[d.name] * multipliers[d.name]))
                         for d in space.decisions})
