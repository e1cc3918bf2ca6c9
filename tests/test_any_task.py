"""Segmentation and detection through the Python API: the user's loss, a torchmetrics metric, batches of any
structure, search, fine-tune, export and reload (issue 26). Tiny inputs, random init, nothing downloaded."""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import automl_prune


class Squares(Dataset):
    """Noise with one bright and one dark square; the mask marks them as classes 1 and 2."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        self.n, self.seed, self.size = n, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        side = self.size // 3
        image = torch.randn(3, self.size, self.size, generator=generator) * 0.1
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        for label, value in ((1, 1.0), (2, -1.0)):
            row, col = torch.randint(0, self.size - side, (2,), generator=generator).tolist()
            image[:, row:row + side, col:col + side] += value
            mask[row:row + side, col:col + side] = label
        return image, mask


def segmentation_loss(outputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs["out"], masks)


def test_segmentation_with_a_torchmetrics_metric_end_to_end(tmp_path) -> None:
    from torchmetrics.classification import MulticlassJaccardIndex
    from torchmetrics.wrappers import LambdaInputTransformer
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train = DataLoader(Squares(48, 0), batch_size=8, shuffle=True)
    val = DataLoader(Squares(16, 1), batch_size=8)
    # The model returns {"out": N x classes x H x W}: the metric reads "out" (itemgetter pickles for Ray workers).
    miou = LambdaInputTransformer(MulticlassJaccardIndex(num_classes=3), transform_pred=operator.itemgetter("out"))
    result = automl_prune.search(model, train, val, test=val, flops=0.5, agent="random", episodes=2, workers=0,
                                 out=tmp_path / "run",
                                 cache_dir=tmp_path / "cache", loss=segmentation_loss, metric=miou, metric_name="mIoU",
                                 criterion="l1", finetune_epochs=0.5, rerank_top_k=0, progress=False)
    summary = result.metrics
    assert summary["metric"] == "mIoU" and summary["loss"] == "segmentation_loss"
    assert summary["compressed"]["flops"] <= 0.5 * summary["base"]["flops"]
    for key in ("val_acc_before_finetune", "val_acc_after_finetune", "test_acc"):
        assert 0.0 <= summary["compressed"][key] <= 1.0  # a Jaccard index, not a top-1 accuracy
    assert miou.update_count == 0  # the caller's metric object is never updated: each score uses a fresh copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched
    images, _ = next(iter(val))
    reloaded = automl_prune.load(result.run_dir / "best" / "arch.json", model=model)
    with torch.no_grad():
        out, again = result.model(images)["out"], reloaded(images)["out"]
    assert out.shape == (8, 3, 32, 32) and torch.allclose(out, again)


class Boxes(Dataset):
    """One bright square per image; its box and label 1 are the target."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
        image = torch.rand(3, 128, 128, generator=generator) * 0.2
        row, col = torch.randint(0, 80, (2,), generator=generator).tolist()
        image[:, row:row + 40, col:col + 40] += 0.7
        box = torch.tensor([[col, row, col + 40, row + 40]], dtype=torch.float32)
        return image, {"boxes": box, "labels": torch.tensor([1])}


def detection_batch(items: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> tuple[object, object]:
    """A batch is ((images, targets), targets): the detector is called as model(images, targets)."""
    images = torch.stack([image for image, _ in items])
    targets = [target for _, target in items]
    return (images, targets), targets


class Detector(nn.Module):
    """The one-function wrapper a torchvision detector needs: losses in train mode, detections in eval mode."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> object:
        return self.detector(list(images), targets)


def detection_loss(losses: dict[str, torch.Tensor], targets: object) -> torch.Tensor:
    return sum(losses.values())  # type: ignore[return-value]


def test_detection_through_the_wrapper_searches_fine_tunes_exports_and_reloads(tmp_path) -> None:
    from torchmetrics.detection import MeanAveragePrecision
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    torch.manual_seed(0)
    detector = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2)
    detector.transform.min_size, detector.transform.max_size = (128,), 128
    detector.transform.fixed_size = (128, 128)
    model = Detector(detector).eval()
    train = DataLoader(Boxes(16, 0), batch_size=8, shuffle=True, collate_fn=detection_batch)
    val = DataLoader(Boxes(8, 1), batch_size=8, collate_fn=detection_batch)
    result = automl_prune.search(model, train, val, flops=0.5, agent="random", episodes=2, workers=0,
                                 out=tmp_path / "run",
                                 cache_dir=tmp_path / "cache", loss=detection_loss, metric=MeanAveragePrecision(),
                                 metric_name="mAP", finetune_epochs=1, rerank_top_k=0, progress=False)
    summary = result.metrics
    assert summary["metric"] == "mAP"
    assert summary["compressed"]["flops"] <= 0.5 * summary["base"]["flops"]
    assert -1.0 <= summary["compressed"]["val_acc_after_finetune"] <= 1.0  # mAP (-1 when undefined)
    (images, _), _ = next(iter(val))
    reloaded = automl_prune.load(result.run_dir / "best" / "arch.json", model=model).eval()
    with torch.no_grad():
        found, again = result.model.eval()(images), reloaded(images)
    assert len(found) == 8 and torch.allclose(found[0]["boxes"], again[0]["boxes"])
    assert set(found[0]) == {"boxes", "scores", "labels"}
