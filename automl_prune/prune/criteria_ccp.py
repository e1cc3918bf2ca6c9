"""Collaborative channel pruning (CCP, seed 000): choose the removed set jointly, by a 0-1 quadratic programme.

Peng et al., "Collaborative Channel Pruning for Deep Networks" (ICML 2019): the loss change of removing a
set of channels is expanded to second order, so channels that are only harmless one at a time are not
removed together. With a gate ``phi_c = 1`` on every channel (at the input of each mixing layer that reads
it, so that ``phi_c = 0`` is exactly the removal) and ``r`` the 0-1 indicator of removed channels::

    dL(r) ~= -g^T r + 1/2 r^T H r,     g = E[dl/dphi],  H ~= E[(dl/dphi)(dl/dphi)^T]

with per-sample gate gradients of the cross-entropy loss on calibration batches (the Hessian is
approximated by the empirical Fisher, the outer product of per-sample gradients). For a width ``keep`` the
programme is ``min dL(r)`` subject to ``sum(r) = size - keep``.

Solved approximately (`solve_ccp`), with the forced removals (zero and duplicate channels) fixed: three
starts, forward greedy (add the channel of least marginal cost ``-g_i + H_ii / 2 + sum_{j removed} H_ij``),
backward greedy, and the rounded solution of the convex relaxation ``0 <= r <= 1`` (the paper's route), each
improved by 1-swap local search; the best is kept. The forward greedy additions alone are nested, which gives
the ranking `__call__` returns (used when no width is known, e.g. by DMCP). The result is 1-swap optimal,
not guaranteed globally optimal: `tests/test_criteria_seed.py` compares it with exhaustive enumeration.
Simplified: the paper solves the relaxation by sequential quadratic programming, and derives H per layer
from weights and activations, where here gates make one H per coupled group (residual and depthwise too).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automl_prune.prune.calibration import Site
from automl_prune.prune.criteria_data import ActivationCriterion, group_size, to_root

__all__ = ["CCP", "ccp_objective", "greedy_removal_order", "solve_ccp"]


def ccp_objective(g: Tensor, h: Tensor, removed: list[int]) -> float:
    """``-g^T r + 1/2 r^T H r`` for the indicator ``r`` of ``removed``."""
    idx = torch.as_tensor(removed, dtype=torch.long)
    return float(-g[idx].sum() + 0.5 * h[idx][:, idx].sum())


def greedy_removal_order(g: Tensor, h: Tensor, forced: list[int] | tuple[int, ...] = ()) -> list[int]:
    """Every channel, in the order greedy minimisation of the objective removes them (``forced`` first)."""
    size = g.numel()
    cost = -g + 0.5 * h.diagonal()  # marginal cost of removing each channel next
    removed = torch.zeros(size, dtype=torch.bool)
    order: list[int] = []
    for c in forced:
        order.append(int(c))
        removed[c] = True
        cost = cost + h[:, c]
    while len(order) < size:
        masked = torch.where(removed, torch.full_like(cost, float("inf")), cost)
        c = int(torch.argmin(masked))
        order.append(c)
        removed[c] = True
        cost = cost + h[:, c]
    return order


def solve_ccp(
    g: Tensor, h: Tensor, remove: int, forced: list[int] | tuple[int, ...] = (), max_swaps: int | None = None
) -> list[int]:
    """Approximately ``min -g^T r + 1/2 r^T H r`` over 0-1 ``r`` with ``sum(r) = remove``; the removed indices.

    Three starts, each improved by 1-swap local search, the best kept: forward greedy (add the cheapest
    removal), backward greedy (from everything removed, bring back the most costly) and the rounded solution
    of the convex relaxation ``0 <= r <= 1`` (H is a Gram matrix, so the relaxation is convex; solved by
    projected gradient). The first ``min(remove, len(forced))`` of ``forced`` are always removed.
    """
    size = g.numel()
    fixed = list(forced)[:remove]
    if remove in (0, size) or len(fixed) == remove:
        return sorted(greedy_removal_order(g, h, fixed)[:remove])
    starts = [
        greedy_removal_order(g, h, fixed)[:remove],
        _backward_greedy(g, h, remove, fixed),
        _relaxation(g, h, remove, fixed),
    ]
    best: list[int] | None = None
    for start in starts:
        found = _swap_search(g, h, start, fixed, max_swaps if max_swaps is not None else 4 * size)
        if best is None or ccp_objective(g, h, found) < ccp_objective(g, h, best) - 1e-12:
            best = found
    assert best is not None
    return sorted(best)


def _backward_greedy(g: Tensor, h: Tensor, remove: int, fixed: list[int]) -> list[int]:
    """From everything removed, repeatedly bring back the channel whose return lowers the objective most."""
    removed = torch.ones(g.numel(), dtype=torch.bool)
    load = h.sum(1)
    locked = torch.zeros_like(removed)
    locked[fixed] = True
    for _ in range(g.numel() - remove):
        change = g - load + 0.5 * h.diagonal()  # objective change when channel i comes back
        change = torch.where(removed & ~locked, change, torch.full_like(change, float("inf")))
        c = int(torch.argmin(change))
        removed[c] = False
        load = load - h[:, c]
    return torch.nonzero(removed).flatten().tolist()


def _relaxation(g: Tensor, h: Tensor, remove: int, fixed: list[int], steps: int = 200) -> list[int]:
    """Top-``remove`` entries of the projected-gradient solution of the relaxed programme."""
    lower = torch.zeros_like(g)
    lower[fixed] = 1.0
    lipschitz = float(torch.linalg.eigvalsh(h)[-1].clamp_min(1e-12))
    r = torch.full_like(g, remove / g.numel())
    for _ in range(steps):
        r = _project(r - (h @ r - g) / lipschitz, lower, remove)
    r[fixed] = 2.0  # fixed first, whatever the relaxation says
    return torch.argsort(r, descending=True, stable=True)[:remove].tolist()


def _project(v: Tensor, lower: Tensor, total: int) -> Tensor:
    """Euclidean projection onto ``{lower <= r <= 1, sum(r) = total}``: ``clamp(v - tau)`` for the right shift.

    ``S(tau) = sum(clamp(v - tau, lower, 1))`` is piecewise linear and non-increasing, with breakpoints at
    ``v - 1`` and ``v - lower``; it is evaluated at all of them at once and interpolated where it crosses.
    """
    ones = torch.ones_like(v)
    points = torch.sort(torch.cat([v - 1.0, v - lower])).values
    sums = torch.clamp(v[None, :] - points[:, None], min=lower, max=ones).sum(1)
    k = min(max(int((sums >= total).sum()) - 1, 0), points.numel() - 2)
    drop = float(sums[k] - sums[k + 1])
    tau = float(points[k]) + (float(points[k + 1] - points[k]) * float(sums[k] - total) / drop if drop > 0 else 0.0)
    return torch.clamp(v - tau, min=lower, max=ones)


def _swap_search(g: Tensor, h: Tensor, removed: list[int], fixed: list[int], max_swaps: int) -> list[int]:
    """1-swap local search: exchange a removed and a kept channel while that lowers the objective."""
    size = g.numel()
    is_removed = torch.zeros(size, dtype=torch.bool)
    is_removed[removed] = True
    movable = is_removed.clone()
    movable[fixed] = False
    load = h[:, is_removed].sum(1)  # sum_{j removed} H_ij
    diag = h.diagonal()
    scale = float(g.abs().max() + h.abs().max()) or 1.0
    for _ in range(max_swaps):
        out = torch.nonzero(movable).flatten()
        into = torch.nonzero(~is_removed).flatten()
        if out.numel() == 0 or into.numel() == 0:
            break
        leave = -g[out] + load[out] - 0.5 * diag[out]  # objective drop when ``out`` comes back
        enter = -g[into] + 0.5 * diag[into] + load[into]  # objective rise when ``into`` goes
        delta = enter[None, :] - h[out][:, into] - leave[:, None]
        best = int(torch.argmin(delta))
        if float(delta.flatten()[best]) >= -1e-12 * scale:
            break
        i, k = int(out[best // into.numel()]), int(into[best % into.numel()])
        is_removed[i], is_removed[k] = False, True
        movable[i], movable[k] = False, True
        load = load - h[:, i] + h[:, k]
    return torch.nonzero(is_removed).flatten().tolist()


class CCP(ActivationCriterion):
    """Collaborative channel pruning: see the module docstring."""

    needs_grads = True
    name = "ccp"

    def observe(self, stats: dict[str, Any], module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        """Keep the per-sample gate gradients (a module called twice per batch adds both calls)."""
        assert gate_grad is not None
        grads = stats.setdefault("sample_grads", {})
        grads[stats["batch"]] = grads.get(stats["batch"], 0) + gate_grad.double().cpu()

    def problem(self, group: tp.Group) -> tuple[Tensor, Tensor]:
        """``(g, H)`` of the group's channels from the per-sample gate gradients."""
        size = group_size(group)
        sites = self.sites(group)
        return self._problem(sites, size)

    def _problem(self, sites: list[Site], size: int) -> tuple[Tensor, Tensor]:
        per_site = [torch.cat(list(self._observed[s.module]["sample_grads"].values())) for s in sites]
        # (N, size); a 0-d zero start, as `sum`'s int 0 but typed as a tensor
        grads = sum((to_root(p.T, s, size).T for p, s in zip(per_site, sites, strict=True)), torch.zeros(()))
        return grads.mean(0), grads.T @ grads / grads.shape[0]

    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """Position in the nested greedy removal order (removed later = higher)."""
        g, h = self._problem(sites, size)
        order = greedy_removal_order(g, h)
        scores = torch.empty(size, dtype=torch.float64)
        scores[torch.as_tensor(order)] = torch.arange(size, dtype=torch.float64)
        return scores

    def select(self, group: tp.Group, keep: int) -> list[int]:
        """The kept channels of the programme's solution for ``keep``."""
        size = group_size(group)
        sites = self.sites(group)
        if not sites:
            return sorted(self.fallback_ranking(group)[:keep])
        g, h = self._problem(sites, size)
        raw = torch.empty(size, dtype=torch.float64)
        raw[torch.as_tensor(greedy_removal_order(g, h))] = torch.arange(size, dtype=torch.float64)
        forced = self.forced_removals(group, raw)
        removed = set(solve_ccp(g, h, size - keep, forced))
        return [c for c in range(size) if c not in removed]
