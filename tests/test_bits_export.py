"""Bits through the evaluator, the export and `automl_prune.load`: simulated accuracy, exact size, same outputs."""

from __future__ import annotations

import json

import pytest
import torch

import automl_prune
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.quantize.packing import read_header
from automl_prune.run.export import export
from automl_prune.scoring.evaluator import Evaluator
from automl_prune.train.training import train
from search_spaces import SearchSpace


def test_quantized_candidate_is_scored_exported_and_reloaded_identically(tmp_path) -> None:
    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    train(model, splits, epochs=1, lr=0.05, max_steps=30, progress=False)
    model = model.to(memory_format=torch.contiguous_format).eval()
    space = SearchSpace.from_model(model, splits.val.images[:1])
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=4)
    widths = space.from_ratios(0.75)
    float_metrics = evaluator.evaluate(widths)
    arch = space.uniform_bits(4, architecture=widths)
    metrics = evaluator.evaluate(arch)
    assert metrics.size_bits == space.size_bits(arch) < float_metrics.size_bits
    assert metrics.bops == space.bops(arch) < float_metrics.bops
    assert 0.0 < metrics.size_ratio < 0.25  # 4-bit weights: about an eighth of float32, plus scales and biases
    compressed = evaluator.build(arch)
    path = export(tmp_path / "best", model=compressed, space=space, architecture=arch, model_name="tiny-resnet",
                  in_channels=1, num_classes=10)
    record = json.loads(path.read_text())
    assert record["bits"] and record["size_bits"] == space.size_bits(arch) and record["bops"] == space.bops(arch)
    header = read_header((tmp_path / "best" / "weights.packed").read_bytes())
    assert header["payload_bytes"] == record["packed_payload_bytes"] == (record["size_bits"] + 7) // 8
    loaded = automl_prune.load(path)
    x = splits.val.images[:16]
    assert torch.equal(loaded(x), compressed(x))
    assert float_metrics.size_ratio > 0.5 and float_metrics.bops_ratio > 0.5


def _search(tmp_path, *flags: str) -> dict:
    from automl_prune.cli import main

    run = tmp_path / "run"
    code = main(["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.5",
                 "--agent", "random", "--episodes", "4", "--workers", "0", "--finetune-epochs", "0.2",
                 "--no-progress", "--out", str(run), "--cache-dir", str(tmp_path / "cache"), *flags])
    assert code == 0
    return json.loads((run / "summary.json").read_text())


def test_cli_size_budget_alone_searches_bits_at_full_width(tmp_path, capsys) -> None:
    summary = _search(tmp_path, "--size", "0.125")
    out = capsys.readouterr().out
    assert summary["compressed"]["size_bits"] <= 0.125 * summary["base"]["size_bits"]
    assert summary["compressed"]["flops"] == summary["base"]["flops"]  # bits only: every channel kept
    assert summary["bits"] and "size (bytes)" in out and "BOPs" in out and "simulated" in out
    arch_json = tmp_path / "run" / "best" / "arch.json"
    record = json.loads(arch_json.read_text())
    model = automl_prune.load(arch_json)
    splits = load_dataset("synthetic", seed=0)
    from automl_prune.train.training import evaluate_accuracy

    accuracy, _ = evaluate_accuracy(model, splits.test, batch_size=250)
    assert accuracy == summary["compressed"]["test_acc"]  # the export is the model that was measured
    assert record["size_bits"] == summary["compressed"]["size_bits"]


def test_cli_flops_and_size_search_both(tmp_path, capsys) -> None:
    summary = _search(tmp_path, "--flops", "0.5", "--size", "0.125", "--search", "both")
    assert summary["compressed"]["flops"] <= 0.5 * summary["base"]["flops"]
    assert summary["compressed"]["size_bits"] <= 0.125 * summary["base"]["size_bits"]
    from automl_prune.cli import main

    assert main(["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--size", "lots",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "1.5MB" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_eight_bit_layers_are_realised_in_int8_with_measured_latency(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    summary = _search(tmp_path, "--size", "0.3", "--agent", "uniform")
    out = capsys.readouterr().out
    int8 = summary["int8"]
    assert int8["int8_layers"] and not int8["layers_without_a_cpu_kernel"]  # uniform 8 bits fits 0.3
    assert int8["int8_nodes"].get("QLinearConv", 0) > 0
    for batch in ("1", "64"):
        assert int8["latency_ms"][batch]["int8_onnxruntime"] > 0 and int8["latency_ms"][batch]["float_onnxruntime"] > 0
    assert "latency, batch 64" in out
    assert (tmp_path / "run" / "best" / "model.int8.onnx").exists()


def test_the_summary_says_when_no_layer_could_run_as_int8() -> None:
    from automl_prune.report.summary import summary_rows

    summary = {"base": {"flops": 100, "params": 10, "size_bits": 320, "bops": 102400, "val_acc": 0.9,
                        "test_acc": 0.9},
               "compressed": {"flops": 50, "params": 5, "size_bits": 40, "bops": 1600,
                              "val_acc_before_finetune": 0.8, "test_acc": 0.85},
               "search_seconds": 1.0, "evaluations": 2, "finetune_seconds": 1.0,
               "bits": {"conv": [4, 4]},
               "int8": {"int8_layers": [], "skipped": "no layer at 8/8 bits: no int8 kernel applies"}}
    rows = {row[0]: row for row in summary_rows(summary)}
    assert rows["int8 realisation"][2] == "no layer at 8/8 bits: no int8 kernel applies"
    assert not any(name.startswith("latency") for name in rows)


@pytest.mark.parametrize("w_bits, a_bits", [(4, 4), (8, 8), (3, 6)])
def test_onnx_of_a_quantized_model_runs_at_any_batch_with_the_simulated_outputs(tmp_path, w_bits, a_bits) -> None:
    ort = pytest.importorskip("onnxruntime")
    from automl_prune.quantize.fake import calibrate, compress_and_quantize

    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16).eval()
    space = SearchSpace.from_model(model, splits.val.images[:1])
    arch = space.uniform_bits(w_bits, a_bits, architecture=space.from_ratios(0.75))
    quantized = calibrate(compress_and_quantize(model, space.graph, arch), [splits.train.images[:64]]).eval()
    path = export(tmp_path / "best", model=quantized, space=space, architecture=arch, model_name="tiny-resnet",
                  in_channels=1, num_classes=10, onnx=True)
    assert "no integer kernels" in json.loads(path.read_text())["onnx"]["holds"]
    session = ort.InferenceSession(str(tmp_path / "best" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x = splits.val.images[:batch]
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = quantized(x).numpy()
        assert got.shape == (batch, 10)
        assert abs(got - want).max() < 1e-3 * max(1.0, abs(want).max())


def test_a_bits_search_exports_onnx_and_the_export_command_quantizes_a_bits_arch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from automl_prune.cli import main
    from automl_prune.quantize.fake import QuantMixin

    _search(tmp_path, "--size", "0.125", "--onnx")
    best = tmp_path / "run" / "best"
    session = ort.InferenceSession(str(best / "model.onnx"), providers=["CPUExecutionProvider"])
    model = automl_prune.load(best / "arch.json")
    x = load_dataset("synthetic", seed=0).test.images[:8]
    for batch in (1, 8):
        (got,) = session.run(None, {"input": x[:batch].numpy()})
        with torch.no_grad():
            assert abs(got - model(x[:batch]).numpy()).max() < 1e-4
    code = main(["export", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.5",
                 "--cache-dir", str(tmp_path / "cache"), "--arch", str(best / "arch.json"),
                 "--out", str(tmp_path / "again")])
    assert code == 0
    again = automl_prune.load(tmp_path / "again" / "arch.json")  # the packed weights are really quantized
    assert any(isinstance(m, QuantMixin) for m in again.modules())
    record = json.loads((tmp_path / "again" / "arch.json").read_text())
    assert record["bits"] == json.loads((best / "arch.json").read_text())["bits"]
