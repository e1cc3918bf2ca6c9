"""Structure of a network as plain data: its layers and the channel groups that must be pruned together.

Coupled channels (a residual add, a concatenation, a depthwise conv, a flatten into a linear layer) are
found by Torch-Pruning's `DependencyGraph`; everything the rest of the system needs from that analysis
(layer shapes, spatial positions, which layer dimensions each group shrinks) is copied into frozen
dataclasses keyed by module path, so it serializes and never holds live modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from automl_prune.errors import ConfigError

__all__ = [
    "ChannelGroup",
    "GroupMember",
    "LayerInfo",
    "NetworkGraph",
    "analyze",
    "build_dependency_graph",
    "measure_flops",
]

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


@dataclass(frozen=True)
class LayerInfo:
    """A conv, linear or per-channel layer at full width.

    ``positions`` is how many times the weight is applied per sample (output H x W for a conv, summed over
    calls when a module is reused), which is what turns MACs into FLOPs.
    """

    name: str
    kind: str  # "conv", "linear" or "channelwise" (batch norm and other per-channel parameters)
    in_channels: int
    out_channels: int
    groups: int = 1
    kernel_elems: int = 1
    positions: int = 1
    bias: bool = False
    params: int = 0
    order: int = 0
    stride: int = 1
    out_size: int = 1

    @property
    def depthwise(self) -> bool:
        """A conv whose every output channel sees exactly one input channel."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class GroupMember:
    """One layer dimension shrunk by a group: ``count`` of its channels belong to the group's ``size``."""

    layer: str
    dim: str  # "out" or "in"
    count: int


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are kept or removed together; named by the module path of its root layer."""

    name: str
    size: int
    members: tuple[GroupMember, ...]
    order: int

    def member_layers(self) -> list[str]:
        """Module paths of every layer this group touches."""
        return sorted({m.layer for m in self.members})


@dataclass(frozen=True)
class NetworkGraph:
    """Everything the cost model, the search space and `compress` need to know about a network."""

    input_shape: tuple[int, ...]
    layers: dict[str, LayerInfo]
    groups: tuple[ChannelGroup, ...]
    classifier: str
    fixed_params: int = 0
    group_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_index", {g.name: i for i, g in enumerate(self.groups)})

    def group(self, name: str) -> ChannelGroup:
        """The group called ``name``."""
        return self.groups[self.group_index[name]]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [asdict(layer) for layer in self.layers.values()],
            "groups": [
                {"name": g.name, "size": g.size, "order": g.order, "members": [asdict(m) for m in g.members]}
                for g in self.groups
            ],
            "classifier": self.classifier,
            "fixed_params": self.fixed_params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkGraph:
        """Inverse of `to_dict`."""
        layers = {d["name"]: LayerInfo(**d) for d in data["layers"]}
        groups = tuple(
            ChannelGroup(
                name=g["name"],
                size=g["size"],
                order=g["order"],
                members=tuple(GroupMember(**m) for m in g["members"]),
            )
            for g in data["groups"]
        )
        return cls(
            input_shape=tuple(data["input_shape"]),
            layers=layers,
            groups=groups,
            classifier=data["classifier"],
            fixed_params=data.get("fixed_params", 0),
        )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _forward_with_layer_outputs(model: nn.Module, example_input: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
    """The model's output, and the output of every conv and linear layer that ran (each as a traced output).

    Torch-Pruning follows autograd back from the outputs it is given; a layer whose result reaches the model's
    outputs only through ``.detach()`` (a detector's region proposal head) is then still in the graph.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            captured.append(output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        out = model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return out, captured


def build_dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, traced in eval mode (batch norm on one sample)."""
    # Torch-Pruning follows autograd: frozen layers (requires_grad False) would be invisible, so they are traced
    # as trainable and put back as they were.
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        with _eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, forward_fn=_forward_with_layer_outputs
            )
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


def _trace_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[dict[str, LayerInfo], str]:
    """Run one forward pass with hooks to learn each layer's spatial positions and execution order."""
    names = {module: name for name, module in model.named_modules()}
    batch = len(example_input)
    calls: dict[str, list[tuple[int, int, int]]] = {}
    order: dict[str, int] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        name = names[module]
        order.setdefault(name, len(order))
        # Applications per sample: H x W of a conv, the leading dims of a linear; a layer applied per region
        # of interest (a detector's box head, whose leading dim counts regions, not samples) counts each region.
        if isinstance(module, nn.Conv2d):
            positions = output.numel() // (batch * output.shape[-3])
            in_size = inputs[0].shape[-1]
            out_size = output.shape[-1]
        else:
            positions = output.numel() // (batch * output.shape[-1])
            in_size = out_size = 1
        calls.setdefault(name, []).append((positions, in_size, out_size))

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear, *_NORM_TYPES))
    ]
    try:
        with _eval_mode(model), torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()

    uncounted = [
        f"{type(module).__name__} {name!r}" if name else
        f"parameters held by the model itself ({', '.join(repr(p) for p, _ in module.named_parameters(recurse=False))})"
        for name, module in model.named_modules()
        if not isinstance(module, (nn.Conv2d, nn.Linear, *_NORM_TYPES))
        and any(True for _ in module.parameters(recurse=False))
    ]
    if uncounted:
        listed = ", ".join(uncounted[:3]) + (f" and {len(uncounted) - 3} more" if len(uncounted) > 3 else "")
        raise ConfigError(
            f"the model has layers whose cost is not modelled ({listed}), so FLOPs budgets would not be exact; "
            "supported layers: Conv2d, Linear, BatchNorm, GroupNorm, LayerNorm, PReLU"
        )
    layers: dict[str, LayerInfo] = {}
    for name in sorted(order, key=order.__getitem__):
        module = model.get_submodule(name)
        positions = sum(c[0] for c in calls[name])
        n_params = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            stride = module.stride[0]
            layers[name] = LayerInfo(
                name=name,
                kind="conv",
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                groups=module.groups,
                kernel_elems=module.kernel_size[0] * module.kernel_size[1],
                positions=positions,
                bias=module.bias is not None,
                params=n_params,
                order=order[name],
                stride=stride,
                out_size=calls[name][0][2],
            )
        elif isinstance(module, nn.Linear):
            layers[name] = LayerInfo(
                name=name,
                kind="linear",
                in_channels=module.in_features,
                out_channels=module.out_features,
                positions=positions,
                bias=module.bias is not None,
                params=n_params,
                order=order[name],
            )
        elif n_params:
            channels = _channelwise_channels(module)
            layers[name] = LayerInfo(
                name=name,
                kind="channelwise",
                in_channels=channels,
                out_channels=channels,
                params=n_params,
                order=order[name],
            )
    weighted = [n for n, layer in layers.items() if layer.kind in ("conv", "linear")]
    if not weighted:
        raise ValueError("the model has no Conv2d or Linear layer, so there is nothing to prune")
    classifier = max(weighted, key=lambda n: layers[n].order)
    return layers, classifier


def _channelwise_channels(module: nn.Module) -> int:
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[0])
    assert isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))  # the rest of `_NORM_TYPES`
    return int(module.num_features)


def analyze(model: nn.Module, example_input: torch.Tensor) -> NetworkGraph:
    """Find the layers and the prunable channel groups of ``model`` for inputs shaped like ``example_input``.

    The classifier (the last conv or linear layer to run) and every other layer whose outputs reach a model
    output without passing another conv or linear layer (detection and segmentation heads) never lose outputs,
    and the network input never loses channels. Groups that touch a grouped, non-depthwise conv are left out:
    their channel bookkeeping is not a plain per-channel removal.
    """
    example_input = example_input[:1]
    layers, classifier = _trace_layers(model, example_input)
    try:
        dg = build_dependency_graph(model, example_input)
    except ZeroDivisionError as error:  # Torch-Pruning on channel shuffles (view + transpose of channels)
        raise ConfigError(
            f"Torch-Pruning cannot trace the channel dependencies of {type(model).__name__} "
            f"(ZeroDivisionError: {error}; channel shuffles are not supported); choose another model"
        ) from error
    module_names = {module: name for name, module in model.named_modules()}
    _check_traced(model, dg, layers)
    grouped_convs = [
        model.get_submodule(n) for n, layer in layers.items() if layer.kind == "conv" and layer.groups > 1
    ]
    outputs = _output_layers(model, dg, layers)
    ignored = [model.get_submodule(n) for n in sorted({classifier, *outputs}, key=lambda n: layers[n].order)] + [
        m for m in grouped_convs if not layers[module_names[m]].depthwise
    ]

    groups: list[ChannelGroup] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Maximum recursive depth reached")  # Torch-Pruning shape inference
        found = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear)))
    for group in found:
        root = group[0].dep.target.module
        root_name = module_names[root]
        size = layers[root_name].out_channels
        members: dict[tuple[str, str], int] = {}
        valid = size > 1
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module not in module_names:
                continue
            name = module_names[module]
            if name not in layers:
                if any(True for _ in module.parameters(recurse=False)):
                    valid = False  # a parametrized layer we cannot account for
                continue
            layer = layers[name]
            dim = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
            if layer.kind == "channelwise" or layer.depthwise:
                dim = "out"
            if layer.kind == "conv" and layer.groups > 1 and not layer.depthwise:
                valid = False
            key = (name, dim)
            members[key] = max(members.get(key, 0), len(item.idxs))
        # A member holding part of the group (a chunk/split of its channels) is not a plain per-channel
        # removal: the cost model counts whole multiples of the group's width, so such groups stay at full width.
        if any(count % size for count in members.values()):
            valid = False
        if not valid:
            continue
        groups.append(
            ChannelGroup(
                name=root_name,
                size=size,
                order=layers[root_name].order,
                members=tuple(
                    GroupMember(layer=n, dim=d, count=c) for (n, d), c in sorted(members.items())
                ),
            )
        )
    groups.sort(key=lambda g: g.order)
    counted = {n for n in layers}
    fixed_params = sum(
        p.numel()
        for name, module in model.named_modules()
        if name not in counted
        for p in module.parameters(recurse=False)
    )
    return NetworkGraph(
        input_shape=tuple(example_input.shape),
        layers=layers,
        groups=tuple(groups),
        classifier=classifier,
        fixed_params=fixed_params,
    )


def _check_traced(model: nn.Module, dg: tp.DependencyGraph, layers: dict[str, LayerInfo]) -> None:
    """Every conv/linear that ran must be in the dependency graph, or its channel couplings are unknown.

    Torch-Pruning follows autograd from the outputs back, so a layer whose result reaches the outputs only
    through ``.detach()`` (or under ``torch.no_grad()``), such as a detector's region proposal head, is invisible
    to it: pruning the channels it reads would silently break it.
    """
    missing = [
        name
        for name, layer in layers.items()
        if layer.kind in ("conv", "linear") and model.get_submodule(name) not in dg.module2node
    ]
    if missing:
        listed = ", ".join(repr(n) for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(
            f"cannot trace the channel dependencies of layer {listed}: it runs, but its result reaches the model's "
            "outputs only through .detach() or torch.no_grad() (e.g. a detector's proposal head), so the layers "
            "feeding it could not be pruned safely; trace a forward that returns differentiable outputs of every "
            "layer (e.g. the raw head outputs), or prune a submodule (such as the backbone) instead"
        )


def _output_layers(model: nn.Module, dg: tp.DependencyGraph, layers: dict[str, LayerInfo]) -> set[str]:
    """Conv/linear layers whose output channels reach a model output without passing another conv or linear.

    Their output channels are part of what the model returns (class logits, box regressions, a segmentation
    map, a returned feature map): they are never pruned. Per-channel layers (batch norm) and parameter-free
    operations (activations, reshapes, concatenations, pooling, post-processing) are followed through.
    """
    weighted = {id(model.get_submodule(n)): n for n, layer in layers.items() if layer.kind in ("conv", "linear")}
    found: set[str] = set()
    for name in weighted.values():
        start = dg.module2node.get(model.get_submodule(name))
        if start is None:
            continue
        stack, seen = [start], {start}
        while stack:
            node = stack.pop()
            if not node.outputs:
                found.add(name)
                break
            for nxt in node.outputs:
                if nxt in seen or id(nxt.module) in weighted:
                    continue
                seen.add(nxt)
                stack.append(nxt)
    return found


def measure_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one sample, counted by `torch.utils.flop_counter.FlopCounterMode`.

    Counted on a zero image and on a random one: a model whose FLOPs depend on the input values (a detector
    whose box head runs once per region kept by non-maximum suppression) cannot have exact FLOPs budgets.

    Raises:
        ConfigError: The two counts differ; the message names the layers that ran a different amount.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = (1, *input_shape[1:])
    param = next(model.parameters())
    names = {module: name for name, module in model.named_modules()}

    def count(x: torch.Tensor) -> tuple[int, dict[str, int]]:
        sizes: dict[str, int] = {}

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor):
                sizes[names[module]] = sizes.get(names[module], 0) + output.numel()

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        try:
            with _eval_mode(model), torch.no_grad():
                counter = FlopCounterMode(display=False)
                with counter:
                    model(x)
        finally:
            for handle in handles:
                handle.remove()
        return int(counter.get_total_flops()), sizes

    flops, sizes = count(torch.zeros(shape, device=param.device, dtype=param.dtype))
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(shape, generator=generator).to(device=param.device, dtype=param.dtype)
    other, other_sizes = count(random)
    if other != flops:
        varying = [n for n in {**sizes, **other_sizes} if sizes.get(n) != other_sizes.get(n)]
        listed = ", ".join(repr(n) for n in varying[:3]) + (f" and {len(varying) - 3} more" if len(varying) > 3 else "")
        raise ConfigError(
            f"the FLOPs of this model depend on the input values ({flops:,} on a zero image, {other:,} on a random "
            f"one): layer {listed or '(unknown)'} runs a data-dependent number of times (e.g. a detector's per-region "
            "box head after non-maximum suppression), so FLOPs budgets cannot be exact; this model is not supported"
        )
    return flops
