"""Analytic cost of an architecture: FLOPs and parameters without a forward pass.

One FLOP convention everywhere: 2 x multiply-accumulates of conv and linear layers, exactly as
`torch.utils.flop_counter.FlopCounterMode` counts them (bias additions, norms and activations are free).
Each layer's input and output widths are affine in the channels each group removes, so FLOPs and params are
a few small matrix products: microseconds per architecture, which the searchers' budget logic relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from automl_prune.graph.analysis import NetworkGraph

__all__ = ["CostModel", "Costs"]


@dataclass(frozen=True)
class Costs:
    """What an architecture costs per sample."""

    flops: int
    params: int


class CostModel:
    """FLOPs and params of any width assignment of a `NetworkGraph`."""

    def __init__(self, graph: NetworkGraph) -> None:
        self.graph = graph
        self.group_names = [g.name for g in graph.groups]
        self.group_sizes = np.array([g.size for g in graph.groups], dtype=np.int64)
        layers = list(graph.layers.values())
        self.layer_names = [layer.name for layer in layers]
        index = {name: i for i, name in enumerate(self.layer_names)}
        n_layers, n_groups = len(layers), len(graph.groups)
        # channels removed from layer dim = (coef @ removed_per_group) // size_of_group, kept integer-exact
        # by storing count and dividing per group.
        self._in_coef = np.zeros((n_layers, n_groups), dtype=np.int64)
        self._out_coef = np.zeros((n_layers, n_groups), dtype=np.int64)
        for j, group in enumerate(graph.groups):
            for member in group.members:
                coef = self._out_coef if member.dim == "out" else self._in_coef
                # count / size is the number of layer channels per group channel (H*W through a flatten).
                coef[index[member.layer], j] = member.count // group.size
        self._in_full = np.array([layer.in_channels for layer in layers], dtype=np.int64)
        self._out_full = np.array([layer.out_channels for layer in layers], dtype=np.int64)
        kind = np.array([layer.kind for layer in layers])
        self._is_weighted = (kind == "conv") | (kind == "linear")
        self._is_depthwise = np.array([layer.depthwise for layer in layers])
        self._groups = np.array([layer.groups for layer in layers], dtype=np.int64)
        self._macs_per_unit = np.array([layer.positions * layer.kernel_elems for layer in layers], dtype=np.int64)
        self._weights_per_unit = np.array([layer.kernel_elems for layer in layers], dtype=np.int64)
        self._bias = np.array([layer.bias for layer in layers], dtype=np.int64)
        self._channelwise_params_per_channel = np.array(
            [
                layer.params // layer.out_channels if layer.kind == "channelwise" and layer.out_channels else 0
                for layer in layers
            ],
            dtype=np.int64,
        )
        self.full = self.costs({})

    def _removed(self, widths: Mapping[str, int]) -> np.ndarray:
        removed = np.zeros(len(self.group_names), dtype=np.int64)
        index = self.graph.group_index
        for name, kept in widths.items():
            j = index[name]
            removed[j] = self.group_sizes[j] - int(kept)
        return removed

    def layer_widths(self, widths: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Input and output channels of every layer (in `layer_names` order) under ``widths``."""
        removed = self._removed(widths)
        return self._in_full - self._in_coef @ removed, self._out_full - self._out_coef @ removed

    def layer_flops(self, widths: Mapping[str, int]) -> np.ndarray:
        """FLOPs of every layer (in `layer_names` order); zero for per-channel layers."""
        cin, cout = self.layer_widths(widths)
        # depthwise: each output channel reads one input channel, whatever the width
        per_out = np.where(self._is_depthwise, 1, cin // self._groups)
        return np.where(self._is_weighted, 2 * self._macs_per_unit * cout * per_out, 0)

    def layer_macs(self, widths: Mapping[str, int]) -> np.ndarray:
        """Multiply-accumulates per sample of every layer (in `layer_names` order): `layer_flops` / 2."""
        return self.layer_flops(widths) // 2

    def layer_weight_params(self, widths: Mapping[str, int]) -> np.ndarray:
        """Weight elements (bias excluded) of every conv and linear layer (in `layer_names` order); zero otherwise."""
        cin, cout = self.layer_widths(widths)
        per_out = np.where(self._is_depthwise, 1, cin // self._groups)
        return np.where(self._is_weighted, cout * per_out * self._weights_per_unit, 0)

    def costs(self, widths: Mapping[str, int]) -> Costs:
        """FLOPs and params per sample; groups missing from ``widths`` stay at full width."""
        cin, cout = self.layer_widths(widths)
        per_out = np.where(self._is_depthwise, 1, cin // self._groups)
        flops = np.where(self._is_weighted, 2 * self._macs_per_unit * cout * per_out, 0).sum()
        weight_params = np.where(
            self._is_weighted, cout * per_out * self._weights_per_unit + self._bias * cout, 0
        ).sum()
        channelwise = (self._channelwise_params_per_channel * cout).sum()
        return Costs(flops=int(flops), params=int(weight_params + channelwise + self.graph.fixed_params))

    def differentiable_flops(self, kept: torch.Tensor) -> torch.Tensor:
        """FLOPs as a differentiable function of (possibly fractional) kept channels per group.

        ``kept`` is ordered like `group_names`; the result equals `flops` at integer widths.
        """
        sizes = torch.as_tensor(self.group_sizes, dtype=kept.dtype, device=kept.device)
        removed = sizes - kept
        in_coef = torch.as_tensor(self._in_coef, dtype=kept.dtype, device=kept.device)
        out_coef = torch.as_tensor(self._out_coef, dtype=kept.dtype, device=kept.device)
        cin = torch.as_tensor(self._in_full, dtype=kept.dtype, device=kept.device) - in_coef @ removed
        cout = torch.as_tensor(self._out_full, dtype=kept.dtype, device=kept.device) - out_coef @ removed
        groups = torch.as_tensor(self._groups, dtype=kept.dtype, device=kept.device)
        depthwise = torch.as_tensor(self._is_depthwise, device=kept.device)
        per_out = torch.where(depthwise, torch.ones_like(cin), cin / groups)
        macs = torch.as_tensor(self._macs_per_unit, dtype=kept.dtype, device=kept.device)
        weighted = torch.as_tensor(self._is_weighted, device=kept.device)
        return torch.where(weighted, 2 * macs * cout * per_out, torch.zeros_like(cout)).sum()

    def flops(self, widths: Mapping[str, int]) -> int:
        """FLOPs per sample."""
        return self.costs(widths).flops

    def params(self, widths: Mapping[str, int]) -> int:
        """Parameters."""
        return self.costs(widths).params
