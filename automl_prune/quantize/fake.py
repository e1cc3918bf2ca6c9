"""Simulated (fake) k-bit quantization of conv and linear layers, trainable with a straight-through estimator.

Quantizers, per layer (``bits[name] = (weight_bits, activation_bits)``; 32 means not quantized):

- Weights: per output channel, symmetric, linear. With ``q_max = 2**(b-1) - 1`` and
  ``scale_c = max|W_c| / q_max``, each weight becomes ``q * scale_c`` with the integer
  ``q = clamp(round(w / scale_c), -q_max, q_max)``; the largest weight of a channel is exact, zero stays zero.
  Scales follow the weights while they train (recomputed every forward); `packing` stores ``q`` and ``scale``.
- Activations (the layer's *input*): per tensor, asymmetric (affine) with an integer zero point, over a range
  ``[lo, hi]`` that always contains 0 (so zero padding and ReLU zeros are exact). After a ReLU the calibrated
  ``lo`` is 0 and this is exactly unsigned quantization (zero point 0, all ``2**b`` levels non-negative); on a
  signed input (the normalised image of the first layer, a linear projection) it uses the full signed range.
  ``scale = (hi - lo) / (2**b - 1)``, ``zero_point = round(-lo / scale)``.
- Ranges are calibrated by `calibrate` on training batches: ``lo``/``hi`` are the per-batch minimum and maximum
  of the layer's input, *averaged over the batches* (min/max, not a percentile): deterministic, a single pass
  with no sort of large tensors, and averaging per-batch extremes already tempers one outlier batch. Ranges stay
  fixed afterwards, also during quantization-aware training (call `calibrate` again to refresh them).
- Gradients: a straight-through estimator. Weights: ``w + (w_hat - w).detach()`` (identity gradient; the scale
  is treated as a constant). Activations: identity where the input's code lies on the grid (inside ``[lo, hi]``
  widened by half a step), zero where it was clipped. Activations go through torch's fused kernel
  (``torch.fake_quantize_per_tensor_affine``: one pass for value and mask instead of ~10 elementwise ops; a
  4/4-bit resnet20 training step, batch 128, one thread, went from 1.66 s to 1.06 s, float 0.72-0.80 s, on a
  loaded 2-core VM). It multiplies by ``1 / scale`` where the formula divides, so an input within an ulp of a
  rounding tie may land one level away from ``round(x / scale)``; both are on the grid.

Width pruning and quantization compose: compress first (`automl_prune.prune.pruning`), then quantize the smaller
layers (`compress_and_quantize` does both).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from automl_prune.data.batches import call_model, move
from automl_prune.errors import ConfigError
from automl_prune.quantize.bits import FLOAT_BITS, MAX_BITS, MIN_BITS

if TYPE_CHECKING:
    from automl_prune.graph.analysis import NetworkGraph
    from automl_prune.prune.criteria import Criterion

__all__ = [
    "FLOAT_BITS",
    "QuantConv2d",
    "QuantLinear",
    "QuantMixin",
    "activation_qparams",
    "calibrate",
    "compress_and_quantize",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "pin_first_last",
    "quant_layers",
    "quantizable_layers",
    "quantize",
    "weight_codes",
    "weight_scale",
]



# --------------------------------------------------------------------------------------------------- kernels
def _weight_qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def weight_scale(weight: Tensor, bits: int) -> Tensor:
    """Per-output-channel scales (shape ``[out_channels]``) of symmetric ``bits``-bit weight quantization."""
    max_abs = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    # An all-zero channel (fully pruned by training) gets scale 1: its codes are 0 and it stays 0.
    return torch.where(max_abs > 0, max_abs / _weight_qmax(bits), torch.ones_like(max_abs))


def weight_codes(weight: Tensor, bits: int, scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Signed integer codes ``q`` in ``[-q_max, q_max]`` (int64, shaped like ``weight``) and the scales used."""
    scale = weight_scale(weight, bits) if scale is None else scale
    shape = (-1,) + (1,) * (weight.dim() - 1)
    q_max = _weight_qmax(bits)
    codes = torch.clamp(torch.round(weight.detach() / scale.reshape(shape)), -q_max, q_max)
    return codes.to(torch.int64), scale


def fake_quantize_weight(weight: Tensor, bits: int, scale: Tensor | None = None) -> Tensor:
    """``weight`` rounded to its ``bits``-bit per-channel grid, with a straight-through gradient."""
    codes, scale = weight_codes(weight, bits, scale)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w_hat = codes.to(weight.dtype) * scale.to(weight.dtype).reshape(shape)
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return w_hat
    # Exactly w_hat in value (|w - w_hat| <= scale / 2 makes the subtraction exact), identity in gradient.
    return weight + (w_hat - weight).detach()


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """``(scale, zero_point)`` of asymmetric ``bits``-bit quantization of ``[min(lo, 0), max(hi, 0)]``."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    if scale <= 0.0:  # a constant-zero input: any scale represents it exactly
        return 1.0, 0.0
    zero_point = float(min(max(round(-lo / scale), 0), levels))
    return scale, zero_point


def fake_quantize_activation(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """``x`` on the asymmetric ``bits``-bit grid (clipped to its range), gradient 1 on the grid, 0 where clipped."""
    levels = 2**bits - 1
    if x.dtype == torch.float32:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()).to(torch.float32), zero_point.reshape(()).to(torch.int32), 0, levels
        )
    low = (0 - zero_point) * scale
    high = (levels - zero_point) * scale
    clipped = torch.minimum(torch.maximum(x, low), high)
    x_hat = (torch.clamp(torch.round(x / scale) + zero_point, 0, levels) - zero_point) * scale
    return clipped + (x_hat - clipped).detach()


# ---------------------------------------------------------------------------------------------------- layers
class QuantMixin:
    """What `QuantConv2d` and `QuantLinear` share: bit widths, activation range buffers, the quantizers.

    ``w_bits``/``a_bits`` are structure (set by `quantize`), not state: they are not in the state dict. The
    activation range lives in the buffers ``act_scale`` and ``act_zero_point`` (present when ``a_bits < 32``;
    ``act_scale == 0`` means not calibrated yet). ``fixed_weight_scale`` (not saved) is set by
    `automl_prune.quantize.packing.unpack` so that a rebuilt model reproduces the stored scales bit for bit; set it back
    to None before fine-tuning such a model if the scales should follow the weights again.
    """

    w_bits: int
    a_bits: int
    weight: Tensor
    act_scale: Tensor
    act_zero_point: Tensor
    fixed_weight_scale: Tensor | None
    calibrating: bool

    def _init_quant(self, w_bits: int, a_bits: int) -> None:
        self.w_bits, self.a_bits = int(w_bits), int(a_bits)
        self.calibrating = False
        module: Any = self
        param = self.weight
        if self.a_bits < FLOAT_BITS:
            module.register_buffer("act_scale", torch.zeros((), dtype=param.dtype, device=param.device))
            module.register_buffer("act_zero_point", torch.zeros((), dtype=param.dtype, device=param.device))
        module.register_buffer("fixed_weight_scale", None, persistent=False)

    def quantized_weight(self) -> Tensor:
        """The weight the layer computes with (fake-quantized unless ``w_bits`` is 32)."""
        if self.w_bits >= FLOAT_BITS:
            return self.weight
        return fake_quantize_weight(self.weight, self.w_bits, self.fixed_weight_scale)

    def quantize_input(self, x: Tensor) -> Tensor:
        """The layer's input on its activation grid (unchanged at 32 bits or while calibrating)."""
        if self.a_bits >= FLOAT_BITS or self.calibrating:
            return x
        # The check reads the scale on the host: on a GPU that would be a sync per layer per forward, so it is
        # made where it is free (the CPU); an uncalibrated layer on a GPU computes with a zero scale instead.
        if self.act_scale.device.type == "cpu" and float(self.act_scale) <= 0.0:
            raise RuntimeError(
                f"{type(self).__name__} with {self.a_bits}-bit activations has no calibrated range; "
                "call automl_prune.quantize.fake.calibrate(model, batches) first"
            )
        return fake_quantize_activation(x, self.act_scale, self.act_zero_point, self.a_bits)

    def set_activation_range(self, lo: float, hi: float) -> None:
        """Set ``act_scale``/``act_zero_point`` for inputs in ``[lo, hi]`` (0 is always included)."""
        if self.a_bits >= FLOAT_BITS:
            return
        scale, zero_point = activation_qparams(lo, hi, self.a_bits)
        self.act_scale.fill_(scale)
        self.act_zero_point.fill_(zero_point)

    def extra_repr(self) -> str:
        base: str = super().extra_repr()  # type: ignore[misc]
        return f"{base}, w_bits={self.w_bits}, a_bits={self.a_bits}"


class QuantConv2d(QuantMixin, nn.Conv2d):
    """`nn.Conv2d` with fake-quantized weights and input; same parameter names as the float layer."""

    def __init__(self, *args: Any, w_bits: int = 8, a_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(w_bits, a_bits)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_bits: int, a_bits: int) -> QuantConv2d:
        """A quantized copy of ``conv`` (its parameters are copied, not shared)."""
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, w_bits=w_bits, a_bits=a_bits,
        )
        layer.load_state_dict(conv.state_dict(), strict=False)
        layer.train(conv.training)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """Convolution of the quantized input with the quantized weight."""
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    """`nn.Linear` with fake-quantized weights and input; same parameter names as the float layer."""

    def __init__(self, *args: Any, w_bits: int = 8, a_bits: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(w_bits, a_bits)

    @classmethod
    def from_float(cls, linear: nn.Linear, w_bits: int, a_bits: int) -> QuantLinear:
        """A quantized copy of ``linear`` (its parameters are copied, not shared)."""
        layer = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype, w_bits=w_bits, a_bits=a_bits,
        )
        layer.load_state_dict(linear.state_dict(), strict=False)
        layer.train(linear.training)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """Affine map of the quantized input with the quantized weight."""
        return nn.functional.linear(self.quantize_input(x), self.quantized_weight(), self.bias)


# ------------------------------------------------------------------------------------------------ transforms
def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of every `nn.Conv2d` and `nn.Linear` of ``model`` (module order, which bits are keyed by)."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    """The fake-quantized layers of ``model`` by module path."""
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantMixin)}


def _check_bits(name: str, pair: tuple[int, int]) -> tuple[int, int]:
    w_bits, a_bits = (int(pair[0]), int(pair[1]))
    for kind, value in (("weight", w_bits), ("activation", a_bits)):
        if value != FLOAT_BITS and not MIN_BITS <= value <= MAX_BITS:
            raise ConfigError(
                f"{kind} bits of layer {name!r} must be in [{MIN_BITS}, {MAX_BITS}] or {FLOAT_BITS} (float), "
                f"but got {value}"
            )
    return w_bits, a_bits


def quantize(model: nn.Module, bits: Mapping[str, Sequence[int]], *, inplace: bool = False) -> nn.Module:
    """A fake-quantized copy of ``model``: every conv/linear named in ``bits`` becomes `QuantConv2d`/`QuantLinear`.

    ``bits`` maps module paths to ``(weight_bits, activation_bits)``; layers not named (or at 32/32) stay float.
    ``model`` may already be width-compressed: bits are keyed by module path, which pruning does not change.
    Activation ranges still need `calibrate` before the model can run with quantized activations.

    Raises:
        ConfigError: A name that is not a conv or linear layer of ``model`` (the message lists valid ones), or
            bits outside what the quantizers implement.
    """
    target = model if inplace else copy.deepcopy(model)
    valid = quantizable_layers(target)
    unknown = sorted(set(bits) - set(valid))
    if unknown:
        raise ConfigError(
            f"bits name layers that are not Conv2d/Linear layers of the model: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}; quantizable layers are {valid[:5]}"
            f"{' ...' if len(valid) > 5 else ''}"
        )
    for name, pair in bits.items():
        w_bits, a_bits = _check_bits(name, (pair[0], pair[1]))
        if (w_bits, a_bits) == (FLOAT_BITS, FLOAT_BITS):
            continue
        module = target.get_submodule(name)
        if isinstance(module, nn.Conv2d):
            replacement: nn.Module = QuantConv2d.from_float(module, w_bits, a_bits)
        else:
            replacement = QuantLinear.from_float(module, w_bits, a_bits)  # type: ignore[arg-type]
        _set_submodule(target, name, replacement)
    return target


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def pin_first_last(
    bits: Mapping[str, Sequence[int]], layers: Sequence[str], value: int = 8
) -> dict[str, tuple[int, int]]:
    """``bits`` with the first and the last of ``layers`` (in execution order) at ``value``/``value`` bits.

    HAQ keeps the first layer (which sees the raw image) and the classifier at 8 bits: they hold few weights and
    cost little, but are the most sensitive to quantization.
    """
    pinned = {k: (int(v[0]), int(v[1])) for k, v in bits.items()}
    for name in {layers[0], layers[-1]} if layers else set():
        pinned[name] = (value, value)
    return pinned


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None) -> nn.Module:
    """Set the activation range of every quantized layer of ``model`` from ``batches`` (in place; returns it).

    Runs the model in eval mode (batch norm uses its running statistics) with weights quantized and activation
    quantization switched off, records each quantized layer's per-batch input minimum and maximum, and sets the
    range to their means over the batches (see the module docstring).

    Args:
        model: A model returned by `quantize`.
        batches: Input tensors, or ``(inputs, labels)`` pairs (a `DataLoader` or `iterate_batches` works).
        max_batches: Stop after this many batches.

    Raises:
        ConfigError: No batch was given.
    """
    layers = {name: m for name, m in quant_layers(model).items() if m.a_bits < FLOAT_BITS}
    if not layers:
        return model
    lows: dict[str, list[float]] = {name: [] for name in layers}
    highs: dict[str, list[float]] = {name: [] for name in layers}

    def observer(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            lows[name].append(float(x.amin()))
            highs[name].append(float(x.amax()))

        return hook

    handles = [module.register_forward_pre_hook(observer(name)) for name, module in layers.items()]  # type: ignore[attr-defined]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    for module in layers.values():
        module.calibrating = True
    seen = 0
    try:
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            call_model(model, move(x, device))
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for module in layers.values():
            module.calibrating = False
        model.train(was_training)
    if seen == 0:
        raise ConfigError("calibration needs at least one batch of inputs, but got none")
    for name, module in layers.items():
        if lows[name]:
            module.set_activation_range(sum(lows[name]) / len(lows[name]), sum(highs[name]) / len(highs[name]))
        else:  # a layer the forward pass never reached: any range, so that the model still runs
            module.set_activation_range(0.0, 1.0)
    return model


class HasWidthsAndBits(Protocol):
    """What `compress_and_quantize` reads of an architecture (a `search_spaces.Architecture` has it)."""

    @property
    def widths(self) -> Mapping[str, int]: ...

    @property
    def bits(self) -> Mapping[str, tuple[int, int]]: ...


def compress_and_quantize(
    model: nn.Module,
    graph: NetworkGraph,
    architecture: HasWidthsAndBits,
    criterion: str | Criterion = "l1",
) -> nn.Module:
    """Prune ``model`` to ``architecture``'s widths, then fake-quantize it to its bits (not yet calibrated)."""
    from automl_prune.prune.pruning import compress_widths

    pruned = compress_widths(model, graph, architecture.widths, criterion)
    return quantize(pruned, architecture.bits, inplace=True)
