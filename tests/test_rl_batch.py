"""DDPG and PPO with a parallel evaluator: rounds of N episodes, each scored by one batch, resumable exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agents import SEARCHERS, SearchContext
from agents.rl_ddpg import DDPGSearcher
from agents.rl_ppo import PPOSearcher
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator
from search_spaces import Architecture, Budget, SearchSpace

WORKERS = 2


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs."""


class FakePool:
    """A pool's interface (``parallelism``, ``evaluate_many``) over a local evaluator, recording every call.

    Args:
        inner: Scores the architectures (one after another).
        parallelism: What the pool reports.
        crash_at: The 0-based ``evaluate_many`` call that raises `Crash` instead of evaluating.
    """

    def __init__(self, inner: Evaluator, parallelism: int = WORKERS, crash_at: int | None = None) -> None:
        self.inner, self.parallelism, self.crash_at = inner, parallelism, crash_at
        self.batches: list[list[Architecture]] = []

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def evaluate(self, architecture: Architecture) -> Any:
        raise AssertionError("a searcher with a pool must score through evaluate_many")

    def evaluate_many(self, architectures: list[Architecture]) -> list[Any]:
        if len(self.batches) == self.crash_at:
            raise Crash
        self.batches.append(list(architectures))
        return [self.inner.evaluate(a) for a in architectures]


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Evaluator, int]:
    """An untrained tiny-resnet on the synthetic data: each evaluation takes ~20 ms."""
    splits = load_dataset("synthetic", val_size=100)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                          bn_batches=2, bn_batch_size=64)
    return space, evaluator, space.flops_budget(0.5)


def _make(name: str, setup: tuple[SearchSpace, Evaluator, int], run_dir: Path | None,
          evaluator: Any = None, **kwargs: Any) -> DDPGSearcher | PPOSearcher:
    space, inner, budget = setup
    if name == "ddpg":
        kwargs = {"warmup_episodes": 2, "batch_size": 16, **kwargs}
    evaluator = FakePool(inner) if evaluator is None else evaluator
    return SEARCHERS.create(name, SearchContext(space, evaluator, Budget(budget), seed=0, run_dir=run_dir), **kwargs)


def _architectures(searcher: DDPGSearcher | PPOSearcher) -> list[Architecture]:
    return [e.architecture for e in searcher.history.entries]


def _check_history(searcher: DDPGSearcher | PPOSearcher, n: int, budget: int) -> None:
    history = searcher.history.entries
    assert [e.index for e in history] == list(range(n))
    assert all(e.metrics["flops"] == searcher.space.flops(e.architecture) <= budget for e in history)


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_rounds_of_two_episodes_are_scored_in_one_batch_each(name: str, setup) -> None:
    space, inner, budget = setup
    pool = FakePool(inner)
    searcher = _make(name, setup, None, pool)
    assert searcher.batch_size == searcher.episodes_per_round == WORKERS
    searcher.search(8)
    assert pool.sizes == [2, 2, 2, 2]  # the warm-up round and the learning rounds alike
    _check_history(searcher, 8, budget)
    assert [a for batch in pool.batches for a in batch] == _architectures(searcher)  # in order, all recorded
    model = searcher.model
    assert model.n_envs == WORKERS and model.num_timesteps == 8 * len(space)
    if name == "ddpg":
        assert model.learning_starts == 2 * len(space) and model._n_updates > 0  # learned after warm-up
        assert model.replay_buffer.size() == 4 * len(space)  # rows of two transitions: every step stored
        assert model._episode_num == 8
    else:
        assert model.n_steps == 2 * len(space)  # 4 episodes per rollout: 2 rounds of 2
        assert model._n_updates > 0


def test_ddpg_warmup_is_rounded_up_to_whole_rounds(setup) -> None:
    searcher = _make("ddpg", setup, None, warmup_episodes=3)
    assert searcher.warmup_episodes == searcher.noise.warmup_episodes == 4
    searcher.search(2)
    assert searcher.model.learning_starts == 4 * len(setup[0])  # no round mixes random and policy actions


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_same_seed_and_batch_size_same_search(name: str, setup) -> None:
    runs = [_architectures(_searched(name, setup, 6)) for _ in range(2)]
    assert runs[0] == runs[1]


def _searched(name: str, setup, n: int, **kwargs: Any) -> DDPGSearcher | PPOSearcher:
    searcher = _make(name, setup, None, **kwargs)
    searcher.search(n)
    return searcher


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
@pytest.mark.parametrize("first", [4, 3])
def test_save_restore_continue_equals_one_uninterrupted_search(name: str, first: int, setup, tmp_path: Path) -> None:
    """At a round boundary (4) and inside a round (3): the cut round is re-run and its recorded entry reused."""
    _, inner, budget = setup
    uninterrupted = _searched(name, setup, 8)

    pool = FakePool(inner)
    searcher = _make(name, setup, tmp_path, pool)
    searcher.search(first)
    assert pool.sizes == [2] * (first // 2) + [1] * (first % 2)  # never evaluates past the search's budget
    searcher.save(tmp_path / "state")
    del searcher

    pool = FakePool(inner)
    resumed = _make(name, setup, tmp_path, pool)
    resumed.restore(tmp_path / "state")
    resumed.search(8)
    assert _architectures(resumed) == _architectures(uninterrupted)
    assert [e.metrics for e in resumed.history.entries] == [e.metrics for e in uninterrupted.history.entries]
    assert pool.sizes == [1] * (first % 2) + [2] * ((8 - first) // 2)  # the cut round's first entry is not redone
    _check_history(resumed, 8, budget)
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 8


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_a_search_continued_in_process_equals_one_uninterrupted_search(name: str, setup) -> None:
    uninterrupted = _searched(name, setup, 7)
    searcher = _make(name, setup, None)
    for n in (1, 4, 5, 7):
        searcher.search(n)
        assert len(searcher.history) == n
    assert _architectures(searcher) == _architectures(uninterrupted)


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_a_kill_loses_at_most_the_round_in_flight_and_replays_recorded_rounds(name: str, setup, tmp_path: Path) -> None:
    """State saved every 4 episodes (2 rounds): a kill during the 4th round's batch leaves round 3 recorded but
    not in the saved state. The resumed agent re-runs round 3, takes its recorded scores, and evaluates only
    from round 4 on; the result is the uninterrupted search."""
    _, inner, budget = setup
    uninterrupted = _searched(name, setup, 10)

    run_dir = tmp_path / "killed"
    with pytest.raises(Crash):
        _make(name, setup, run_dir, FakePool(inner, crash_at=3), save_every=4).search(10)
    pool = FakePool(inner)
    resumed = _make(name, setup, run_dir, pool, save_every=4)
    assert len(resumed.history) == 6
    resumed.restore(resumed.state_dir)
    assert resumed._consumed == 4  # the saved state has taken in two rounds; round 3 is recorded after it
    resumed.search(10)
    assert pool.sizes == [2, 2]  # rounds 4 and 5: round 3 was replayed, not evaluated again
    assert _architectures(resumed) == _architectures(uninterrupted)
    _check_history(resumed, 10, budget)


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_restore_keeps_the_saved_round_size(name: str, setup, tmp_path: Path) -> None:
    """A run resumed with another number of workers still continues the search it interrupted."""
    _, inner, _ = setup
    uninterrupted = _searched(name, setup, 6)
    first = _make(name, setup, tmp_path)
    first.search(4)
    first.save(tmp_path / "state")
    resumed = _make(name, setup, tmp_path, inner)  # the plain evaluator: parallelism 1
    assert resumed.episodes_per_round == 1
    resumed.restore(tmp_path / "state")
    assert resumed.episodes_per_round == WORKERS and resumed.model.n_envs == WORKERS
    resumed.search(6)
    assert _architectures(resumed) == _architectures(uninterrupted)


def test_explicit_round_size_overrides_the_evaluators_parallelism(setup) -> None:
    _, inner, _ = setup
    pool = FakePool(inner, parallelism=1)
    searcher = _make("ppo", setup, None, pool, episodes_per_round=3)
    searcher.search(6)
    assert pool.sizes == [3, 3]
    with pytest.raises(ValueError, match="episodes_per_round=0"):
        _make("ddpg", setup, None, episodes_per_round=0)
