"""Real int8 inference (`quantize.int8`): int8 kernels in the optimized ONNX Runtime graph, accuracy close to
float, latency measurements, and layers not at 8/8 bits left float."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from automl_prune.data.datasets import Splits, iterate_batches, load_dataset
from automl_prune.errors import ConfigError
from automl_prune.models import build_model
from automl_prune.quantize.fake import quantizable_layers, quantize
from automl_prune.quantize.int8 import (
    create_session,
    export_int8_onnx,
    int8_layers_from_bits,
    int8_node_counts,
    int8_weight_layers,
    measure_latency,
    onnx_accuracy,
    reduced_weight_range_needed,
)
from automl_prune.train.training import evaluate_accuracy, train

# tiny-resnet: 6 convs (stem, 2 per block, one 1x1 shortcut) and the classifier; 2 residual adds.
N_CONVS = 6


@pytest.fixture(scope="module")
def trained_model() -> tuple[nn.Module, Splits]:
    """tiny-resnet after 30 SGD steps on the synthetic set (~45% validation accuracy, ~3 s)."""
    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    train(model, splits, epochs=10, max_steps=30, lr=0.2, batch_size=64, seed=0, progress=False)
    return model.to(memory_format=torch.contiguous_format).eval(), splits


def _calibration(splits: Splits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(iterate_batches(splits.train, 64, shuffle=True, seed=0))[:8]


@pytest.fixture(scope="module")
def int8_path(trained_model: tuple[nn.Module, Splits], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, splits = trained_model
    return export_int8_onnx(model, _calibration(splits), tmp_path_factory.mktemp("int8") / "model.int8.onnx")


def test_int8_nodes_in_optimized_graph(trained_model: tuple[nn.Module, Splits], int8_path: Path) -> None:
    model, _ = trained_model
    counts = int8_node_counts(int8_path)
    assert counts.get("QLinearConv", 0) == N_CONVS
    assert counts.get("QGemm", 0) + counts.get("QLinearMatMul", 0) == 1
    assert int8_weight_layers(int8_path, quantizable_layers(model)) == set(quantizable_layers(model))
    # The float ONNX baseline written beside it runs no int8 kernel at all.
    assert int8_node_counts(int8_path.with_name("model.int8.float.onnx")) == {}
    # The folded BatchNorm biases are quantized to int32 (input_scale * weight_scale), as QLinearConv needs.
    quantized = onnx.load(str(int8_path))
    bias_types = {i.name: i.data_type for i in quantized.graph.initializer if i.name.endswith("_bias_quantized")}
    assert len(bias_types) >= N_CONVS
    assert set(bias_types.values()) == {onnx.TensorProto.INT32}


def test_int8_accuracy_close_to_float(trained_model: tuple[nn.Module, Splits], int8_path: Path) -> None:
    model, splits = trained_model
    torch_acc, _ = evaluate_accuracy(model, splits.val)
    float_ort_acc = onnx_accuracy(int8_path.with_name("model.int8.float.onnx"), splits.val)
    int8_acc = onnx_accuracy(int8_path, splits.val)
    assert torch_acc > 0.3  # trained well above chance (0.1), so that the comparison means something
    assert float_ort_acc == pytest.approx(torch_acc, abs=0.01)  # same graph, another runtime
    assert abs(int8_acc - torch_acc) <= 0.05


def test_latency_positive_medians_with_threads_stated(trained_model: tuple[nn.Module, Splits], int8_path: Path) -> None:
    model, _ = trained_model
    float_onnx = int8_path.with_name("model.int8.float.onnx")
    for subject, runtime in ((model, "pytorch"), (float_onnx, "onnxruntime"), (int8_path, "onnxruntime")):
        result = measure_latency(subject, (1, 16, 16), batch_sizes=(1, 64), repeats=3, warmup=1, threads=1)
        assert result["runtime"] == runtime
        assert result["threads"] == 1
        assert set(result["batches"]) == {1, 64}
        for stats in result["batches"].values():
            assert stats["median_ms"] > 0
            assert stats["iqr_ms"] >= 0
            assert stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
    assert torch.get_num_threads() == 1  # PyTorch's thread count is restored (conftest sets 1)


def test_layers_not_named_stay_float(trained_model: tuple[nn.Module, Splits], tmp_path: Path) -> None:
    model, splits = trained_model
    layers = quantizable_layers(model)
    # An architecture's bits: only the 8/8 layers become int8; 4-bit, 8/32 and float layers stay float.
    bits = {"stem.0": (8, 8), "layers.0.conv1": (4, 4), "layers.0.conv2": (8, 32), "layers.1.conv1": (8, 8),
            "layers.1.conv2": (6, 8), "layers.1.shortcut.0": (32, 32), "fc": (8, 8)}
    chosen = int8_layers_from_bits(bits)
    assert chosen == ["fc", "layers.1.conv1", "stem.0"]
    fake_quantized = quantize(model, bits)  # what the search evaluates; its simulation is dropped for export
    path = export_int8_onnx(fake_quantized, _calibration(splits), tmp_path / "mixed.onnx", int8_layers=chosen)
    assert int8_weight_layers(path, layers) == set(chosen)
    counts = int8_node_counts(path)
    assert counts.get("QLinearConv", 0) == 2
    assert counts.get("QGemm", 0) == 1
    # Float layers keep their float weight initializers in the graph the session runs.
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert set(props["automl_prune.float_layers"].split(",")) == set(layers) - set(chosen)
    assert props["automl_prune.weight_qmax"] in {"64", "127"}
    assert create_session(path).run(None, {"input": splits.val.images[:4].numpy()})[0].shape == (4, 10)


def test_int8_export_rejects_bad_requests(trained_model: tuple[nn.Module, Splits], tmp_path: Path) -> None:
    model, splits = trained_model
    batches = _calibration(splits)
    with pytest.raises(ConfigError, match="not Conv2d/Linear layers"):
        export_int8_onnx(model, batches, tmp_path / "x.onnx", int8_layers=["nope"])
    with pytest.raises(ConfigError, match="nothing to run in int8"):
        export_int8_onnx(model, batches, tmp_path / "x.onnx", int8_layers=[])
    with pytest.raises(ConfigError, match="at least one batch"):
        export_int8_onnx(model, [], tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(model, (1, 16, 16), repeats=1)


def test_reduced_weight_range_only_on_x86_without_vnni(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("flags\t\t: fpu sse2 avx avx2 fma\n")
    vnni = tmp_path / "vnni"
    vnni.write_text("flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni\n")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert reduced_weight_range_needed(avx2)
    assert not reduced_weight_range_needed(vnni)
    assert reduced_weight_range_needed(tmp_path / "missing")  # flags unknown: the safe choice
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert not reduced_weight_range_needed(avx2)
