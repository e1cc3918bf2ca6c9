"""ONNX export of any compressed model, fake-quantized ones included, with a dynamic batch dimension.

A fake-quantized layer reads its activation scale as a Python float (a host read the exporters cannot trace), so
such a model is exported through a copy in which every `QuantConv2d`/`QuantLinear` becomes

- a plain `nn.Conv2d`/`nn.Linear` whose weight is the layer's *quantized* weight (the dequantized values of its
  k-bit grid: exactly what the simulation computes with), and
- before it, when its activations are quantized, `ActivationGrid`: the input rounded onto its k-bit grid with
  the calibrated scale and zero point, as float operations (Div, Round, Add, Clip, Sub, Mul).

So the ONNX file is a float graph that computes what the simulated model computes, at every bit width (ONNX's
QuantizeLinear holds 8 or 4 bits only), and runs in any ONNX runtime; it holds no integer kernels. Real int8
kernels for the layers at 8/8 bits are `automl_prune.quantize.int8`'s separate file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from automl_prune.quantize.bits import FLOAT_BITS
from automl_prune.quantize.fake import QuantConv2d, QuantLinear

__all__ = ["INPUT_NAME", "ONNX_CONTENT", "OUTPUT_NAME", "ActivationGrid", "export_onnx", "simulated_float_model"]

INPUT_NAME, OUTPUT_NAME = "input", "logits"
ONNX_CONTENT = ("float graph; quantized layers hold their dequantized k-bit weights and round their inputs onto "
                "the k-bit activation grid with float operations, so it computes what the simulated model computes; "
                "no integer kernels")
"""What ``model.onnx`` holds for an architecture with bits (recorded in ``arch.json``)."""


class ActivationGrid(nn.Module):
    """Round the input onto an asymmetric ``bits``-bit grid (scale and zero point fixed by calibration)."""

    def __init__(self, scale: float, zero_point: float, bits: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        # As torch's fused kernel: multiply by the float32 reciprocal (x / scale rounds differently on ties).
        self.register_buffer("inverse_scale", 1.0 / torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.float32))
        self.levels = float(2**bits - 1)

    def forward(self, x: Tensor) -> Tensor:
        scale, inverse_scale = cast(Tensor, self.scale), cast(Tensor, self.inverse_scale)
        zero_point = cast(Tensor, self.zero_point)
        codes = torch.clamp(torch.round(x * inverse_scale) + zero_point, 0.0, self.levels)
        return (codes - zero_point) * scale


def _plain_layer(module: QuantConv2d | QuantLinear) -> nn.Module:
    plain: nn.Conv2d | nn.Linear
    if isinstance(module, QuantConv2d):
        plain = nn.Conv2d(module.in_channels, module.out_channels, cast("tuple[int, int]", module.kernel_size),
                          stride=cast("tuple[int, int]", module.stride),
                          padding=cast("str | tuple[int, int]", module.padding),
                          dilation=cast("tuple[int, int]", module.dilation), groups=module.groups,
                          bias=module.bias is not None, padding_mode=module.padding_mode)
    else:
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(module.quantized_weight())
        if module.bias is not None and plain.bias is not None:
            plain.bias.copy_(module.bias)
    if module.a_bits >= FLOAT_BITS:
        return plain
    scale = float(module.act_scale)
    if scale <= 0.0:
        raise RuntimeError(f"{type(module).__name__} with {module.a_bits}-bit activations has no calibrated range; "
                           "calibrate the model before exporting it")
    return nn.Sequential(ActivationGrid(scale, float(module.act_zero_point), module.a_bits), plain)


def simulated_float_model(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` (CPU, float32, eval mode) that computes what its fake-quantized layers compute."""
    target = copy.deepcopy(model).to("cpu").float().eval()
    for name, module in list(target.named_modules()):
        if isinstance(module, (QuantConv2d, QuantLinear)):
            parent_name, _, child = name.rpartition(".")
            parent = target.get_submodule(parent_name) if parent_name else target
            setattr(parent, child, _plain_layer(module).eval())
    return target


def export_onnx(model: nn.Module, input_shape: list[int] | tuple[int, ...], path: str | Path) -> Path:
    """Export ``model`` to ``path`` with a dynamic batch dimension; ``input_shape`` is ``[N, C, H, W]`` or
    ``[C, H, W]`` (one example's shape is what matters). Fake-quantized layers go through `simulated_float_model`."""
    path = Path(path)
    sample = list(input_shape)[-3:] if len(input_shape) == 4 else list(input_shape)
    export_model = simulated_float_model(model)
    example = torch.randn(2, *sample)  # batch 2: with 1, the exporter may specialise the batch dimension
    torch.onnx.export(export_model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                      external_data=False)
    return path
