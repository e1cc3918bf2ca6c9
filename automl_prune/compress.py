"""Physical channel pruning: a new, smaller model with exactly the requested width per group."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from automl_prune.criteria import Criterion, get_criterion
from automl_prune.graph import NetworkGraph, build_dependency_graph

if TYPE_CHECKING:
    from search_spaces import Architecture

__all__ = ["compress", "compress_widths"]


def compress_widths(
    model: nn.Module,
    graph: NetworkGraph,
    widths: Mapping[str, int],
    criterion: str | Criterion = "l1",
) -> nn.Module:
    """Copy ``model`` and remove channels so that every group keeps exactly ``widths[group]`` channels.

    Channels are chosen by ``criterion`` and passed to Torch-Pruning as indices, never as ratios, so the
    counts are exact. ``model`` itself is not modified.
    """
    crit = get_criterion(criterion)
    pruned = copy.deepcopy(model)
    to_prune = [g for g in graph.groups if int(widths.get(g.name, g.size)) < g.size]
    if not to_prune:
        return pruned
    param = next(pruned.parameters())
    example = torch.zeros((1, *graph.input_shape[1:]), device=param.device, dtype=param.dtype)
    dg = build_dependency_graph(pruned, example)
    for group in to_prune:
        keep = int(widths[group.name])
        root = pruned.get_submodule(group.name)
        prune_fn = dg.get_pruner_of_module(root).prune_out_channels
        full = dg.get_pruning_group(root, prune_fn, list(range(group.size)))
        scores = crit(full)
        if scores is None or scores.numel() != group.size:
            raise RuntimeError(f"criterion {type(crit).__name__} gave no score per channel of {group.name}")
        order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
        removed = sorted(order[keep:].tolist())
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
