"""Sparsity-regularized pruning: drive the channels an architecture removes to zero before cutting them.

One-shot pruning removes channels that still carry signal, and the fine-tune has to win that signal back.
Here the FULL-width model is first trained for a few hundred steps with a penalty on exactly the channels the
architecture will remove (chosen beforehand by the criterion), so that by the time they are cut they hold
almost nothing and the cut changes the network's outputs very little. Two penalties, from the seed papers:

- ``group-lasso`` (Li et al., "Group Sparsity: The Hinge Between Filter Pruning and Decomposition for Network
  Compression", CVPR 2020, seed 003): ``lambda * sum_c ||w_c||_2``, where ``w_c`` gathers every parameter of
  channel ``c`` across its coupled group: the producing convs' filters and biases, the batch-norm scales and
  shifts, and the input slices of the consuming layers (residual adds and depthwise convs included).
- ``growing-l2`` (Wang et al., "Neural Pruning via Growing Regularization", ICLR 2021, seed 002; GReg-1):
  ``lambda_t * sum_c ||w_c||_2^2`` on the same parameters, with ``lambda_t`` raised by a fixed increment every
  few steps up to a ceiling, so the removed channels fade out gradually while the kept ones take over.

Simplifications against the papers, stated:

- Only the channels the architecture removes are penalized (the issue's design: the search decides the widths,
  a criterion decides which channels); Li et al. regularize all filters and let the sparsity pick the widths.
- Group lasso is minimized by (sub)gradient descent through the loss, with the fine-tune's SGD, instead of
  the paper's proximal gradient step; the run's cosine learning-rate decay damps the oscillation around zero
  that plain subgradients leave.
- GReg's schedule is fixed in steps rather than open-ended: the coefficient rises in 10 equal increments over
  the first half of the steps to ``strength`` (the paper: +1e-4 every 10 iterations up to 1, however long that
  takes) and is held there for the second half; the paper's Hessian-aware variant (GReg-2) is not done.
- The penalty is a plain loss term on the training loss (cross-entropy), without distillation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from automl_prune.data.loader_split import LoaderSplit
from automl_prune.errors import ConfigError
from automl_prune.graph.analysis import NetworkGraph, build_dependency_graph
from automl_prune.prune.criteria import Criterion, get_criterion
from automl_prune.prune.names import REGULARIZERS

if TYPE_CHECKING:
    import torch_pruning as tp

    from automl_prune.data.datasets import Split, Splits
    from automl_prune.prune.calibration import Calibration

__all__ = [
    "REGULARIZERS",
    "ChannelPenalty",
    "ChannelSlice",
    "PinnedOrder",
    "coupled_slices",
    "regularize",
    "regularized_start",
    "removed_channels",
]

@dataclass(frozen=True, eq=False)
class ChannelSlice:
    """Positions ``index`` along dimension ``dim`` of ``layer.param`` belong to root channels ``channel``."""

    layer: str
    param: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor


def _param_dims(module: nn.Module, out: bool) -> list[tuple[str, int]]:
    """Which parameters of ``module`` (and along which dimension) a group's channels index."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1
        if out or depthwise:
            return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else [])
        return [("weight", 1)]
    if isinstance(module, nn.Linear):
        if out:
            return [("weight", 0)] + ([("bias", 0)] if module.bias is not None else [])
        return [("weight", 1)]
    # Batch norm and the other per-channel layers of `automl_prune.graph.analysis`: every own parameter, dimension 0.
    return [(name, 0) for name, p in module.named_parameters(recurse=False) if p.dim() >= 1]


def coupled_slices(model: nn.Module, graph: NetworkGraph, groups: Sequence[str] | None = None
                   ) -> dict[str, list[ChannelSlice]]:
    """Every parameter slice of every channel of each group, across all its coupled layers.

    The coupling is Torch-Pruning's (the same dependency groups `automl_prune.prune.pruning.compress_widths` cuts):
    each group item names a layer, whether its outputs or inputs are shrunk, and which of its indices follow
    which root channel (``idxs``/``root_idxs``; a flatten into a linear layer maps one channel to many inputs).

    Args:
        model: The full-width model ``graph`` describes.
        graph: Its `NetworkGraph`.
        groups: Only these groups (default: all).
    """
    from automl_prune.prune.pruning import _example, _full_group

    names = [g.name for g in graph.groups] if groups is None else list(groups)
    if not names:
        return {}
    dg = build_dependency_graph(model, _example(model, graph))
    module_names = {module: name for name, module in model.named_modules()}
    result: dict[str, list[ChannelSlice]] = {}
    for name in names:
        group: tp.Group = _full_group(dg, model, name, graph.group(name).size)
        pairs: dict[tuple[str, str, int], set[tuple[int, int]]] = {}
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in module_names:
                continue
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            mapped = {(int(i), int(r)) for i, r in zip(item.idxs, item.root_idxs, strict=True)}
            for param, dim in _param_dims(module, out):
                pairs.setdefault((module_names[module], param, dim), set()).update(mapped)
        slices = []
        for (layer, param, dim), mapped in sorted(pairs.items()):
            size = getattr(model.get_submodule(layer), param).shape[dim]
            ordered = sorted(p for p in mapped if p[0] < size)
            if ordered:
                slices.append(ChannelSlice(layer, param, dim, torch.tensor([i for i, _ in ordered]),
                                           torch.tensor([r for _, r in ordered])))
        result[name] = slices
    return result


def removed_channels(graph: NetworkGraph, widths: Mapping[str, int], order: Mapping[str, Sequence[int]]
                     ) -> dict[str, list[int]]:
    """The channels each narrowed group loses: everything after the first ``widths[group]`` of ``order``."""
    removed = {}
    for group in graph.groups:
        keep = int(widths.get(group.name, group.size))
        if keep < group.size:
            removed[group.name] = sorted(int(c) for c in order[group.name][keep:])
    return removed


class ChannelPenalty:
    """The regularizer on the to-be-removed channels; called as ``penalty(model, step)`` by the `Trainer`.

    Args:
        model: The full-width model (the slices are found on it; the penalty reads the parameters of the model
            it is called with, by module path, so a moved or reloaded copy works too).
        graph: Its `NetworkGraph`.
        removed: Channels to drive to zero, per group (`removed_channels`).
        method: ``group-lasso`` or ``growing-l2``.
        strength: Group lasso's coefficient, or growing L2's ceiling.
        steps: How many steps the regularized phase runs (growing L2 plans its schedule over them).
    """

    def __init__(self, model: nn.Module, graph: NetworkGraph, removed: Mapping[str, Sequence[int]], *,
                 method: str, strength: float, steps: int) -> None:
        if method not in REGULARIZERS[1:]:
            raise ConfigError(f"`regularize` must be one of {list(REGULARIZERS[1:])} here, but got {method!r}")
        if strength <= 0 or steps < 1:
            raise ConfigError(f"regularization needs strength > 0 and steps >= 1, but got {strength} and {steps}")
        self.method, self.strength, self.steps = method, float(strength), int(steps)
        self.slices = coupled_slices(model, graph, [g for g, chans in removed.items() if chans])
        self.sizes = {g: graph.group(g).size for g in self.slices}
        self.masks = {}
        for g in self.slices:
            mask = torch.zeros(self.sizes[g], dtype=torch.bool)
            mask[list(removed[g])] = True
            self.masks[g] = mask
        self._ramp = max(1, self.steps // 2)
        self._interval = max(1, self._ramp // 10)

    def coefficient(self, step: int) -> float:
        """The penalty's coefficient at ``step``: constant for group lasso, a rising staircase for growing L2."""
        if self.method == "group-lasso":
            return self.strength
        increments = step // self._interval + 1
        return min(self.strength, self.strength * increments * self._interval / self._ramp)

    def squared_norms(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Each channel's squared L2 norm over all its coupled parameters, per penalized group."""
        norms = {}
        for group, slices in self.slices.items():
            total = None
            for s in slices:
                param = getattr(model.get_submodule(s.layer), s.param)
                values = param.index_select(s.dim, s.index.to(param.device)).pow(2)
                per_index = values.sum(dim=[d for d in range(values.dim()) if d != s.dim]) if values.dim() > 1 \
                    else values
                part = torch.zeros(self.sizes[group], device=param.device, dtype=param.dtype)
                part = part.index_add(0, s.channel.to(param.device), per_index)
                total = part if total is None else total + part
            if total is not None:
                norms[group] = total
        return norms

    def norms(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per penalized group, the L2 norms of its (removed, kept) channels, detached."""
        with torch.no_grad():
            return {g: (sq[self.masks[g].to(sq.device)].sqrt().cpu(), sq[~self.masks[g].to(sq.device)].sqrt().cpu())
                    for g, sq in self.squared_norms(model).items()}

    def __call__(self, model: nn.Module, step: int) -> torch.Tensor:
        terms = []
        for group, sq in self.squared_norms(model).items():
            removed = sq[self.masks[group].to(sq.device)]
            # Group lasso's gradient w / ||w|| is kept finite at zero by the epsilon.
            terms.append((removed + 1e-12).sqrt().sum() if self.method == "group-lasso" else removed.sum())
        if not terms:
            return torch.zeros((), device=next(model.parameters()).device)
        return self.coefficient(step) * torch.stack(terms).sum()


def regularize(
    model: nn.Module,
    graph: NetworkGraph,
    removed: Mapping[str, Sequence[int]],
    data: Splits | Split,
    *,
    method: str,
    steps: int,
    strength: float,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """A copy of the full-width ``model`` trained ``steps`` steps with the penalty on the ``removed`` channels.

    The training is the fine-tune's (`automl_prune.train.training.Trainer`: SGD with Nesterov momentum, weight decay
    5e-4, warm-up and cosine decay over the ``steps``) with `ChannelPenalty` added to the cross-entropy (or to
    ``loss``, the task's: `automl_prune.data.task.Task`).
    ``model`` itself is not modified. The result is on CPU, in eval mode, contiguous.
    """
    from automl_prune.train.training import Trainer

    regularized: nn.Module = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch's stub lacks to(device, memory_format=)
    penalty = ChannelPenalty(regularized, graph, removed, method=method, strength=strength, steps=steps)
    split = data.train if hasattr(data, "train") else data
    per_epoch = max(1, split.num_batches or 1) if isinstance(split, LoaderSplit) else max(1, len(split) // batch_size)
    trainer = Trainer(regularized, data, epochs=math.ceil(steps / per_epoch), max_steps=steps, lr=lr,
                      batch_size=batch_size, seed=seed, device=device, channels_last=False, penalty=penalty,
                      loss=loss)
    trainer.run(progress=False)
    return regularized.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # torch's stub lacks to(device, memory_format=)


class PinnedOrder(Criterion):
    """A criterion that returns a ranking fixed beforehand (per group, most important first).

    After regularization the channels to cut were decided on the base model; re-scoring the regularized model
    could pick others. Folding criteria (``similarity``) are not re-applied either: the removed channels now
    carry almost nothing, so folding their next-layer weights into a kept channel would add noise, not signal.
    """

    def __init__(self, order: Mapping[str, Sequence[int]]) -> None:
        self.order = {g: [int(c) for c in chans] for g, chans in order.items()}
        self._names: dict[nn.Module, str] = {}

    def prepare(self, model: nn.Module, calibration: Calibration | None) -> None:
        self._names = {module: name for name, module in model.named_modules()}

    def __call__(self, group: tp.Group) -> torch.Tensor:
        name = self._names[group[0].dep.target.module]
        ranking = self.order[name]
        scores = torch.empty(len(ranking))
        scores[torch.tensor(ranking)] = -torch.arange(len(ranking), dtype=torch.float32)
        return scores


def regularized_start(
    model: nn.Module,
    graph: NetworkGraph,
    widths: Mapping[str, int],
    criterion: str | Criterion,
    data: Splits | Split,
    *,
    method: str,
    steps: int,
    strength: float,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    calibration: Calibration | None = None,
    device: torch.device | str | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[nn.Module, PinnedOrder]:
    """The regularized full-width model and the criterion that cuts exactly the channels it was regularized for.

    ``criterion`` ranks the channels on the base ``model`` (for criteria that choose a set per width, the set for
    ``widths``), the channels past each group's width are regularized towards zero (`regularize`), and the
    returned `PinnedOrder` makes `automl_prune.prune.pruning.compress_widths` remove exactly those.
    """
    from automl_prune.prune.pruning import channel_order

    order = channel_order(model, graph, get_criterion(criterion), calibration=calibration, widths=widths)
    removed = removed_channels(graph, widths, order)
    if not removed:
        return copy.deepcopy(model).eval(), PinnedOrder(order)
    regularized = regularize(model, graph, removed, data, method=method, steps=steps, strength=strength, lr=lr,
                             batch_size=batch_size, seed=seed, device=device, loss=loss)
    return regularized, PinnedOrder(order)
