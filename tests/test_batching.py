"""Searchers propose as many candidates as the evaluator has workers, and the batch changes nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agents import SEARCHERS, SearchContext
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator, Metrics
from search_spaces import Architecture, Budget, SearchSpace

OPTIONS: dict[str, dict[str, Any]] = {"dmcp": {"steps": 40, "warmup_steps": 10}}


class FakePool:
    """An evaluator with ``parallelism`` workers that records the size of every batch it is given."""

    def __init__(self, evaluator: Evaluator, parallelism: int) -> None:
        self.inner = evaluator
        self.parallelism = parallelism
        self.batches: list[int] = []

    def evaluate(self, architecture: Architecture) -> Metrics:
        return self.evaluate_many([architecture])[0]

    def evaluate_many(self, architectures: list[Architecture]) -> list[Metrics]:
        self.batches.append(len(architectures))
        return [self.inner.evaluate(a) for a in architectures]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Evaluator, int]:
    splits = load_dataset("synthetic", val_size=100)
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25, model_name="vgg-small")
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                          bn_batches=2, bn_batch_size=64)
    return space, evaluator, space.flops_budget(0.5)


@pytest.mark.parametrize("name", ["random", "optuna", "dmcp"])
def test_batches_of_the_pool_size_and_the_same_candidates(name: str, setup, tmp_path: Path) -> None:
    space, evaluator, budget = setup
    pool = FakePool(evaluator, parallelism=2)
    batched = SEARCHERS.create(name, SearchContext(space, pool, Budget(budget), seed=0, run_dir=tmp_path / "b"),
                               **OPTIONS.get(name, {}))
    history = batched.search(5).history
    assert len(history) == 5 and all(e.metrics["flops"] <= budget for e in history)
    assert max(pool.batches) == 2 and sum(pool.batches) >= 5
    if name != "optuna":  # TPE conditions on what it was told, so its batch-of-2 stream differs by design
        single = SEARCHERS.create(name, SearchContext(space, evaluator, Budget(budget), seed=0, run_dir=tmp_path / "s"),
                                  **OPTIONS.get(name, {}))
        assert [e.architecture for e in single.search(5).history] == [e.architecture for e in history]
