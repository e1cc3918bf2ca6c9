"""Channel-importance criteria: which channels of a group survive when it is narrowed.

A criterion scores every channel of one coupled group (a Torch-Pruning `Group` holding all the layers that
share those channels); `compress` keeps the highest-scoring ones. Data-driven criteria (the seed papers'
L1+std, Taylor, EZCrop, channel similarity, REAP, CCP; in `criteria_data`, `criteria_ccp`, `criteria_reap`)
also look at calibration batches (`prepare`), may choose a set for a given width rather than rank channels
one by one (`select`), and may adjust the network before channels go (`fold`) or after (`reconstructs`).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import torch
import torch_pruning as tp

from automl_prune.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from automl_prune.prune.calibration import Calibration

__all__ = ["CRITERIA", "Criterion", "get_criterion"]


class Criterion(abc.ABC):
    """Scores the channels of a group; higher means more worth keeping.

    Only `__call__` is required. The optional hooks default to what a weight-magnitude criterion needs
    (nothing), so such criteria work unchanged.
    """

    requires_data: ClassVar[bool] = False
    """True when `prepare` needs calibration batches."""
    reconstructs: ClassVar[bool] = False
    """True when `compress` must re-fit the pruned layers by least squares afterwards (`reconstruct`)."""
    nested: ClassVar[bool] = False
    """True when an overridden `select` keeps, for every ``keep``, the first ``keep`` channels of one `ranking`:
    the sets of all widths then come from one computation (a search reuses it across candidates)."""

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:  # noqa: B027
        """Called once on the model whose groups are then scored, before any of them (default: nothing)."""

    @abc.abstractmethod
    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        """One score per channel of the group's root layer (None when the group cannot be scored)."""

    def select(self, group: tp.Group, keep: int) -> list[int]:
        """The ``keep`` channels to keep, ascending; by default the ``keep`` highest scores."""
        scores = self(group)
        if scores is None:
            raise ValueError(f"{type(self).__name__} cannot score this group")
        order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
        return sorted(order[:keep].tolist())

    def ranking(self, group: tp.Group) -> list[int]:
        """Every channel, most worth keeping first, such that ``select(group, keep)`` is the first ``keep``;
        only criteria with ``nested`` override it."""
        raise NotImplementedError(f"{type(self).__name__} chooses a set per width; it has no nested ranking")

    def fold(self, group: tp.Group, kept: list[int]) -> None:  # noqa: B027
        """Adjust the (still unpruned) model before the channels not in ``kept`` are removed (default: nothing)."""


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
CRITERIA.register("l1-std", "automl_prune.prune.criteria_data:L1Std")
CRITERIA.register("taylor", "automl_prune.prune.criteria_data:Taylor")
CRITERIA.register("ezcrop", "automl_prune.prune.criteria_data:EZCrop")
CRITERIA.register("similarity", "automl_prune.prune.criteria_data:ChannelSimilarity")
CRITERIA.register("reap", "automl_prune.prune.criteria_reap:REAP")
CRITERIA.register("ccp", "automl_prune.prune.criteria_ccp:CCP")


def get_criterion(criterion: str | Criterion) -> Criterion:
    """A criterion instance from a registered name, or the instance itself."""
    if isinstance(criterion, Criterion):
        return criterion
    return CRITERIA.create(criterion)
