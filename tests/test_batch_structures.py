"""Batches of any structure and how they are scored (issue 26)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from automl_prune.data.batches import call_model, count_items, first_items, first_tensor, move
from automl_prune.errors import ConfigError
from automl_prune.train.training import score_batches


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": self.linear(x) * scale[:, None]}


def test_a_model_is_called_as_the_inputs_structure_says() -> None:
    model = TwoInputs()
    x, scale = torch.randn(5, 4), torch.ones(5)
    by_tuple = call_model(model, (x, scale))
    by_dict = call_model(model, {"x": x, "scale": scale})
    assert torch.equal(by_tuple["scores"], by_dict["scores"])
    assert call_model(nn.Identity(), x) is x


def test_items_are_counted_cut_and_moved_through_any_structure() -> None:
    images = torch.randn(6, 3, 8, 8)
    boxes = [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([1])} for _ in range(6)]
    assert count_items(images) == 6 and count_items((images, boxes)) == 6 and count_items({"x": images}) == 6
    assert count_items(boxes) == 6
    cut = first_items((images, boxes), 2)
    assert cut[0].shape[0] == 2 and len(cut[1]) == 2 and cut[1][0] is boxes[0]
    moved = move({"a": (images, [torch.ones(2)]), "b": "text"}, "cpu")
    assert torch.equal(moved["a"][0], images) and moved["b"] == "text"
    assert first_tensor(((images, boxes),)) is images and first_tensor(("text", {"x": images})) is images
    with pytest.raises(ConfigError, match="hold no tensor"):
        first_tensor(("a", 1))


def _score(model: nn.Module, batches: list, metric: object = None) -> tuple[float, float]:
    return score_batches(model, batches, torch.device("cpu"), contextlib.nullcontext, metric=metric)


def test_a_torchmetrics_metric_is_updated_per_batch_and_lower_is_better_is_negated() -> None:
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.regression import MeanSquaredError

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    top1, cross_entropy = _score(model, batches)
    assert cross_entropy > 0
    accuracy = MulticlassAccuracy(num_classes=3, average="micro")
    assert _score(model, batches, accuracy)[0] == pytest.approx(top1)
    assert accuracy.update_count == 0  # a private copy was updated
    regression = [(torch.randn(8, 4), torch.randn(8, 3)) for _ in range(2)]
    error = MeanSquaredError()
    value, regression_loss = _score(model, regression, error)
    with torch.no_grad():
        expected = torch.cat([(model(x) - y) ** 2 for x, y in regression]).mean()
    assert value == pytest.approx(-float(expected), rel=1e-5)  # higher is better everywhere: the error negated
    assert regression_loss != regression_loss  # no cross-entropy for a regression: NaN, not an exception


def test_without_a_metric_a_task_that_is_not_classification_is_one_clear_error() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(ConfigError, match="give a `metric`"):
        _score(model, [(torch.randn(8, 4), torch.randn(8, 3))])


def test_a_function_metric_sees_the_whole_split_or_each_batch_of_structured_outputs() -> None:
    model = TwoInputs()
    batches = [((torch.randn(4, 4), torch.ones(4)), torch.zeros(4)) for _ in range(2)]
    calls: list[int] = []

    def mean_score(outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> float:
        calls.append(len(targets))
        return float(outputs["scores"].mean())

    value, _ = _score(model, batches, mean_score)
    assert calls == [4, 4]  # dict outputs cannot be concatenated: per batch, averaged over items
    with torch.no_grad():
        expected = sum(float(model(*x)["scores"].mean()) for x, _ in batches) / 2
    assert value == pytest.approx(expected)
