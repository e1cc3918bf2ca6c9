"""A custom loss and metric in `automl_prune.search`: what the searcher sees, what the fine-tunes minimise."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import automl_prune
from automl_prune.config import SearchConfig
from automl_prune.data.datasets import load_dataset
from automl_prune.data.user_data import user_splits
from automl_prune.errors import ConfigError
from automl_prune.run.base_model import base_from_model
from automl_prune.run.search_stage import make_evaluator
from automl_prune.train.training import Trainer, train
from search_spaces import Architecture

#: A labelling with no fixed point: class i is called PERM[i].
PERM = torch.tensor([3, 7, 0, 9, 1, 8, 2, 5, 4, 6])
#: Batch sizes seen by `counting_ce` (module level: the tests run in one process, workers=0).
CALLS: list[int] = []


def neg_brier(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Minus the mean squared error of the softmax against one-hot labels (higher is better, always < 0)."""
    one_hot = F.one_hot(targets, outputs.shape[1]).float()
    return -float(((outputs.detach().softmax(1) - one_hot) ** 2).sum(1).mean())


def permuted_top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy against the permuted labelling."""
    return float((outputs.argmax(1) == PERM[targets]).float().mean())


def permuted_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy towards the permuted labelling."""
    return F.cross_entropy(outputs, PERM.to(targets.device)[targets])


def counting_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy that records the batch size of every call."""
    CALLS.append(int(outputs.shape[0]))
    return F.cross_entropy(outputs, targets)


class SmallNet(nn.Module):
    """Two convolutions and a classifier (not in the zoo)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained():
    splits = load_dataset("synthetic", seed=3)
    torch.manual_seed(0)
    model = SmallNet()
    train(model, splits, epochs=1, lr=0.05, max_steps=60, progress=False)
    model = model.to(memory_format=torch.contiguous_format).eval()
    data = {name: (s.images, s.labels) for name, s in (("train", splits.train), ("val", splits.val),
                                                       ("test", splits.test))}
    return model, data


def _search(model: nn.Module, data: dict, out, **settings):
    common = {"flops": 0.5, "agent": "random", "episodes": 4, "workers": 0, "finetune_epochs": 0.1,
              "rerank_top_k": 1, "progress": False}
    return automl_prune.search(model, data["train"], data["val"], test=data["test"], out=out,
                               cache_dir=Path(out).parent / "cache", **{**common, **settings})


def test_the_metric_is_the_searchers_score_and_the_summarys_numbers(trained, tmp_path, capsys) -> None:
    model, data = trained
    run = tmp_path / "run"
    result = _search(model, data, run, metric=neg_brier, proxy="adaptive-bn")
    summary = result.metrics
    chosen = [line for line in capsys.readouterr().err.splitlines() if line.startswith("re-ranking chose")]
    assert len(chosen) == 1 and "val neg_brier -" in chosen[0] and "%" not in chosen[0], chosen
    assert summary["metric"] == "neg_brier" and "loss" not in summary
    (val_x, val_y), (test_x, test_y) = data["val"], data["test"]
    with torch.no_grad():
        assert summary["base"]["val_acc"] == pytest.approx(neg_brier(model(val_x), val_y), abs=1e-5)
        assert summary["base"]["test_acc"] == pytest.approx(neg_brier(model(test_x), test_y), abs=1e-5)
        # The final numbers are the metric of the exported, fine-tuned model.
        final = result.model
        assert summary["compressed"]["val_acc_after_finetune"] == pytest.approx(neg_brier(final(val_x), val_y),
                                                                                abs=1e-5)
        assert summary["compressed"]["test_acc"] == pytest.approx(neg_brier(final(test_x), test_y), abs=1e-5)
    assert all(r["val_acc"] < 0 for r in summary["rerank"]["results"])  # the ladder ranks by it too

    # Every score the searcher received is the metric of that candidate, rebuilt by a plain top-1 evaluator.
    config = SearchConfig(model="python:test", dataset="user-data", flops=0.5, agent="random", workers=0,
                          proxy="adaptive-bn", out=str(tmp_path / "unused"))
    base = base_from_model(config, copy.deepcopy(model), {}, user_splits(model, data["train"], data["val"], None))
    top1 = make_evaluator(config, base)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4
    for entry in history:
        arch = Architecture.from_dict(entry["architecture"])
        built = top1.build(arch)  # (compression traces with autograd: outside no_grad)
        with torch.no_grad():
            expected = neg_brier(built(val_x), val_y)
        assert entry["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-5)
        assert 0.0 <= top1.evaluate(arch).accuracy <= 1.0 and expected < 0  # so not top-1 by accident
    fitting = [e["metrics"]["accuracy"] for e in history if e["metrics"]["flops_ratio"] <= 0.5]
    assert summary["search_best"]["proxy_accuracy"] == max(fitting)
    table = (run / "summary.md").read_text()
    assert "val neg_brier (after fine-tune)" in table and "val accuracy" not in table
    report = (run / "report.md").read_text()  # the report's tables name the metric and print it as it is
    assert "proxy neg_brier" in report and "val neg_brier after" in report
    ladder_rows = [line for line in report.splitlines() if line.startswith("| c")]
    assert ladder_rows and all("%" not in line for line in ladder_rows)

    # The run is tied to its metric: resuming it with another one (or none) is refused before any work.
    for other in ({"metric": permuted_top1}, {}):
        with pytest.raises(ConfigError, match="task"):
            _search(model, data, run, proxy="adaptive-bn", **other)


def test_the_custom_loss_trains_the_proxy_the_ladder_and_the_final_model(trained, tmp_path) -> None:
    model, data = trained
    CALLS.clear()
    steps = 3
    result = _search(model, data, tmp_path / "run", loss=counting_ce, proxy="finetune", proxy_finetune_steps=steps,
                     finetune_epochs=0.3)
    summary = result.metrics
    assert summary["loss"] == "counting_ce" and "metric" not in summary
    results = summary["rerank"]["results"]
    # Rungs continue each other: a candidate's fine-tune is as many steps as its highest rung.
    ladder_steps = sum(max(r["steps"] for r in results if r["candidate"] == c) for c in {r["candidate"]
                                                                                          for r in results})
    assert ladder_steps > 0
    training_calls = CALLS.count(128)  # one per optimizer step, proxy (batch 128) and ladder (batch 128)
    assert len(CALLS) == training_calls + 1  # and the one up-front check of the loss
    proxy_calls = training_calls - ladder_steps
    assert proxy_calls >= steps * summary["evaluations"] and proxy_calls % steps == 0


def test_a_loss_towards_another_labelling_changes_what_the_final_model_predicts(trained, tmp_path) -> None:
    model, data = trained
    result = _search(model, data, tmp_path / "run", loss=permuted_ce, metric=permuted_top1,
                     metric_name="permuted top-1", proxy="adaptive-bn", finetune_epochs=6, finetune_lr=0.1)
    summary = result.metrics
    assert summary["metric"] == "permuted top-1"
    # The base model was trained on the true labels: it almost never predicts the permuted ones.
    assert summary["base"]["val_acc"] < 0.1
    # Fine-tuned towards the permuted labels, the final model predicts them (cross-entropy would not).
    assert summary["compressed"]["val_acc_after_finetune"] > 0.3
    with torch.no_grad():
        assert permuted_top1(result.model(data["test"][0]), data["test"][1]) == pytest.approx(
            summary["compressed"]["test_acc"], abs=1e-6)


def test_distillation_blends_into_the_custom_loss(trained) -> None:
    model, data = trained
    from automl_prune.data.datasets import Split

    CALLS.clear()
    student = copy.deepcopy(model)
    trainer = Trainer(student, Split(*data["train"]), epochs=1, max_steps=2, lr=0.01, loss=counting_ce,
                      teacher=model, distill_weight=0.5)
    trainer.run(progress=False)
    assert CALLS == [128, 128]


def test_a_lambda_with_workers_is_refused_in_one_line_before_anything_is_written(trained, tmp_path) -> None:
    model, data = trained
    run = tmp_path / "run"

    def nested(outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return 0.0

    for bad in ({"loss": lambda outputs, targets: F.cross_entropy(outputs, targets)}, {"metric": nested}):
        with pytest.raises(ConfigError) as caught:
            _search(model, data, run, workers=2, **bad)
        message = str(caught.value)
        assert "\n" not in message
        assert f"`{next(iter(bad))}`" in message and "module-level function" in message and "workers=0" in message
        assert not run.exists()
    with pytest.raises(ConfigError, match="scalar tensor"):
        _search(model, data, run, loss=neg_brier)  # returns a float: no gradient to fine-tune with
    assert not run.exists()


def test_the_task_reaches_ray_workers_through_the_pickled_job(trained, tmp_path) -> None:
    from ray import cloudpickle

    from automl_prune.data.task import Task
    from automl_prune.run.search_stage import evaluator_kwargs
    from automl_prune.scoring.rung_job import FineTuneRecipe, LadderJob

    model, data = trained
    task = Task(loss=permuted_ce, metric=permuted_top1)
    config = SearchConfig(model="python:test", dataset="user-data", flops=0.5, agent="random", workers=2,
                          out=str(tmp_path / "unused"))
    base = base_from_model(config, model, {}, user_splits(model, data["train"], data["val"], None), task=task)
    job = LadderJob(tmp_path, model, base.space, base.splits, FineTuneRecipe(), (1,), task=task)
    received_job = cloudpickle.loads(cloudpickle.dumps(job))  # what `ray.put` does
    received_kwargs = cloudpickle.loads(cloudpickle.dumps(evaluator_kwargs(config, base)))
    for received in (received_job.task, received_kwargs["task"]):
        assert received.loss is permuted_ce and received.metric is permuted_top1
    trainer = received_job.recipe.trainer(nn.Linear(1, 1), base.splits, loss=received_job.task.loss)
    assert trainer.loss_fn is permuted_ce
