"""Channel-importance criteria: which channels of a group survive when it is narrowed.

A criterion scores every channel of one coupled group (a Torch-Pruning `Group` holding all the layers that
share those channels); `compress` keeps the highest-scoring ones. New criteria (the seed papers' CCP,
L1+std, REAP, ...) subclass `Criterion` and register a name.
"""

from __future__ import annotations

import abc

import torch
import torch_pruning as tp

from automl_prune.registry import Registry

__all__ = ["CRITERIA", "Criterion", "get_criterion"]


class Criterion(abc.ABC):
    """Scores the channels of a group; higher means more worth keeping."""

    @abc.abstractmethod
    def __call__(self, group: tp.Group) -> torch.Tensor:
        """One score per channel of the group's root layer."""


class _TorchPruningImportance(Criterion):
    def __init__(self, importance: tp.importance.Importance) -> None:
        self._importance = importance

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        return self._importance(group)


class L1Magnitude(_TorchPruningImportance):
    """Mean L1 norm of each channel's weights over every coupled layer (Li et al. 2017)."""

    def __init__(self) -> None:
        super().__init__(tp.importance.GroupMagnitudeImportance(p=1))


class L2Magnitude(_TorchPruningImportance):
    """Mean L2 norm of each channel's weights over every coupled layer."""

    def __init__(self) -> None:
        super().__init__(tp.importance.GroupMagnitudeImportance(p=2))


class BNScale(_TorchPruningImportance):
    """Absolute batch-norm scale of each channel (Network Slimming, Liu et al. 2017)."""

    def __init__(self) -> None:
        super().__init__(tp.importance.BNScaleImportance())


class FPGM(_TorchPruningImportance):
    """Distance to the geometric median of the layer's filters (He et al. 2019)."""

    def __init__(self) -> None:
        super().__init__(tp.importance.FPGMImportance())


CRITERIA: Registry[Criterion] = Registry("criterion")
CRITERIA.register("l1", L1Magnitude)
CRITERIA.register("l2", L2Magnitude)
CRITERIA.register("bn_scale", BNScale)
CRITERIA.register("fpgm", FPGM)


def get_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion instance from a registered name, or the instance itself."""
    if isinstance(criterion, Criterion):
        return criterion
    return CRITERIA.create(criterion)
