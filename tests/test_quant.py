"""Per-layer bits: architecture JSON and validation, simulated quantization, calibration, QAT, packing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from automl_prune.data.datasets import iterate_batches
from automl_prune.errors import CheckpointError, ConfigError, InvalidArchitectureError
from automl_prune.models import build_model
from automl_prune.quantize.fake import (
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    calibrate,
    compress_and_quantize,
    fake_quantize_activation,
    pin_first_last,
    quant_layers,
    quantize,
)
from automl_prune.quantize.packing import pack, read_header, unpack
from automl_prune.train.training import evaluate_accuracy
from search_spaces import Architecture, SearchSpace
from tests.helpers import trained


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    model = build_model("tiny-resnet", in_channels=1, num_classes=10)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), model_name="tiny-resnet")


def _trained_cnn() -> tuple[nn.Module, object, SearchSpace]:
    return trained("tiny-cnn", epochs=5)  # ~3 s; 85% validation accuracy on the synthetic set


def _calibration_batches(splits: object, n: int = 4) -> list[torch.Tensor]:
    return [x for x, _ in iterate_batches(splits.train, 128, shuffle=False, seed=0)][:n]  # type: ignore[attr-defined]


# architecture ------------------------------------------------------------------------------------------------
def test_architecture_json_round_trip_with_bits(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    arch = space.sample_bits(rng, space.sample(rng))
    assert arch.bits and set(arch.bits) == set(space.quantizable_layers)
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.key() == arch.key() and hash(again) == hash(arch)
    assert json.loads(arch.to_json())["bits"] == {k: list(v) for k, v in arch.bits.items()}
    assert space.validate(again) is again
    assert Architecture(arch.widths, {k: list(v) for k, v in arch.bits.items()}) == arch  # lists become tuples


def test_width_only_json_loads_unchanged_with_the_same_key(space: SearchSpace) -> None:
    old = Architecture.from_json('{"widths": {"stem.0": 4, "layers.1.conv1": 8}}')
    assert old.bits == {}
    # The exact key the width-only format always had: caches keyed by it stay valid.
    assert old.key() == '{"w":[["layers.1.conv1",8],["stem.0",4]],"b":[]}'
    assert "bits" not in old.to_dict()
    assert space.validate(old) is old
    assert space.size_bits(old) == space.cost_model.params(old.widths) * 32


@pytest.mark.parametrize(
    ("bits", "pattern"),
    [
        ({"layers.0.conv1": (9, 8)}, r"weight bits of layer 'layers.0.conv1' must be one of \[2, 3, 4, 5, 6, 7, 8\] "
                                     r"or 32 \(float\), but got 9"),
        ({"fc": (8, 1)}, r"activation bits of layer 'fc' must be one of \[2, 3, 4, 5, 6, 7, 8\] or 32"),
        ({"layers.0.bn1": (8, 8)}, r"not conv/linear layers.*'layers.0.bn1'.*quantizable layers are \['stem.0'"),
    ],
)
def test_bits_validation_names_layer_and_allowed_set(space: SearchSpace, bits: dict, pattern: str) -> None:
    arch = space.full().with_bits(bits)
    with pytest.raises(ConfigError, match=pattern) as info:
        space.validate(arch)
    assert isinstance(info.value, InvalidArchitectureError)  # what budget code catches for widths, too
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [[8], [8, "x"], [8.5, 8], "8,8", [True, 8]])
def test_malformed_bits_in_json_name_the_layer(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"bits of layer 'conv1' must be a pair \[weight_bits, activation_bits\]"):
        Architecture.from_dict({"widths": {}, "bits": {"conv1": bad}})


def test_pinned_first_and_last_layers(space: SearchSpace) -> None:
    model = build_model("tiny-resnet", in_channels=1, num_classes=10)
    pinned_space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), pin_first_last=8)
    assert pinned_space.pinned_bits == {"stem.0": 8, "fc": 8}
    uniform = pinned_space.uniform_bits(3)
    assert uniform.bits["stem.0"] == uniform.bits["fc"] == (8, 8) and uniform.bits["layers.0.conv1"] == (3, 3)
    with pytest.raises(ConfigError, match=r"layer 'fc' must be one of \[8\] or 32"):
        pinned_space.validate(pinned_space.full().with_bits({"fc": (4, 8)}))
    assert SearchSpace.from_dict(pinned_space.to_dict()).pinned_bits == pinned_space.pinned_bits
    pinned = pin_first_last({"layers.0.conv1": (2, 2)}, space.quantizable_layers)
    assert pinned == {"stem.0": (8, 8), "layers.0.conv1": (2, 2), "fc": (8, 8)}


# simulated quantization ----------------------------------------------------------------------------------------
def test_quantize_replaces_named_layers_only_and_refuses_unknown_names() -> None:
    model = build_model("tiny-cnn", in_channels=1, num_classes=10)
    q = quantize(model, {"conv2.0": (4, 8), "fc": (8, 32), "conv1.0": (32, 32)})
    assert isinstance(q.get_submodule("conv2.0"), QuantConv2d) and isinstance(q.get_submodule("fc"), QuantLinear)
    assert type(q.get_submodule("conv1.0")) is nn.Conv2d and type(model.get_submodule("conv2.0")) is nn.Conv2d
    assert set(q.state_dict()) - set(model.state_dict()) == {"conv2.0.act_scale", "conv2.0.act_zero_point"}
    with pytest.raises(ConfigError, match=r"not Conv2d/Linear layers of the model: \['conv2.1'\]"):
        quantize(model, {"conv2.1": (8, 8)})
    with pytest.raises(RuntimeError, match="calibrate"):
        q(torch.zeros(1, 1, 16, 16))


def test_weights_are_per_channel_symmetric_on_a_k_bit_grid() -> None:
    model = build_model("tiny-cnn", in_channels=1, num_classes=10)
    q = quantize(model, {"conv2.0": (3, 32)})
    layer = q.get_submodule("conv2.0")
    w_hat = layer.quantized_weight().detach()
    for w_c, w_hat_c in zip(layer.weight.detach(), w_hat, strict=True):
        scale = w_c.abs().max() / 3  # 3 bits: integer levels -3..3
        levels = torch.round(w_hat_c / scale)
        assert levels.abs().max() == 3 and torch.allclose(levels * scale, w_hat_c)
        assert (w_hat_c - w_c).abs().max() <= scale / 2 + 1e-7


def test_calibration_is_unsigned_after_relu_and_asymmetric_on_signed_inputs() -> None:
    model, splits, _ = _trained_cnn()
    q = quantize(model, {name: (8, 4) for name in ("conv1.0", "conv2.0", "fc")})
    calibrate(q, _calibration_batches(splits))
    assert float(q.get_submodule("conv2.0").act_zero_point) == 0.0  # its input is a ReLU output
    first = q.get_submodule("conv1.0")  # normalized images: signed
    assert 0.0 < float(first.act_zero_point) < 15.0
    x = splits.train.images[:64]  # type: ignore[attr-defined]
    lo = -float(first.act_zero_point) * float(first.act_scale)
    assert lo < 0 and abs(lo - float(x.amin())) < 0.5 * abs(float(x.amin()))


@pytest.mark.parametrize(("bits", "lo", "hi"), [(2, 0.0, 1.0), (4, 0.0, 2.5), (8, -1.3, 2.1), (16, -0.5, 3.0)])
def test_activations_land_on_the_grid_and_the_gradient_passes_only_inside_it(bits: int, lo: float, hi: float) -> None:
    scale, zero_point = activation_qparams(lo, hi, bits)
    x = (torch.randn(4, 8, 9, 9, generator=torch.Generator().manual_seed(bits)) * 2).requires_grad_()
    for dtype in (torch.float32, torch.float64):  # the fused kernel, and the explicit formula for other dtypes
        xd = x.to(dtype)
        out = fake_quantize_activation(xd, torch.tensor(scale, dtype=dtype), torch.tensor(zero_point, dtype=dtype),
                                       bits)
        (grad,) = torch.autograd.grad(out.sum(), x)
        codes = out.detach().double() / scale + zero_point
        assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= -1e-3
        assert codes.max() <= 2**bits - 1 + 1e-3
        low, high = -zero_point * scale, (2**bits - 1 - zero_point) * scale
        inside = (x > low + scale) & (x < high - scale)
        outside = (x < low - scale) | (x > high + scale)
        clipped = x.detach().clamp(low, high).to(dtype)
        assert ((out.detach() - clipped).abs()[inside] <= scale / 2 * (1 + 1e-4)).all()
        assert (grad[inside] == 1).all() and (grad[outside] == 0).all()


def test_eight_bit_weights_change_outputs_by_less_than_one_percent() -> None:
    model, splits, space = _trained_cnn()
    x = splits.val.images[:256]  # type: ignore[attr-defined]
    q = quantize(model, {name: (8, 32) for name in space.quantizable_layers}).eval()
    with torch.no_grad():
        reference, output = model(x), q(x)
    relative = float((output - reference).norm() / reference.norm())
    assert 0.0 < relative < 0.01


def test_accuracy_is_ordered_by_bits() -> None:
    model, splits, space = _trained_cnn()
    batches = _calibration_batches(splits)
    accuracy = {}
    for bits in (8, 4, 2):
        arch = space.uniform_bits(bits)
        q = calibrate(quantize(model, arch.bits), batches)
        accuracy[bits], _ = evaluate_accuracy(q, splits.val)  # type: ignore[attr-defined]
    float_accuracy, _ = evaluate_accuracy(model, splits.val)  # type: ignore[attr-defined]
    assert abs(accuracy[8] - float_accuracy) <= 0.02
    assert accuracy[8] >= accuracy[4] >= accuracy[2], accuracy
    assert accuracy[8] > accuracy[2]


def test_straight_through_estimator_lets_qat_reduce_the_loss() -> None:
    model, splits, space = _trained_cnn()
    q = calibrate(quantize(model, space.uniform_bits(3).bits), _calibration_batches(splits))
    x, y = splits.train.images[:256], splits.train.labels[:256]  # type: ignore[attr-defined]
    q.eval()  # fixed batch-norm statistics: the loss changes only through the weights
    optimizer = torch.optim.SGD(q.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(q(x), y)
        loss.backward()
        losses.append(float(loss.detach()))
        for name, layer in quant_layers(q).items():
            assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0], losses


# packing -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_pack_unpack_gives_identical_outputs_and_the_analytic_size(seed: int) -> None:
    model, splits, space = _trained_cnn()
    rng = np.random.default_rng(seed)
    arch = space.sample_bits(rng, space.sample(rng))
    if seed == 0:  # float layers and weight-only / activation-only quantization in one model
        arch = arch.with_bits({**arch.bits, "conv1.0": (32, 32), "conv2.0": (32, 5), "fc": (6, 32)})
    space.validate(arch)
    q = calibrate(compress_and_quantize(model, space.graph, arch), _calibration_batches(splits)).eval()
    data = pack(q)
    header = read_header(data)
    size_bits = space.size_bits(arch)
    # The payload is the analytic size, only its last byte padded.
    assert header["payload_bytes"] == math.ceil(size_bits / 8)
    breakdown = space.size_breakdown(arch)
    assert header["code_bits"] == breakdown.weight_bits
    assert 32 * header["float_values"] == breakdown.scale_bits + breakdown.activation_bits + breakdown.float_bits
    # Every other byte: the index (magic, length, JSON header) and the batch-norm running statistics.
    params = dict(q.named_parameters())
    buffers = {k: v for k, v in q.state_dict().items() if k not in params and ".act_" not in k}
    assert {k.rpartition(".")[2] for k in buffers} == {"running_mean", "running_var", "num_batches_tracked"}
    assert header["buffer_bytes"] == sum(b.numel() * b.element_size() for b in buffers.values())
    assert len(data) == header["header_bytes"] + header["payload_bytes"] + header["buffer_bytes"]

    rebuilt = unpack(data, compress_and_quantize(model, space.graph, arch)).eval()
    x = splits.val.images[:128]  # type: ignore[attr-defined]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), q(x))
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, q.state_dict()[name]) or name.endswith(".weight"), name
    assert pack(rebuilt) == data  # stable: packing the rebuilt model gives the same bytes


def test_unpack_refuses_a_model_with_other_bits() -> None:
    model, splits, space = _trained_cnn()
    q = calibrate(quantize(model, space.uniform_bits(4).bits), _calibration_batches(splits, 1))
    data = pack(q)
    with pytest.raises(CheckpointError, match=r"'conv1.0.weight' is stored at 4 bits, but the model quantizes it at 5"):
        unpack(data, quantize(model, space.uniform_bits(5).bits))
    with pytest.raises(CheckpointError, match="bad magic"):
        unpack(b"not a model", q)
