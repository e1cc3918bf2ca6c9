"""Bits through the evaluator, the export and `automl_prune.load`: simulated accuracy, exact size, same outputs."""

from __future__ import annotations

import json

import torch

import automl_prune
from automl_prune.data import load_dataset
from automl_prune.evaluate import Evaluator
from automl_prune.export import export
from automl_prune.models import build_model
from automl_prune.packing import read_header
from automl_prune.training import train
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
