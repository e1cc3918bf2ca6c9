"""RL searchers after a crash, and their effect on the caller's random generators."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agents import SEARCHERS, SearchContext
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator
from search_spaces import Architecture, Budget, SearchSpace


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs, no `save`, no `finally` of ours that writes state."""


class CrashingEvaluator:
    """Evaluates normally, then dies when asked for evaluation number ``crash_at`` (0-based)."""

    def __init__(self, inner: Evaluator, crash_at: int | None) -> None:
        self.inner, self.crash_at, self.calls = inner, crash_at, 0

    def evaluate(self, architecture: Architecture) -> Any:
        if self.calls == self.crash_at:
            raise Crash
        self.calls += 1
        return self.inner.evaluate(architecture)


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Evaluator, int]:
    splits = load_dataset("synthetic", val_size=100)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                          bn_batches=2, bn_batch_size=64)
    return space, evaluator, space.flops_budget(0.5)


def _make(name: str, setup, run_dir: Path | None, crash_at: int | None = None):  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    kwargs = {"warmup_episodes": 2, "batch_size": 16} if name == "ddpg" else {}
    context = SearchContext(space, CrashingEvaluator(evaluator, crash_at), Budget(budget), seed=0, run_dir=run_dir)
    return SEARCHERS.create(name, context, **kwargs)


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_a_killed_search_keeps_its_learned_state_and_continues_as_if_never_killed(
    name: str, setup, tmp_path: Path
) -> None:
    n_groups = len(setup[0])
    uninterrupted = _make(name, setup, tmp_path / "one-go").search(7).history

    run_dir = tmp_path / "killed"
    with pytest.raises(Crash):
        _make(name, setup, run_dir, crash_at=5).search(7)  # dies evaluating its 6th episode
    resumed = _make(name, setup, run_dir)
    assert len(resumed.history) == 5
    resumed.restore(resumed.state_dir)
    if name == "ddpg":
        assert resumed.model.replay_buffer.size() == 5 * n_groups  # no second warm-up from an empty buffer
        assert resumed.model._episode_num == 5
    else:
        assert resumed.model.num_timesteps == 5 * n_groups
    continued = resumed.search(7).history
    assert [e.architecture for e in continued] == [e.architecture for e in uninterrupted]


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_a_search_leaves_the_callers_random_generators_as_it_found_them(name: str, setup) -> None:
    def draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    def seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    for seed in (999, 123):  # before the fix, both seeds gave the searcher's draws afterwards
        seed_all(seed)
        expected = draws()
        seed_all(seed)
        _make(name, setup, None).search(3)
        assert draws() == expected


def test_restore_leaves_the_callers_random_generators_as_it_found_them(setup, tmp_path: Path) -> None:
    first = _make("ddpg", setup, None)
    first.search(2)
    first.save(tmp_path)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    _make("ddpg", setup, None).restore(tmp_path)  # stable-baselines3's load reseeds from the saved seed
    assert torch.equal(torch.rand(3), expected)
