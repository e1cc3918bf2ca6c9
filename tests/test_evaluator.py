"""Evaluator: deterministic, cached, and adaptive batch norm measurably helps pruned models."""

from __future__ import annotations

import copy

import torch

from automl_prune.prune.pruning import compress
from automl_prune.scoring.evaluator import Evaluator, accuracy_and_loss
from tests.helpers import trained


def _evaluator(**kwargs: object) -> Evaluator:
    model, splits, space = trained()
    return Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                     train_labels=splits.train.labels, bn_batches=4, bn_batch_size=64, seed=0, **kwargs)


def test_same_architecture_same_accuracy_twice() -> None:
    _model, _, space = trained()
    arch = space.from_ratios(0.5)
    first = _evaluator().evaluate(arch)
    second = _evaluator().evaluate(arch)  # a fresh evaluator: no cache involved
    assert first.accuracy == second.accuracy and first.loss == second.loss
    assert first.flops == space.flops(arch)


def test_cache_returns_the_same_metrics_without_recomputing() -> None:
    evaluator = _evaluator()
    _, _, space = trained()
    arch = space.from_ratios(0.6)
    first = evaluator.evaluate(arch)
    again = evaluator.evaluate(space.from_ratios(0.6))
    assert again is first and evaluator.evaluations == 1


def test_adaptive_bn_beats_stale_statistics() -> None:
    model, splits, space = trained()
    evaluator = _evaluator()
    gains = []
    for ratio in (0.5, 0.3):
        arch = space.from_ratios(ratio)
        stale = compress(copy.deepcopy(model), space.graph, arch)
        stale_acc, _ = accuracy_and_loss(stale, splits.val.images, splits.val.labels, 500)
        adapted = evaluator.evaluate(arch).accuracy
        gains.append(adapted - stale_acc)
    assert max(gains) > 0.02, gains  # measured: several points on this fixture
    assert min(gains) > -0.01


def test_short_finetune_proxy_runs_and_is_deterministic() -> None:
    _, _, space = trained()
    arch = space.from_ratios(0.4)
    a = _evaluator(finetune_steps=3).evaluate(arch)
    b = _evaluator(finetune_steps=3).evaluate(arch)
    assert a.accuracy == b.accuracy
    assert 0.0 <= a.accuracy <= 1.0


def test_base_model_is_not_modified() -> None:
    model, _, space = trained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _evaluator().evaluate(space.from_ratios(0.3))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
