"""Torchvision segmentation and detection models (random init, small inputs) through analysis, compression, export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from automl_prune.errors import ConfigError
from automl_prune.graph.analysis import analyze, measure_flops
from automl_prune.prune.pruning import compress_widths
from automl_prune.run.export import export, load
from search_spaces import SearchSpace

detection = pytest.importorskip("torchvision.models.detection")
segmentation = pytest.importorskip("torchvision.models.segmentation")


class Detector(nn.Module):
    """The wrapper a user writes: a batch tensor in, the detector's output out (losses in train mode)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> object:
        return self.detector(list(images), targets)


def _half(space: SearchSpace) -> dict[str, int]:
    return {g.name: max(1, g.size // 2) for g in space.graph.groups}


def test_lraspp_compresses_exports_and_reloads(tmp_path) -> None:
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(num_classes=3, weights=None, weights_backbone=None).eval()
    x = torch.randn(2, 3, 64, 64)
    space = SearchSpace.from_model(model, x, model_name="python:lraspp")
    outputs = {"classifier.low_classifier", "classifier.high_classifier"}
    assert not any(m.layer in outputs and m.dim == "out" for g in space.graph.groups for m in g.members)
    arch = space.from_ratios(0.5)
    pruned = compress_widths(model, space.graph, arch.widths, "l1").eval()
    flops = measure_flops(pruned, tuple(x.shape))
    assert flops == space.flops(arch) < 0.35 * space.full_flops
    with torch.no_grad():
        out = pruned(x)["out"]
    assert out.shape == (2, 3, 64, 64)
    path = export(tmp_path, model=pruned, space=space, architecture=arch, model_name="python:lraspp",
                  in_channels=3, num_classes=3)
    reloaded = load(path, model=model)
    with torch.no_grad():
        assert torch.equal(reloaded(x)["out"], out)
    pruned.train()
    assert pruned(x)["out"].shape == (2, 3, 64, 64)


def _ssd() -> Detector:
    torch.manual_seed(0)
    ssd = detection.ssdlite320_mobilenet_v3_large(num_classes=3, weights=None, weights_backbone=None)
    ssd.transform.min_size, ssd.transform.max_size, ssd.transform.fixed_size = (128,), 128, (128, 128)
    return Detector(ssd).eval()


def test_ssdlite_heads_keep_their_outputs_and_costs_are_exact() -> None:
    model = _ssd()
    x = torch.rand(2, 3, 128, 128)
    space = SearchSpace.from_model(model, x, model_name="python:ssdlite")
    heads = {n for n, layer in space.graph.layers.items() if n.startswith("detector.head.") and n.endswith(".1")
             and layer.kind == "conv"}
    assert len(heads) == 12  # classification and regression convs on 6 feature maps: all are outputs
    assert not any(m.layer in heads and m.dim == "out" for g in space.graph.groups for m in g.members)
    widths = _half(space)
    pruned = compress_widths(model, space.graph, widths, "l1")
    assert measure_flops(pruned, tuple(x.shape)) == space.flops(widths) < 0.35 * space.full_flops
    with torch.no_grad():
        detections = pruned.eval()(x)
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])}] * 2
    losses = pruned.train()(x, targets)
    assert set(losses) == {"bbox_regression", "classification"}


def test_faster_rcnn_traces_the_detached_proposal_head() -> None:
    torch.manual_seed(0)
    model = Detector(detection.fasterrcnn_mobilenet_v3_large_fpn(
        num_classes=3, weights=None, weights_backbone=None, min_size=128, max_size=128)).eval()
    x = torch.rand(1, 3, 128, 128)
    graph = analyze(model, x)
    fpn = graph.group("detector.backbone.fpn.layer_blocks.1.0")
    assert ("detector.rpn.head.conv.0.0", "in") in {(m.layer, m.dim) for m in fpn.members}
    produced = {m.layer for g in graph.groups for m in g.members if m.dim == "out"}
    assert not produced & {"detector.rpn.head.cls_logits", "detector.rpn.head.bbox_pred",
                           "detector.roi_heads.box_predictor.cls_score", "detector.roi_heads.box_predictor.bbox_pred"}
    # Its box head runs once per proposal kept by non-maximum suppression: FLOPs depend on the image.
    with pytest.raises(ConfigError, match=r"roi_heads\.box_head\.fc6.*data-dependent"):
        measure_flops(model, tuple(x.shape))


def test_a_layer_run_without_autograd_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.side, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            with torch.no_grad():
                gate = self.side(y).mean()
            return self.head(y) * gate

    with pytest.raises(ConfigError, match=r"'side'.*torch\.no_grad"):
        analyze(Net(), torch.randn(1, 3, 8, 8))
