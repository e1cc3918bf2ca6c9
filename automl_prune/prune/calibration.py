"""Calibration batches for data-driven criteria, and where a channel group is read inside a network.

A channel of a coupled group is produced by one or more layers (a residual add sums several) and read by
one or more *mixing* consumers: the convs (``groups == 1``) and linear layers whose input channels the
group prunes. Zeroing a channel at the input of every mixing consumer is exactly what removing it does
(a depthwise conv in the group only carries channel ``j`` to its own output ``j``, which is read by the
next mixing layer), so data-driven criteria observe the channel there: at each `Site`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeGuard

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automl_prune.data.batches import first_tensor
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.data.streaming import LazyImages
from automl_prune.errors import ConfigError

__all__ = ["Calibration", "Site", "consumer_sites", "mixing_layers", "producer_filters", "run_calibration"]


@dataclass(frozen=True)
class Calibration:
    """Images (and labels, for loss-based criteria) from the training split, fed in batches.

    Attributes:
        images: Normalized NCHW float images.
        labels: Class indices, one per image, or None when no criterion needs a loss.
        batch_size: Images per forward pass.
    """

    images: Tensor
    labels: Tensor | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.images.ndim < 2 or len(self.images) == 0:
            raise ConfigError(f"calibration images must be a non-empty batch, but got shape {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ConfigError(
                f"calibration needs one label per image, but got {len(self.labels)} labels "
                f"for {len(self.images)} images"
            )
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size >= 1` must hold, but got batch_size={self.batch_size}")

    @classmethod
    def from_split(
        cls, images: Tensor | LazyImages, labels: Tensor | None = None, samples: int = 256, seed: int = 0,
        batch_size: int = 64,
    ) -> Calibration:
        """A seeded random subset of ``samples`` images (and their labels) of a split (decoded when streamed)."""
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(images), generator=generator)[: min(samples, len(images))]
        return cls(images[idx], None if labels is None else labels[idx], batch_size)

    @classmethod
    def from_loader(cls, split: LoaderSplit, samples: int = 256, batch_size: int = 64) -> Calibration:
        """The first ``samples`` items of the user's loader (its first batches; of inputs that are not one tensor,
        the first tensor); labels when its targets are class indices (one integer per item), else none (criteria
        that differentiate a loss then refuse)."""
        inputs, targets = [], []
        for x, y in split.take(samples):
            # Criteria call the model on one tensor, as the graph is traced: a batch's first input tensor.
            inputs.append(first_tensor(x))
            targets.append(y)
        images = torch.cat(inputs)[:samples]
        labelled = all(isinstance(y, Tensor) and y.dim() == 1 and not y.dtype.is_floating_point for y in targets)
        labels = torch.cat(targets)[:samples] if labelled else None
        return cls(images, labels, batch_size)

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, like: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor | None]]:
        """``(images, labels)`` batches, moved to the device and dtype of ``like`` when given."""
        for start in range(0, len(self.images), self.batch_size):
            x = self.images[start : start + self.batch_size]
            y = None if self.labels is None else self.labels[start : start + self.batch_size]
            if like is not None:
                x = x.to(device=like.device, dtype=like.dtype)
                y = None if y is None else y.to(like.device)
            yield x, y


@dataclass(frozen=True)
class Site:
    """A mixing layer that reads channels of a group: its input channel ``layer_idxs[k]`` is ``root_idxs[k]``.

    ``block`` > 1: a linear layer behind a flatten, whose inputs ``c * block`` to ``(c + 1) * block - 1`` are the
    ``block`` positions of channel ``c`` (its "channels" are ``in_features // block``), as a conv's kernel taps.
    """

    module: nn.Conv2d | nn.Linear
    layer_idxs: Tensor
    root_idxs: Tensor
    block: int = 1


def mixing_layers(model: nn.Module) -> list[nn.Module]:
    """Every conv with ``groups == 1`` and every linear layer: the layers whose inputs are mixed."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def _is_mixing(module: object) -> TypeGuard[nn.Linear | nn.Conv2d]:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def consumer_sites(group: tp.Group, size: int, *, flattened: bool = False) -> list[Site]:
    """The mixing layers reading the channels of ``group`` (of ``size`` channels), one `Site` each.

    A consumer that reads each channel more than once (a flatten of a spatial map into a linear layer) is
    left out, as its inputs are not one value per channel, unless ``flattened``: then a linear layer that reads
    every channel as one contiguous block of positions is a `Site` with that ``block``.
    """
    dg = group._DG
    sites: dict[nn.Module, Site] = {}
    for item in group:
        module = item.dep.target.module
        if not _is_mixing(module) or dg.is_out_channel_pruning_fn(item.dep.handler) or module in sites:
            continue
        if len(item.idxs) != size and not (flattened and isinstance(module, nn.Linear)):
            continue
        idxs = torch.as_tensor([int(i) for i in item.idxs])
        roots = torch.as_tensor([int(r) for r in item.root_idxs])
        if len(idxs) == size:
            sites[module] = Site(module, idxs, roots)
        elif flattened and isinstance(module, nn.Linear) and (block := _flatten_block(idxs, roots, size, module)):
            sites[module] = Site(module, idxs[::block] // block, roots[::block], block)
    return list(sites.values())


def _flatten_block(idxs: Tensor, roots: Tensor, size: int, module: nn.Linear) -> int:
    """The positions per channel when ``module`` reads each of the ``size`` channels as one aligned, contiguous
    block of its inputs in ``idxs`` (a flatten of ``(C, H, W)``), else 0."""
    if len(idxs) % size or module.in_features % (len(idxs) // size):
        return 0
    block = len(idxs) // size
    starts, rest = idxs.view(size, block), roots.view(size, block)
    aligned = bool((starts[:, 0] % block == 0).all())
    contiguous = bool((starts - starts[:, :1] == torch.arange(block)).all()) and bool((rest == rest[:, :1]).all())
    return block if block > 1 and aligned and contiguous else 0


def producer_filters(group: tp.Group, size: int) -> list[tuple[Tensor, Tensor]]:
    """``(filters, root_idxs)`` of every conv/linear whose outputs the group prunes; filters flattened per row."""
    dg = group._DG
    found = []
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        if len(item.idxs) != size:
            continue
        idxs = torch.as_tensor([int(i) for i in item.idxs])
        found.append((module.weight.detach()[idxs].flatten(1), torch.as_tensor([int(r) for r in item.root_idxs])))
    return found


Observer = Callable[[nn.Module, Tensor, "Tensor | None"], None]


def run_calibration(
    model: nn.Module,
    calibration: Calibration,
    modules: list[nn.Module],
    observe: Observer,
    *,
    grads: bool = False,
    batch_done: Callable[[], None] | None = None,
) -> None:
    """Feed every calibration batch through ``model`` (in eval mode) and show each module's input to ``observe``.

    ``observe(module, x, g)`` gets the input ``x`` of each module of ``modules`` and, when ``grads`` is set,
    ``g``: the per-sample derivative of the summed cross-entropy loss with respect to a gate multiplying
    each input channel (shape ``(N, C)``), i.e. ``sum over positions of x * dL/dx`` for that sample.
    Parameters' ``.grad`` are never touched. ``batch_done()`` is called after each batch.
    """
    wanted = set(modules)
    captured: list[tuple[nn.Module, Tensor, Tensor | None]] = []

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        x = args[0]
        if not grads:
            captured.append((module, x.detach(), None))
            return None
        gate = torch.ones(x.shape[:2], device=x.device, dtype=x.dtype, requires_grad=True)
        captured.append((module, x.detach(), gate))
        return (x * gate.view(*gate.shape, *([1] * (x.ndim - 2))), *args[1:])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if m in wanted]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        for x, y in calibration.batches(param):
            captured.clear()
            if grads:
                if y is None:
                    raise ConfigError("this criterion differentiates a loss, so its calibration images need labels")
                with torch.enable_grad():
                    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
                    gates = [gate for _, _, gate in captured if gate is not None]
                    gate_grads = torch.autograd.grad(loss, gates, allow_unused=True)
                for (module, inp, gate), grad in zip(captured, gate_grads, strict=True):
                    observe(module, inp, torch.zeros_like(gate) if grad is None else grad.detach())
            else:
                with torch.no_grad():
                    model(x)
                for module, inp, _ in captured:
                    observe(module, inp, None)
            if batch_done is not None:
                batch_done()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
