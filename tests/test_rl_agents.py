"""DDPG (AMC's recipe) and PPO searchers: episodes are evaluations, learning happens, resume continues."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import SEARCHERS, SearchContext
from agents.rl_ddpg import DDPGSearcher, DecayingTruncatedNormalNoise
from agents.rl_ppo import PPOSearcher
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator
from search_spaces import Budget, SearchSpace


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


def _make(name: str, setup: tuple[SearchSpace, Evaluator, int], run_dir: Path | None, **kwargs: object):
    space, evaluator, budget = setup
    if name == "ddpg":
        kwargs = {"warmup_episodes": 2, "batch_size": 16, **kwargs}
    return SEARCHERS.create(name, SearchContext(space, evaluator, Budget(budget), seed=0, run_dir=run_dir), **kwargs)


def test_registered() -> None:
    assert SEARCHERS.get("ddpg") is DDPGSearcher
    assert SEARCHERS.get("ppo") is PPOSearcher


def test_ddpg_warms_up_then_learns(setup, tmp_path: Path) -> None:
    space, _, budget = setup
    searcher = _make("ddpg", setup, tmp_path)
    result = searcher.search(6)
    model = searcher.model
    n_groups = len(space)
    assert len(result.history) == 6 and [e.index for e in result.history] == list(range(6))
    assert all(e.metrics["flops"] <= budget for e in result.history)
    assert model.num_timesteps == 6 * n_groups
    assert model.learning_starts == 2 * n_groups and model.gamma == 1.0
    assert model.replay_buffer.size() == 6 * n_groups
    assert model._n_updates > 0  # gradient steps happened after the warm-up episodes
    # AMC's credit assignment: every step of an episode carries the episode's final raw reward
    rewards = model.replay_buffer.rewards[: 6 * n_groups, 0].reshape(6, n_groups)
    assert np.all(rewards == rewards[:, -1:])
    assert np.any(rewards != 0)
    assert model._episode_num == 6
    assert searcher.noise.episode == 5  # the last episode explored with sigma decayed 3 times after warm-up
    assert searcher.noise.sigma == pytest.approx(0.5 * 0.99**3)
    assert searcher.baseline is not None
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").rglob("events.out.*"))


def test_ddpg_stores_raw_rewards_and_subtracts_the_current_baseline_when_sampling(setup) -> None:
    """AMC: a transition is compared with the baseline of the training step, not of the time it was stored."""
    searcher = _make("ddpg", setup, None, baseline_alpha=0.5)
    result = searcher.search(5)
    n_groups = len(setup[0])
    buffer = searcher.model.replay_buffer
    raw = [e.metrics["accuracy"] for e in result.history]  # the "accuracy" reward is the accuracy
    stored = buffer.rewards[: 5 * n_groups, 0].reshape(5, n_groups)
    assert stored[:, 0] == pytest.approx(raw)  # raw, every episode, whatever the baseline was then
    baseline = raw[0]
    for value in raw[1:]:
        baseline += 0.5 * (value - baseline)
    assert searcher.baseline == pytest.approx(baseline)
    batch = buffer._get_samples(np.arange(5 * n_groups))
    assert batch.rewards.numpy()[:, 0] == pytest.approx(stored.reshape(-1) - baseline)


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_save_restore_continues(name: str, setup, tmp_path: Path) -> None:
    space, _, budget = setup
    n_groups = len(space)
    first = _make(name, setup, tmp_path)
    first.search(4)
    first.save(tmp_path / "state")
    saved = json.loads((tmp_path / "state" / "rl_state.json").read_text())
    generation = tmp_path / "state" / saved["generation"]
    assert (generation / "model.zip").is_file()
    assert [p.name for p in (tmp_path / "state").glob("gen-*")] == [generation.name]  # older ones removed

    second = _make(name, setup, tmp_path)
    assert len(second.history) == 4  # reloaded from run_dir/history.jsonl
    second.restore(tmp_path / "state")
    assert second.model.num_timesteps == 4 * n_groups
    if name == "ddpg":
        assert (generation / "replay_buffer.pkl").is_file()
        assert second.model.replay_buffer.size() == 4 * n_groups
        assert second.noise.episode == saved["noise"]["episode"] == 3
        assert second.model._episode_num == 4
        assert second.baseline == saved["baseline"] == first.baseline
        assert second.model.action_noise is second.noise
    result = second.search(8)
    assert len(result.history) == 8 and [e.index for e in result.history] == list(range(8))
    assert [e.to_dict() for e in result.history[:4]] == [e.to_dict() for e in first.history.entries]
    assert all(e.metrics["flops"] <= budget for e in result.history)
    assert second.model.num_timesteps == 8 * n_groups
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 8


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_same_seed_same_search(name: str, setup) -> None:
    runs = [_make(name, setup, None).search(5) for _ in range(2)]
    assert [e.architecture for e in runs[0].history] == [e.architecture for e in runs[1].history]


def test_ppo_never_evaluates_past_the_budget_of_evaluations(setup) -> None:
    space, _, _ = setup
    searcher = _make("ppo", setup, None, episodes_per_rollout=4)
    assert searcher.model is None
    searcher.search(3)  # stops inside its first rollout of 4 episodes
    assert len(searcher.history) == 3
    assert searcher.model._last_obs is None  # the next learn starts from a reset, not a stale observation
    searcher.search(9)  # continues: a fresh rollout, then one more partial one
    assert len(searcher.history) == 9
    assert searcher.model.n_steps == 4 * len(space) and searcher.model.gamma == 1.0


def test_restore_refuses_another_searchers_state(setup, tmp_path: Path) -> None:
    ppo = _make("ppo", setup, None)
    ppo.search(2)
    ppo.save(tmp_path)
    with pytest.raises(ValueError, match="'ppo', not 'ddpg'"):
        _make("ddpg", setup, None).restore(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"rl_state\.json"):
        _make("ddpg", setup, None).restore(tmp_path / "missing")


def test_lower_wall_follows_the_reward(setup) -> None:
    assert _make("ddpg", setup, None).env.envs[0].unwrapped.min_flops_fraction == 0.95
    assert _make("ppo", setup, None, reward="acc_flops_log").env.envs[0].unwrapped.min_flops_fraction == 0.0
    assert _make("ppo", setup, None, min_flops_fraction=0.5).env.envs[0].unwrapped.min_flops_fraction == 0.5


def test_bad_arguments(setup) -> None:
    with pytest.raises(ValueError, match="warmup_episodes=-1"):
        _make("ddpg", setup, None, warmup_episodes=-1)
    with pytest.raises(ValueError, match="top5"):
        _make("ppo", setup, None, reward="top5")
    with pytest.raises(ValueError, match="n_epochs=0"):
        _make("ppo", setup, None, n_epochs=0)


def test_truncated_noise_decays_and_stays_in_range() -> None:
    noise = DecayingTruncatedNormalNoise(sigma=0.5, decay=0.9, warmup_episodes=2, seed=3)
    noise.set_episode(2)
    assert noise.sigma == 0.5  # no decay during warm-up
    noise.set_episode(3)
    assert noise.sigma == pytest.approx(0.45)
    samples = np.array([noise.sample_around(np.array([0.95])) for _ in range(500)])
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert (samples == 1.0).mean() < 0.05  # truncated, not clipped: no pile-up at the bound
    state = noise.state_dict()
    twin = DecayingTruncatedNormalNoise()
    twin.load_state_dict(state)
    noise.set_episode(4)
    twin.set_episode(4)
    assert twin.sigma == noise.sigma
    assert np.array_equal(twin.sample_around(np.zeros(1)), noise.sample_around(np.zeros(1)))
