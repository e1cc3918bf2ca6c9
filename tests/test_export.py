"""Export -> load round trip: same outputs, same FLOPs, nothing pickled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import automl_prune
from automl_prune.errors import CheckpointError, InvalidArchitectureError
from automl_prune.graph.analysis import measure_flops
from automl_prune.models import build_model
from automl_prune.prune.pruning import compress
from automl_prune.run.export import export
from search_spaces import SearchSpace


@pytest.mark.parametrize("name", ["tiny-resnet", "resnet20", "mobilenetv2-small"])
def test_round_trip_identical_outputs_and_flops(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, input_size=28).eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 28, 28), model_name=name)
    arch = space.sample(np.random.default_rng(0))
    pruned = compress(model, space.graph, arch).eval()
    export(tmp_path, model=pruned, space=space, architecture=arch, model_name=name, in_channels=1, num_classes=10)
    loaded = automl_prune.load(tmp_path / "arch.json", tmp_path / "weights.pt")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert (loaded(x) - pruned(x)).abs().max().item() <= 1e-5
    record = json.loads((tmp_path / "arch.json").read_text())
    assert measure_flops(loaded, (1, 1, 28, 28)) == record["flops"] == space.flops(arch)
    assert record["schema_version"] == 1 and record["model"] == name


def test_onnx_export(tmp_path) -> None:
    pytest.importorskip("onnx")
    model = build_model("tiny-cnn", in_channels=1, num_classes=10, input_size=28).eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 28, 28))
    arch = space.from_ratios(0.5)
    export(tmp_path, model=compress(model, space.graph, arch), space=space, architecture=arch,
           model_name="tiny-cnn", in_channels=1, num_classes=10, onnx=True)
    assert (tmp_path / "model.onnx").stat().st_size > 1000


def test_load_rejects_mismatched_weights_and_foreign_groups(tmp_path) -> None:
    model = build_model("tiny-cnn", in_channels=1, num_classes=10, input_size=28).eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 28, 28))
    arch = space.from_ratios(0.5)
    export(tmp_path, model=compress(model, space.graph, arch), space=space, architecture=arch,
           model_name="tiny-cnn", in_channels=1, num_classes=10)
    record = json.loads((tmp_path / "arch.json").read_text())
    name = next(iter(record["widths"]))
    record["widths"][name] += 1  # weights no longer match
    (tmp_path / "arch.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match"):
        automl_prune.load(tmp_path / "arch.json")
    record["widths"] = {"layer.that.does.not.exist": 3}
    (tmp_path / "arch.json").write_text(json.dumps(record))
    with pytest.raises(InvalidArchitectureError, match="does not exist"):
        automl_prune.load(tmp_path / "arch.json")
    (tmp_path / "weights.pt").write_bytes(b"garbage")
    record["widths"] = {}
    (tmp_path / "arch.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="cannot read"):
        automl_prune.load(tmp_path / "arch.json")
