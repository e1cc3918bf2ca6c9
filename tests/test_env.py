"""ChannelPruningEnv: both env checkers without warnings, determinism, the action walls, rewards."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from gymnasium.utils.env_checker import data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents.budget import uniform_architecture
from automl_prune.errors import BudgetError, ConfigError
from automl_prune.models import build_model
from envs import CHANNEL_PRUNING_ID, FEATURES, ChannelPruningEnv, MovingAverageBaseline
from search_spaces import Architecture, Budget, SearchSpace


def _space(model_name: str) -> SearchSpace:
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=1, num_classes=10, input_size=16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25, model_name=model_name)


@pytest.fixture(scope="module")
def spaces() -> dict[str, SearchSpace]:
    return {name: _space(name) for name in ("vgg-small", "tiny-resnet")}


@pytest.fixture(scope="module")
def vgg(spaces: dict[str, SearchSpace]) -> SearchSpace:
    return spaces["vgg-small"]


def cheap_evaluate(space: SearchSpace) -> Callable[[Architecture], dict[str, Any]]:
    """A deterministic stand-in for an evaluator: accuracy grows with the channels kept."""

    def evaluate(architecture: Architecture) -> dict[str, Any]:
        kept = sum(architecture.widths.values()) / sum(d.size for d in space.decisions)
        costs = space.costs(architecture)
        return {"accuracy": 0.5 * kept, "flops": costs.flops, "params": costs.params, "seconds": 0.001}

    return evaluate


def run_episode(env: gymnasium.Env, actions: Callable[[int], np.ndarray], seed: int | None = None) -> list[tuple]:
    """Every (observation, reward, terminated, truncated, info) of one episode, the reset included."""
    obs, info = env.reset(seed=seed)
    steps: list[tuple] = [(obs, 0.0, False, False, info)]
    for i in range(1000):
        obs, reward, terminated, truncated, info = env.step(actions(i))
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            return steps
    raise AssertionError("the episode did not end")


def test_registered_and_made_through_gymnasium(vgg: SearchSpace) -> None:
    env = gymnasium.make(CHANNEL_PRUNING_ID, space=vgg, evaluate=cheap_evaluate(vgg),
                         budget=Budget(vgg.flops_budget(0.5)))
    assert isinstance(env.unwrapped, ChannelPruningEnv)
    assert env.observation_space.shape == (len(FEATURES),)
    assert env.action_space == gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)


@pytest.mark.parametrize("model_name", ["vgg-small", "tiny-resnet"])
def test_gymnasium_checker_passes_without_warnings(spaces: dict[str, SearchSpace], model_name: str) -> None:
    space = spaces[model_name]
    env = gymnasium.make(CHANNEL_PRUNING_ID, space=space, evaluate=cheap_evaluate(space),
                         budget=Budget(space.flops_budget(0.5)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gymnasium_check_env(env.unwrapped)


@pytest.mark.parametrize("model_name", ["vgg-small", "tiny-resnet"])
def test_sb3_checker_passes_without_warnings(spaces: dict[str, SearchSpace], model_name: str) -> None:
    space = spaces[model_name]
    env = ChannelPruningEnv(space, cheap_evaluate(space), Budget(space.flops_budget(0.5)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env, warn=True)


def test_same_seed_same_actions_same_episode(vgg: SearchSpace) -> None:
    budget = vgg.flops_budget(0.4)
    actions = np.random.default_rng(7).uniform(-1, 1, size=(len(vgg), 1)).astype(np.float32)
    episodes = [
        run_episode(ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget), reward="acc_flops_log"),
                    lambda i: actions[i], seed=11)
        for _ in range(2)
    ]
    assert len(episodes[0]) == len(vgg) + 1
    for a, b in zip(*episodes, strict=True):
        assert data_equivalence(a, b)
    # the same env, reset again with the same seed, repeats itself too
    env = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget))
    first = run_episode(env, lambda i: actions[i], seed=3)
    again = run_episode(env, lambda i: actions[i], seed=3)
    assert all(data_equivalence(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("model_name", ["vgg-small", "tiny-resnet"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_random_actions_never_exceed_the_budget(spaces: dict[str, SearchSpace], model_name: str,
                                                fraction: float) -> None:
    space = spaces[model_name]
    budget = space.flops_budget(fraction)
    env = ChannelPruningEnv(space, cheap_evaluate(space), Budget(budget))
    rng = np.random.default_rng(0)
    for _ in range(30):
        steps = run_episode(env, lambda i: rng.uniform(-1, 1, size=(1,)).astype(np.float32))
        for obs, *_ in steps:
            assert env.observation_space.contains(obs)
        info = steps[-1][-1]
        arch = Architecture.from_dict(info["architecture"])
        space.validate(arch)
        assert set(arch.widths) == set(space.names)
        assert info["flops"] == space.flops(arch) <= budget


@pytest.mark.parametrize("model_name", ["vgg-small", "tiny-resnet"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_full_actions_end_close_to_the_budget(spaces: dict[str, SearchSpace], model_name: str,
                                              fraction: float) -> None:
    space = spaces[model_name]
    budget = space.flops_budget(fraction)
    env = ChannelPruningEnv(space, cheap_evaluate(space), Budget(budget))
    info = run_episode(env, lambda i: np.ones(1, np.float32))[-1][-1]
    assert 0.95 * budget <= info["flops"] <= budget


def test_lower_wall_keeps_random_episodes_near_the_budget(vgg: SearchSpace) -> None:
    budget = vgg.flops_budget(0.5)
    env = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget), min_flops_fraction=0.95)
    plain = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget))
    rng = np.random.default_rng(1)
    with_wall, without = [], []
    for _ in range(30):
        actions = rng.uniform(-1, 1, size=(len(vgg), 1)).astype(np.float32)
        with_wall.append(run_episode(env, lambda i, a=actions: a[i])[-1][-1]["flops"])
        without.append(run_episode(plain, lambda i, a=actions: a[i])[-1][-1]["flops"])
    assert all(0.95 * budget <= f <= budget for f in with_wall)
    assert min(without) < 0.95 * budget  # the wall is what made the difference


def test_absolute_mapping_is_linear_on_the_keep_ratio(vgg: SearchSpace) -> None:
    env = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(vgg.full_flops), action_mapping="absolute")
    lowest = run_episode(env, lambda i: -np.ones(1, np.float32))[-1][-1]
    assert Architecture.from_dict(lowest["architecture"]) == vgg.smallest()
    highest = run_episode(env, lambda i: np.ones(1, np.float32))[-1][-1]
    assert Architecture.from_dict(highest["architecture"]) == vgg.full()
    env.reset()
    d = vgg.decisions[0]
    assert env.width_for(0, 0.0) == d.floor((d.min_keep / d.size + 1) / 2 * d.size)


@pytest.mark.parametrize("model_name", ["vgg-small", "tiny-resnet"])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.8])
def test_action_zero_is_the_uniform_architecture(spaces: dict[str, SearchSpace], model_name: str,
                                                 fraction: float) -> None:
    space = spaces[model_name]
    budget = max(space.min_flops, space.flops_budget(fraction))
    env = ChannelPruningEnv(space, cheap_evaluate(space), Budget(budget))
    info = run_episode(env, lambda i: np.zeros(1, np.float32))[-1][-1]
    assert Architecture.from_dict(info["architecture"]) == uniform_architecture(space, budget)
    assert env.uniform_widths == uniform_architecture(space, budget).widths


def test_uniform_mapping_spans_the_range_on_both_sides_of_uniform(vgg: SearchSpace) -> None:
    budget = vgg.flops_budget(0.5)
    env = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget))
    env.reset()
    d = vgg.decisions[0]
    centre = env.uniform_widths[d.name]
    assert d.min_keep < centre < d.size
    assert env.width_for(0, -1.0) == d.min_keep
    assert env.width_for(0, -0.5) == d.floor((d.min_keep + centre) / 2)
    assert env.width_for(0, 0.0) == centre
    # above the centre the wall may clip: the first group's width is only bounded by what later minima allow
    assert env.width_for(0, 0.5) == min(d.floor((centre + d.size) / 2), env._largest_fitting(0))
    assert env.width_for(0, 1.0) == env._largest_fitting(0)
    widths = [env.width_for(0, a) for a in np.linspace(-1, 1, 41)]
    assert widths == sorted(widths)  # monotone in the action
    # with a budget that never clips, +1 is every channel and -1 the minimum, as before
    free = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(vgg.full_flops))
    assert Architecture.from_dict(run_episode(free, lambda i: np.ones(1, np.float32))[-1][-1]["architecture"]) \
        == vgg.full()
    assert Architecture.from_dict(run_episode(free, lambda i: -np.ones(1, np.float32))[-1][-1]["architecture"]) \
        == vgg.smallest()


def test_random_actions_centre_on_the_uniform_ratio(vgg: SearchSpace) -> None:
    """The prior a short search relies on: random actions land around uniform, not around the box's middle."""
    budget = vgg.flops_budget(0.25)
    rng = np.random.default_rng(0)
    centred = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget))
    absolute = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(budget), action_mapping="absolute")
    uniform = np.array([centred.uniform_widths[d.name] / d.size for d in vgg.decisions])
    errors = {"uniform": [], "absolute": []}
    for _ in range(20):
        actions = rng.uniform(-1, 1, size=(len(vgg), 1)).astype(np.float32)
        for name, env in (("uniform", centred), ("absolute", absolute)):
            widths = Architecture.from_dict(run_episode(env, lambda i, a=actions: a[i])[-1][-1]["architecture"])
            ratios = np.array([widths.widths[d.name] / d.size for d in vgg.decisions])
            errors[name].append(float(np.abs(ratios - uniform).mean()))
    assert np.mean(errors["uniform"]) < np.mean(errors["absolute"])


def test_observation_features(vgg: SearchSpace) -> None:
    env = ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(vgg.flops_budget(0.5)))
    steps = run_episode(env, lambda i: -np.ones(1, np.float32))
    observations = np.array([s[0] for s in steps[:-1]])
    col = {name: i for i, name in enumerate(FEATURES)}
    assert observations[:, col["index"]].tolist() == pytest.approx(np.linspace(0, 1, len(vgg)).tolist())
    assert observations[:, col["out_channels"]].max() == 1.0
    assert observations[0, col["previous_action"]] == 1.0  # AMC: a_{-1} = 1
    assert observations[0, col["flops_reduced"]] == 0.0
    # each group's minimum removes FLOPs: "reduced" grows and the previous action is the minimum ratio
    assert np.all(np.diff(observations[:, col["flops_reduced"]]) > 0)
    for i in range(1, len(vgg)):
        d = vgg.decisions[i - 1]
        assert observations[i, col["previous_action"]] == pytest.approx(d.min_keep / d.size)


def test_rewards_only_at_the_end_and_info(vgg: SearchSpace) -> None:
    evaluate = cheap_evaluate(vgg)
    for reward in ("accuracy", "acc_flops_log"):
        env = ChannelPruningEnv(vgg, evaluate, Budget(vgg.flops_budget(0.5)), reward=reward)
        steps = run_episode(env, lambda i: np.zeros(1, np.float32))
        assert all(s[1] == 0.0 and not s[2] for s in steps[1:-1])
        _, final, terminated, truncated, info = steps[-1]
        assert terminated and not truncated
        assert set(info) >= {"flops", "params", "accuracy", "architecture"}
        arch = Architecture.from_dict(info["architecture"])
        metrics = evaluate(arch)
        assert info["accuracy"] == metrics["accuracy"] and info["params"] == metrics["params"]
        expected = metrics["accuracy"] if reward == "accuracy" else -(1 - metrics["accuracy"]) * math.log(
            metrics["flops"]
        )
        assert final == pytest.approx(expected)


def test_finishing_architecture_is_what_the_last_step_evaluates(vgg: SearchSpace) -> None:
    """Episodes run side by side can be scored together before their last steps: the peek matches, changes nothing."""
    seen: list[Architecture] = []
    evaluate = cheap_evaluate(vgg)

    def recording(architecture: Architecture) -> dict[str, Any]:
        seen.append(architecture)
        return evaluate(architecture)

    env = ChannelPruningEnv(vgg, recording, Budget(vgg.flops_budget(0.5)), min_flops_fraction=0.9)
    rng = np.random.default_rng(1)
    env.reset()
    for _ in range(len(vgg) - 1):
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        assert env.finishing_architecture(action) is None
        env.step(action)
    last = rng.uniform(-1, 1, 1).astype(np.float32)
    before = env.widths
    peeked = env.finishing_architecture(last)
    assert peeked is not None and env.widths == before and seen == []  # a peek neither steps nor evaluates
    _, _, terminated, _, info = env.step(last)
    assert terminated and seen == [peeked] and Architecture.from_dict(info["architecture"]) == peeked
    with pytest.raises(RuntimeError, match="reset"):
        env.finishing_architecture(last)
    env.reset()
    with pytest.raises(ValueError, match="one finite number"):
        env.finishing_architecture(np.array([2.0]))


def test_bad_arguments_name_the_value_and_the_range(vgg: SearchSpace) -> None:
    evaluate = cheap_evaluate(vgg)
    with pytest.raises(ConfigError, match=r"'top5'.*\['acc_flops_log', 'accuracy'\]"):
        ChannelPruningEnv(vgg, evaluate, Budget(vgg.flops_budget(0.5)), reward="top5")
    with pytest.raises(BudgetError, match=rf"budget_flops=10 < {vgg.min_flops}"):
        ChannelPruningEnv(vgg, evaluate, Budget(10))
    with pytest.raises(ConfigError, match=r"'linear'.*\['uniform', 'absolute'\]"):
        ChannelPruningEnv(vgg, evaluate, Budget(vgg.flops_budget(0.5)), action_mapping="linear")
    with pytest.raises(ConfigError, match=r"min_flops_fraction=1\.5"):
        ChannelPruningEnv(vgg, evaluate, Budget(vgg.flops_budget(0.5)), min_flops_fraction=1.5)
    env = ChannelPruningEnv(vgg, evaluate, Budget(vgg.flops_budget(0.5)))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))
    env.reset()
    with pytest.raises(ValueError, match=r"\[-1, 1\].*2\.5"):
        env.step(np.array([2.5], np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        env.step(np.array([np.nan], np.float32))


def test_moving_average_baseline_shifts_final_rewards_only(vgg: SearchSpace) -> None:
    env = MovingAverageBaseline(ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(vgg.flops_budget(0.5))), alpha=0.5)
    finals, raws = [], []
    for action in (-1.0, 1.0, 0.0):
        steps = run_episode(env, lambda i, a=action: np.full(1, a, np.float32))
        assert all(s[1] == 0.0 for s in steps[1:-1])
        finals.append(steps[-1][1])
        raws.append(steps[-1][-1]["reward_raw"])
    assert finals[0] == 0.0  # the first episode is its own baseline
    assert finals[1] == pytest.approx(raws[1] - raws[0])
    baseline = raws[0] + 0.5 * (raws[1] - raws[0])
    assert finals[2] == pytest.approx(raws[2] - baseline)
    state = env.state_dict()
    fresh = MovingAverageBaseline(ChannelPruningEnv(vgg, cheap_evaluate(vgg), Budget(vgg.flops_budget(0.5))))
    fresh.load_state_dict(state)
    assert fresh.baseline == env.baseline and fresh.alpha == 0.5
    with pytest.raises(ValueError, match="alpha=0"):
        MovingAverageBaseline(env, alpha=0)
