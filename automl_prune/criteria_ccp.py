"""Collaborative channel pruning (CCP, seed 000): choose the removed set jointly, by a 0-1 quadratic programme.

Peng et al., "Collaborative Channel Pruning for Deep Networks" (ICML 2019): the loss change of removing a
set of channels is expanded to second order, so channels that are only harmless one at a time are not
removed together. With a gate ``phi_c = 1`` on every channel (at the input of each mixing layer that reads
it, so that ``phi_c = 0`` is exactly the removal) and ``r`` the 0-1 indicator of removed channels::

    dL(r) ~= -g^T r + 1/2 r^T H r,     g = E[dl/dphi],  H ~= E[(dl/dphi)(dl/dphi)^T]

with per-sample gate gradients of the cross-entropy loss on calibration batches (the Hessian is
approximated by the empirical Fisher, the outer product of per-sample gradients). For a width ``keep`` the
programme is ``min dL(r)`` subject to ``sum(r) = size - keep``.

Solved greedily, then improved by 1-swap local search: start from the forced removals (zero and duplicate
channels), add the channel of least marginal cost ``-g_i + H_ii / 2 + sum_{j removed} H_ij`` until enough are
removed, then swap a removed and a kept channel while that lowers ``dL``. The greedy additions alone are
nested, which gives the ranking `__call__` returns (used when a width is not known, e.g. by DMCP). The
result is 1-swap optimal, not guaranteed globally optimal: `tests/test_criteria_seed.py` compares it with
exhaustive enumeration on small cases. Simplified: the paper relaxes the programme and solves it with
sequential quadratic programming; it also derives H per layer from weights and activations, where here the
gates make one H per coupled group (residual and depthwise groups included).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automl_prune.calibration import Site
from automl_prune.criteria_data import ActivationCriterion, group_size, to_root

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
    """Greedy + 1-swap local search for ``min -g^T r + 1/2 r^T H r`` with ``sum(r) = remove``; removed indices.

    The first ``min(remove, len(forced))`` entries of ``forced`` are always removed and never swapped back.
    """
    size = g.numel()
    fixed = list(forced)[:remove]
    removed = greedy_removal_order(g, h, fixed)[:remove]
    if remove in (0, size):
        return sorted(removed)
    is_removed = torch.zeros(size, dtype=torch.bool)
    is_removed[removed] = True
    movable = is_removed.clone()
    movable[fixed] = False
    load = h[:, is_removed].sum(1)  # sum_{j removed} H_ij
    diag = h.diagonal()
    scale = float(g.abs().max() + h.abs().max()) or 1.0
    for _ in range(max_swaps if max_swaps is not None else 4 * size):
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
    return sorted(torch.nonzero(is_removed).flatten().tolist())


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
        per_site = [torch.cat(list(self._stats[s.module]["sample_grads"].values())) for s in sites]
        grads = sum(to_root(p.T, s, size).T for p, s in zip(per_site, sites, strict=True))  # (N, size)
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
        g, h = self._problem(sites, size)
        raw = torch.empty(size, dtype=torch.float64)
        raw[torch.as_tensor(greedy_removal_order(g, h))] = torch.arange(size, dtype=torch.float64)
        forced = self.forced_removals(group, raw)
        removed = set(solve_ccp(g, h, size - keep, forced))
        return [c for c in range(size) if c not in removed]
