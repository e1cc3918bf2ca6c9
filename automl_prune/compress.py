"""Physical channel pruning: a new, smaller model with exactly the requested width per group."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from automl_prune.criteria import Criterion, get_criterion
from automl_prune.errors import ConfigError
from automl_prune.graph import NetworkGraph, build_dependency_graph

if TYPE_CHECKING:
    from search_spaces import Architecture

__all__ = ["channel_order", "compress", "compress_widths"]


def channel_order(
    model: nn.Module,
    graph: NetworkGraph,
    criterion: str | Criterion = "l1",
    groups: list[str] | None = None,
) -> dict[str, list[int]]:
    """The channels of every group (or of ``groups``), most important first, scored on ``model`` as it is.

    Every group is scored on the same, unpruned model: which channels a group keeps never depends on which
    other groups were narrowed first, so `compress_widths` and the DMCP searcher keep the same channels.

    Raises:
        ConfigError: The criterion cannot score a group (e.g. ``bn_scale`` on a group with no batch norm).
    """
    crit = get_criterion(criterion)
    names = [g.name for g in graph.groups] if groups is None else groups
    if not names:
        return {}
    param = next(model.parameters())
    example = torch.zeros((1, *graph.input_shape[1:]), device=param.device, dtype=param.dtype)
    dg = build_dependency_graph(model, example)
    orders: dict[str, list[int]] = {}
    for name in names:
        size = graph.group(name).size
        root = model.get_submodule(name)
        prune_fn = dg.get_pruner_of_module(root).prune_out_channels
        scores = crit(dg.get_pruning_group(root, prune_fn, list(range(size))))
        if scores is None or scores.numel() != size:
            raise ConfigError(
                f"criterion {type(crit).__name__} cannot score the {size} channels of group {name!r} "
                f"(got {None if scores is None else scores.numel()} scores); choose another criterion, e.g. 'l1'"
            )
        orders[name] = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True).tolist()
    return orders


def compress_widths(
    model: nn.Module,
    graph: NetworkGraph,
    widths: Mapping[str, int],
    criterion: str | Criterion = "l1",
    order: Mapping[str, list[int]] | None = None,
) -> nn.Module:
    """Copy ``model`` and remove channels so that every group keeps exactly ``widths[group]`` channels.

    Channels are chosen by ``criterion`` on the unpruned model (`channel_order`; or given as ``order``) and
    passed to Torch-Pruning as indices, never as ratios, so the counts are exact. ``model`` itself is not
    modified.
    """
    pruned = copy.deepcopy(model)
    to_prune = [g for g in graph.groups if int(widths.get(g.name, g.size)) < g.size]
    if not to_prune:
        return pruned
    given = dict(order or {})
    missing = [g.name for g in to_prune if g.name not in given]
    order = {**given, **channel_order(pruned, graph, criterion, missing)} if missing else given
    param = next(pruned.parameters())
    example = torch.zeros((1, *graph.input_shape[1:]), device=param.device, dtype=param.dtype)
    dg = build_dependency_graph(pruned, example)
    for group in to_prune:
        keep = int(widths[group.name])
        root = pruned.get_submodule(group.name)
        prune_fn = dg.get_pruner_of_module(root).prune_out_channels
        removed = sorted(order[group.name][keep:])
        dg.get_pruning_group(root, prune_fn, removed).prune()
    return pruned


def compress(
    model: nn.Module,
    graph: NetworkGraph,
    architecture: Architecture,
    criterion: str | Criterion = "l1",
) -> nn.Module:
    """A new, physically smaller model for ``architecture`` (see `compress_widths`)."""
    return compress_widths(model, graph, architecture.widths, criterion)
