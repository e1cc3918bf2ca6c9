"""Reconstruction Error Aware Pruning (REAP, seed 004): remove the channels whose loss the next layer can best absorb.

Kamma & Wada, "Reconstruction Error Aware Pruning for Accelerating Neural Networks" (ISVC 2019): a channel's
importance is the reconstruction error of the next layer's outputs once it is removed *and the remaining
weights are re-fit by least squares*; channels are removed greedily, then the weights are updated (as in CP,
ThiNet and AMC).

Here, for each mixing layer reading the group (`automl_prune.prune.calibration.consumer_sites`), calibration
batches give ``A = Z^T Z`` over the layer's input patches at sampled positions. With ``M = A + lam I`` the
error of the best re-fit after removing the input rows ``R`` is ``tr(W_R^T [(M^-1)_RR]^-1 W_R)`` (the block
form of Optimal Brain Surgeon; the ridge pulls towards the current weights), and removing ``R`` updates
``W`` and ``M^-1`` in closed form (a Schur-complement downdate), so the elimination is exact greedy on the
quadratic model. A channel is a block of ``k*k`` rows; errors are summed over the group's consumers, each
divided by its output energy ``tr(W^T A W)``. To bound the cost on wide layers, each round removes
``step`` of the group's channels (at least one) before errors are recomputed; on groups of up to
``1 / step`` channels that is one channel per round, as in the paper. After `compress` removes the
channels, `automl_prune.prune.reconstruct.reconstruct` re-fits every pruned layer on the compressed model's own
inputs (``reconstructs = True``). Simplified: the paper's biorthogonal-system bookkeeping is replaced by the
equivalent inverse downdates, and the errors are those of the original model's inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automl_prune.errors import ConfigError
from automl_prune.prune.calibration import Calibration, Site
from automl_prune.prune.criteria_data import ActivationCriterion, group_size
from automl_prune.prune.reconstruct import MAX_REFIT_INPUTS, flat_weight, patches

__all__ = ["REAP"]

_MAX_ROWS = MAX_REFIT_INPUTS  # a layer with more input patch entries (a big flatten-linear) is not observed


class _SiteState:
    """The least-squares state of one consumer during elimination."""

    def __init__(self, module: nn.Conv2d | nn.Linear, gram: Tensor, site: Site, size: int, ridge: float) -> None:
        weight = flat_weight(module).double().cpu()  # (D, O)
        channels = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features // site.block
        taps = weight.shape[0] // channels  # a conv's kernel taps, or the positions of a flatten
        lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
        layer = torch.empty(size, dtype=torch.long)
        layer[site.root_idxs] = site.layer_idxs
        # Kernel taps that only ever see padding (all but the centre on a 1x1 map) have all-zero rows in
        # ``A``: they are decoupled from the rest, and removing a channel costs ``lam |W|^2`` there. Leaving
        # them out of the elimination is exact and makes it up to ``taps^3`` times cheaper.
        seen = gram.diagonal().view(channels, taps).sum(0) > 0
        if not bool(seen.any()):
            seen[:] = True
        unseen_weight = weight.view(channels, taps, -1)[:, ~seen].square().sum((1, 2))
        fixed = lam * unseen_weight[layer]
        active = torch.nonzero(seen).flatten()
        rows = (torch.arange(channels)[:, None] * taps + active[None, :]).flatten()
        gram, weight = gram[rows][:, rows], weight[rows]
        self.energy = float(((gram @ weight) * weight).sum().clamp_min(1e-12))  # tr(W^T A W): unseen rows add 0
        factor = torch.linalg.cholesky(gram + lam * torch.eye(rows.numel(), dtype=gram.dtype))
        self.inverse = torch.cholesky_inverse(factor)
        self.weight = weight
        self.fixed_error = fixed / self.energy  # (size,)
        block = active.numel()
        self.rows = layer[:, None] * block + torch.arange(block)[None, :]  # (size, block) rows of the reduced problem
        self.position = torch.arange(rows.numel())  # reduced row -> row of ``inverse``/``weight`` (-1 once removed)

    def errors(self, channels: Tensor) -> Tensor:
        """Relative reconstruction error of removing each of ``channels`` alone, with the rest re-fit."""
        rows = self.position[self.rows[channels]]  # (n, block)
        blocks = self.inverse[rows[:, :, None], rows[:, None, :]]
        w = self.weight[rows]  # (n, block, O)
        solved = torch.linalg.solve(blocks, w)
        return (w * solved).sum((1, 2)) / self.energy + self.fixed_error[channels]

    def remove(self, channels: Tensor) -> None:
        """Remove ``channels`` jointly and re-fit the remaining rows."""
        gone = self.position[self.rows[channels].flatten()]
        keep = torch.ones(self.inverse.shape[0], dtype=torch.bool)
        keep[gone] = False
        stay = torch.nonzero(keep).flatten()
        coupling = self.inverse[stay][:, gone]
        shift = torch.linalg.solve(self.inverse[gone][:, gone], torch.cat([coupling.T, self.weight[gone]], 1))
        self.inverse = self.inverse[stay][:, stay] - coupling @ shift[:, : stay.numel()]
        self.weight = self.weight[stay] - coupling @ shift[:, stay.numel() :]
        alive = self.position >= 0
        alive_rows = torch.nonzero(alive).flatten()
        new_position = torch.full_like(self.position, -1)
        kept_rows = alive_rows[keep]
        new_position[kept_rows] = torch.arange(kept_rows.numel())
        self.position = new_position


class REAP(ActivationCriterion):
    """REAP: see the module docstring."""

    name = "reap"
    reconstructs = True
    nested = True  # the greedy elimination removes the same channels first whatever the width: `ranking`
    reads_flatten = True  # a linear layer behind a flatten re-fits as a conv whose taps are the positions

    def __init__(self, positions: int = 32, ridge: float = 1e-3, step: float = 0.03, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < step <= 1.0:
            raise ConfigError(f"`0 < step <= 1` must hold, but got {step=}")
        self.positions, self.ridge, self.step, self.seed = positions, ridge, step, seed
        self._generator = torch.Generator().manual_seed(seed)

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        """Record the input patch Gram matrices (sampled positions reseeded for every model)."""
        self._generator = torch.Generator().manual_seed(self.seed)
        super().prepare(model, calibration)

    def observe(self, stats: dict[str, Any], module: nn.Module, x: Tensor, gate_grad: Tensor | None) -> None:
        """Accumulate ``Z^T Z`` of the layer's input patches at sampled output positions."""
        z = patches(module, x)  # (N, D, L)
        if z.shape[1] > _MAX_ROWS:
            return
        pick = torch.randperm(z.shape[2], generator=self._generator)[: self.positions].to(z.device)
        rows = z[:, :, pick].transpose(1, 2).reshape(-1, z.shape[1]).float()
        gram = (rows.T @ rows).cpu()
        stats["patch_gram"] = gram if "patch_gram" not in stats else stats["patch_gram"] + gram

    def sites(self, group: tp.Group) -> list[Site]:
        """The consumer sites whose input patches were recorded (not those wider than ``_MAX_ROWS``)."""
        return [s for s in super().sites(group) if "patch_gram" in self._observed[s.module]]

    def _states(self, sites: list[Site], size: int) -> list[_SiteState]:
        return [_SiteState(s.module, self._observed[s.module]["patch_gram"].double(), s, size, self.ridge)
                for s in sites]

    def _eliminate(self, sites: list[Site], size: int, remove: int, forced: list[int]) -> list[int]:
        """Channels in greedy removal order, ``remove`` of them (``forced`` ones first, in one round)."""
        states = self._states(sites, size)
        alive = torch.ones(size, dtype=torch.bool)
        order: list[int] = []
        rounds: list[list[int]] = [list(forced[:remove])] if forced[:remove] else []
        per_round = max(1, math.floor(self.step * size))
        while len(order) < remove:
            if rounds:
                chosen = rounds.pop()
            else:
                candidates = torch.nonzero(alive).flatten()
                if candidates.numel() == 1:
                    chosen = candidates.tolist()
                else:
                    error = sum((state.errors(candidates) for state in states), torch.zeros(()))  # 0-d zero start
                    ranked = candidates[torch.argsort(error, stable=True)]
                    chosen = ranked[: min(per_round, remove - len(order))].tolist()
            order += chosen
            alive[chosen] = False
            if len(order) < size:
                for state in states:
                    state.remove(torch.as_tensor(chosen))
        return order

    def _removal_order(self, group: tp.Group, sites: list[Site], size: int) -> list[int]:
        """Every channel in greedy removal order, zero and duplicate channels first."""
        forced = self.forced_removals(group, torch.zeros(size, dtype=torch.float64))
        return self._eliminate(sites, size, size, forced)

    def score(self, group: tp.Group, sites: list[Site], size: int) -> Tensor:
        """Position in the greedy removal order (removed later = higher)."""
        order = self._removal_order(group, sites, size)
        scores = torch.empty(size, dtype=torch.float64)
        scores[torch.as_tensor(order)] = torch.arange(size, dtype=torch.float64)
        return scores

    def ranking(self, group: tp.Group) -> list[int]:
        """The whole greedy removal order, reversed: ``select(group, keep)`` keeps its first ``keep`` channels
        (a shorter elimination stops early on the same path; rounds only ever take a prefix of their ranking)."""
        size = group_size(group)
        sites = self.sites(group)
        if not sites:
            return self.fallback_ranking(group)
        return self._removal_order(group, sites, size)[::-1]

    def select(self, group: tp.Group, keep: int) -> list[int]:
        """The channels left after greedily removing ``size - keep`` (zero and duplicate channels first)."""
        size = group_size(group)
        sites = self.sites(group)
        if not sites:
            return sorted(self.fallback_ranking(group)[:keep])
        forced = self.forced_removals(group, torch.zeros(size, dtype=torch.float64))
        removed = set(self._eliminate(sites, size, size - keep, forced))
        return [c for c in range(size) if c not in removed]
