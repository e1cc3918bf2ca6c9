"""Physical channel pruning: a new, smaller model with exactly the requested width per group.

Named `pruning`, not `compress`, so that `automl_prune.compress` stays the public function of `automl_prune.api`.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch_pruning as tp
from torch import nn

from automl_prune.errors import ConfigError
from automl_prune.graph.analysis import NetworkGraph, build_dependency_graph
from automl_prune.prune.criteria import Criterion, get_criterion
from automl_prune.prune.reconstruct import OriginalOutputs, record_kept
from automl_prune.prune.reconstruct import reconstruct as refit_layers

if TYPE_CHECKING:
    from automl_prune.prune.calibration import Calibration

__all__ = ["channel_order", "channel_scores", "compress", "compress_widths"]


def _full_group(dg: tp.DependencyGraph, model: nn.Module, name: str, size: int) -> tp.Group:
    root = model.get_submodule(name)
    return dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(size)))


def _scores(crit: Criterion, group: tp.Group, name: str, size: int) -> torch.Tensor:
    scores = crit(group)
    if scores is None or scores.numel() != size:
        raise ConfigError(
            f"criterion {type(crit).__name__} cannot score the {size} channels of group {name!r} "
            f"(got {None if scores is None else scores.numel()} scores); choose another criterion, e.g. 'l1'"
        )
    return scores.detach().float().cpu()


def _selects(crit: Criterion) -> bool:
    """Whether the criterion chooses a set for a given width itself (rather than the top scores)."""
    return type(crit).select is not Criterion.select


def _kept(crit: Criterion, group: tp.Group, name: str, size: int, keep: int) -> list[int]:
    """The ``keep`` channels (ascending) that ``crit`` keeps in ``group``."""
    if not _selects(crit):
        order = torch.argsort(_scores(crit, group, name, size), descending=True, stable=True)
        return sorted(order[:keep].tolist())
    kept = sorted(int(c) for c in crit.select(group, keep))
    if len(set(kept)) != keep or (kept and not 0 <= kept[0] <= kept[-1] < size):
        raise ConfigError(
            f"criterion {type(crit).__name__} chose {kept} for group {name!r}: not {keep} distinct channels of {size}"
        )
    return kept


def _nested_ranking(crit: Criterion, group: tp.Group, name: str, size: int) -> list[int]:
    ranking = [int(c) for c in crit.ranking(group)]
    if sorted(ranking) != list(range(size)):
        raise ConfigError(f"criterion {type(crit).__name__} ranked {ranking} for group {name!r}: not a permutation "
                          f"of its {size} channels")
    return ranking


def _example(model: nn.Module, graph: NetworkGraph) -> torch.Tensor:
    param = next(model.parameters())
    return torch.zeros((1, *graph.input_shape[1:]), device=param.device, dtype=param.dtype)


def channel_order(
    model: nn.Module,
    graph: NetworkGraph,
    criterion: str | Criterion = "l1",
    groups: list[str] | None = None,
    *,
    calibration: Calibration | None = None,
    widths: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """The channels of every group (or of ``groups``), most important first, scored on ``model`` as it is.

    Every group is scored on the same, unpruned model: which channels a group keeps never depends on which
    other groups were narrowed first, so `compress_widths` and the DMCP searcher keep the same channels.

    Args:
        model: The unpruned model.
        graph: Its `NetworkGraph`.
        criterion: A registered name or a `Criterion`.
        groups: Only these groups (default: all).
        calibration: Batches from the training split; required by data-driven criteria (``requires_data``).
        widths: For a criterion that picks a set per width (``ccp``, ``reap``): the first ``widths[g]`` entries
            of group ``g`` are the set it selects for that width; without it the order is its nested ranking.

    Raises:
        ConfigError: The criterion cannot score a group (e.g. ``bn_scale`` on a group with no batch norm), or
            a data-driven criterion got no calibration batches.
    """
    crit = get_criterion(criterion)
    names = [g.name for g in graph.groups] if groups is None else groups
    if not names:
        return {}
    dg = build_dependency_graph(model, _example(model, graph))
    crit.prepare(model, calibration)
    orders: dict[str, list[int]] = {}
    for name in names:
        size = graph.group(name).size
        group = _full_group(dg, model, name, size)
        if crit.nested:
            # Its `select(keep)` keeps the first ``keep`` of one ranking for every ``keep``: no width needed.
            orders[name] = _nested_ranking(crit, group, name, size)
            continue
        ranking = torch.argsort(_scores(crit, group, name, size), descending=True, stable=True).tolist()
        keep = int((widths or {}).get(name, size))
        if keep < size and _selects(crit):
            chosen = set(_kept(crit, group, name, size, keep))
            ranking = [c for c in ranking if c in chosen] + [c for c in ranking if c not in chosen]
        orders[name] = ranking
    _say_fallbacks(crit)
    return orders


def _say_fallbacks(crit: Criterion) -> None:
    """One line naming the groups a data-driven criterion ranked by weight magnitude instead (no consumer of
    theirs it could measure: `automl_prune.prune.criteria_data.ActivationCriterion.fallback`)."""
    fallbacks = sorted(set(getattr(crit, "fallback_groups", [])))
    if fallbacks:
        print(f"criterion {getattr(crit, 'name', type(crit).__name__)!r} cannot measure the layers reading group(s) "
              f"{', '.join(fallbacks)} (a flatten into a linear layer, or a layer too wide to observe): ranked by L1 "
              "weight magnitude ('l1') instead", file=sys.stderr, flush=True)
        crit.fallback_groups.clear()  # type: ignore[attr-defined]


def channel_scores(
    model: nn.Module,
    graph: NetworkGraph,
    criterion: str | Criterion = "l1",
    groups: list[str] | None = None,
    *,
    calibration: Calibration | None = None,
) -> dict[str, torch.Tensor]:
    """Every channel's importance score per group (higher: more worth keeping), scored on ``model`` as it is.

    Raises:
        ConfigError: The criterion chooses sets rather than scoring channels (``ccp``, ``reap``), or cannot
            score a group.
    """
    crit = get_criterion(criterion)
    if _selects(crit):
        raise ConfigError(f"criterion {type(crit).__name__} chooses a set of channels per width rather than scoring "
                          "each channel; a global threshold needs per-channel scores (e.g. 'l1-std' or 'l1')")
    names = [g.name for g in graph.groups] if groups is None else groups
    dg = build_dependency_graph(model, _example(model, graph))
    crit.prepare(model, calibration)
    scores = {name: _scores(crit, _full_group(dg, model, name, graph.group(name).size), name, graph.group(name).size)
              for name in names}
    _say_fallbacks(crit)
    return scores


def compress_widths(
    model: nn.Module,
    graph: NetworkGraph,
    widths: Mapping[str, int],
    criterion: str | Criterion = "l1",
    order: Mapping[str, list[int]] | None = None,
    *,
    calibration: Calibration | None = None,
    reconstruct: bool = False,
    targets: OriginalOutputs | None = None,
) -> nn.Module:
    """Copy ``model`` and remove channels so that every group keeps exactly ``widths[group]`` channels.

    Channels are chosen by ``criterion`` on the unpruned model (its `Criterion.select`; or given as ``order``,
    whose first ``widths[group]`` entries are kept) and passed to Torch-Pruning as indices, never as ratios,
    so the counts are exact. ``model`` itself is not modified. The kept indices of every pruned layer are
    recorded on the result (`automl_prune.prune.reconstruct.kept_channels`).

    Args:
        calibration: Batches from the training split, for data-driven criteria and for ``reconstruct``.
        reconstruct: Re-fit every pruned layer by least squares to the original layer's outputs afterwards
            (`automl_prune.prune.reconstruct.reconstruct`); criteria with ``reconstructs`` (``reap``) always do.
        targets: The original outputs the re-fits aim at, shared by many compressions of ``model`` with the
            same ``calibration`` (`automl_prune.prune.reconstruct.OriginalOutputs`).
    """
    crit = get_criterion(criterion)
    pruned = copy.deepcopy(model)
    to_prune = [g for g in graph.groups if int(widths.get(g.name, g.size)) < g.size]
    if not to_prune:
        return pruned
    dg = build_dependency_graph(pruned, _example(pruned, graph))
    with warnings.catch_warnings():
        # Torch-Pruning's shape inference says this of deep heads (a detector's); the groups are still exact.
        warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
        return _prune_groups(model, pruned, dg, to_prune, widths, crit, dict(order or {}), calibration,
                             reconstruct, targets)


def _prune_groups(model: nn.Module, pruned: nn.Module, dg: tp.DependencyGraph, to_prune: list[Any],
                  widths: Mapping[str, int], crit: Criterion, given: dict[str, list[int]], calibration: Any,
                  reconstruct: bool, targets: Any) -> nn.Module:
    groups = {g.name: _full_group(dg, pruned, g.name, g.size) for g in to_prune}
    folds = type(crit).fold is not Criterion.fold
    if folds or any(g.name not in given for g in to_prune):
        crit.prepare(pruned, calibration)
    refit = reconstruct or crit.reconstructs
    if refit and calibration is None:
        raise ConfigError(
            f"least-squares reconstruction (criterion {type(crit).__name__}) needs calibration batches from the "
            "training split (calibration=Calibration(images))"
        )
    kept: dict[str, list[int]] = {}
    for g in to_prune:
        keep = int(widths[g.name])
        if g.name in given:
            kept[g.name] = sorted(given[g.name][:keep])
        else:
            kept[g.name] = _kept(crit, groups[g.name], g.name, g.size, keep)
    if folds:
        for g in to_prune:
            crit.fold(groups[g.name], kept[g.name])
    layer_kept = _layer_kept(pruned, groups, kept)
    for g in to_prune:
        root = pruned.get_submodule(g.name)
        prune_fn = dg.get_pruner_of_module(root).prune_out_channels
        removed = sorted(set(range(g.size)) - set(kept[g.name]))
        dg.get_pruning_group(root, prune_fn, removed).prune()
    record_kept(pruned, layer_kept)
    if refit:
        assert calibration is not None
        refit_layers(model, pruned, calibration, targets=targets)
    return pruned


def _layer_kept(
    model: nn.Module, groups: Mapping[str, tp.Group], kept: Mapping[str, list[int]]
) -> dict[str, dict[str, list[int]]]:
    """For every conv/linear a pruned group touches: its kept input (``"in"``) and output (``"out"``) indices."""
    names = {module: name for name, module in model.named_modules()}
    layers: dict[str, dict[str, list[int]]] = {}
    for group_name, group in groups.items():
        keep = set(kept[group_name])
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in names:
                continue
            idxs = sorted(int(i) for i, r in zip(item.idxs, item.root_idxs, strict=True) if int(r) in keep)
            out = group._DG.is_out_channel_pruning_fn(item.dep.handler)
            depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
            dims = ["out", "in"] if out and depthwise else ["out" if out else "in"]
            for dim in dims:
                layers.setdefault(names[module], {})[dim] = idxs
    return layers


class HasWidths(Protocol):
    """What `compress` reads of an architecture (a `search_spaces.Architecture` has it)."""

    @property
    def widths(self) -> Mapping[str, int]: ...


def compress(
    model: nn.Module,
    graph: NetworkGraph,
    architecture: HasWidths,
    criterion: str | Criterion = "l1",
    *,
    calibration: Calibration | None = None,
    order: Mapping[str, list[int]] | None = None,
    reconstruct: bool = False,
) -> nn.Module:
    """A new, physically smaller model for ``architecture`` (see `compress_widths`)."""
    return compress_widths(
        model, graph, architecture.widths, criterion, order, calibration=calibration, reconstruct=reconstruct
    )
