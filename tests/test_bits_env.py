"""QuantizationEnv (HAQ) and JointCompressionEnv: both env checkers without warnings, determinism, the walls
(every episode within every budget), the action mapping, and one-line errors."""

from __future__ import annotations

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

from automl_prune.errors import BudgetError, ConfigError
from automl_prune.models import build_model
from envs import (
    BIT_FEATURES,
    JOINT_FEATURES,
    JOINT_ID,
    QUANTIZATION_ID,
    JointCompressionEnv,
    QuantizationEnv,
)
from search_spaces import Architecture, Budget, SearchSpace


def _space(pin: int | None = None) -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25, pin_first_last=pin)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return _space()


@pytest.fixture(scope="module")
def pinned() -> SearchSpace:
    return _space(pin=8)


def evaluate_for(space: SearchSpace) -> Callable[[Architecture], dict[str, Any]]:
    """A deterministic stand-in for an evaluator: accuracy grows with channels and bits."""

    def evaluate(architecture: Architecture) -> dict[str, Any]:
        arch = space.complete(architecture)
        kept = sum(arch.widths.values()) / sum(d.size for d in space.decisions)
        bits = [min(w, 8) + min(a, 8) for w, a in arch.bits.values()] or [16]
        return {"accuracy": 0.5 * kept + 0.5 * float(np.mean(bits)) / 16, "flops": space.flops(arch)}

    return evaluate


def _quant(space: SearchSpace, size: float | None = 0.15, bops: float | None = 0.02) -> QuantizationEnv:
    env = gymnasium.make(QUANTIZATION_ID, space=space, evaluate=evaluate_for(space),
                         budget=Budget.from_fractions(space, size=size, bops=bops))
    return env.unwrapped  # type: ignore[return-value]


def _joint(space: SearchSpace, flops: float = 0.5, size: float | None = 0.06,
           bops: float | None = 0.005) -> JointCompressionEnv:
    env = gymnasium.make(JOINT_ID, space=space, evaluate=evaluate_for(space),
                         budget=Budget.from_fractions(space, flops, size=size, bops=bops))
    return env.unwrapped  # type: ignore[return-value]


MAKERS: dict[str, Callable[[SearchSpace], gymnasium.Env]] = {"quantization": _quant, "joint": _joint}


def run_episode(env: gymnasium.Env, actions: Callable[[int], np.ndarray], seed: int | None = None) -> list[tuple]:
    """Every (observation, reward, terminated, truncated, info) of one episode, the reset included."""
    obs, info = env.reset(seed=seed)
    steps: list[tuple] = [(obs, 0.0, False, False, info)]
    for i in range(1000):
        obs, reward, terminated, truncated, info = env.step(actions(i))
        assert env.observation_space.contains(obs)
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            return steps
    raise AssertionError("the episode did not end")


def _random_actions(seed: int) -> Callable[[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    return lambda _: rng.uniform(-1.0, 1.0, 2).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("pin", [False, True])
def test_both_checkers_pass_without_warnings(space, pinned, kind: str, pin: bool) -> None:
    env = MAKERS[kind](pinned if pin else space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gymnasium_check_env(env)
        sb3_check_env(env, warn=True)


def test_spaces(space: SearchSpace) -> None:
    quant, joint = _quant(space), _joint(space)
    box = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)  # [weight bits, activation bits]
    assert quant.action_space == box and joint.action_space == box
    assert quant.observation_space.shape == (len(BIT_FEATURES),)
    assert joint.observation_space.shape == (len(JOINT_FEATURES),)
    assert len(run_episode(quant, lambda _: np.zeros(2, np.float32))) == 1 + len(space.quantizable_layers)
    assert len(run_episode(joint, lambda _: np.zeros(2, np.float32))) == 1 + len(space) + len(space.quantizable_layers)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_deterministic_for_a_seed(space: SearchSpace, kind: str) -> None:
    one = run_episode(MAKERS[kind](space), _random_actions(3), seed=7)
    two = run_episode(MAKERS[kind](space), _random_actions(3), seed=7)
    assert data_equivalence(one, two)
    env = MAKERS[kind](space)  # and the same env again, after another episode
    run_episode(env, _random_actions(4), seed=1)
    assert data_equivalence(run_episode(env, _random_actions(3), seed=7), one)


@pytest.mark.parametrize(("size", "bops"), [(0.15, None), (None, 0.02), (0.15, 0.02), (0.111, 0.004)])
def test_every_quantization_episode_ends_within_budget(space: SearchSpace, size, bops) -> None:
    env = _quant(space, size, bops)
    for seed in range(25):
        info = run_episode(env, _random_actions(seed))[-1][-1]
        arch = Architecture.from_dict(info["architecture"])
        space.validate(arch)
        assert arch.widths == space.full().widths
        assert set(arch.bits) == set(space.quantizable_layers)
        assert info["size_bits"] == space.size_bits(arch) and info["bops"] == space.bops(arch)
        assert size is None or info["size_bits"] <= space.size_budget(size)
        assert bops is None or info["bops"] <= space.bops_budget(bops)


@pytest.mark.parametrize(("flops", "size", "bops"), [(0.5, 0.06, None), (0.5, None, 0.005), (0.3, 0.04, 0.003),
                                                     (1.0, 0.15, 0.02)])
def test_every_joint_episode_ends_within_every_budget(space: SearchSpace, flops, size, bops) -> None:
    env = _joint(space, flops, size, bops)
    for seed in range(25):
        info = run_episode(env, _random_actions(seed))[-1][-1]
        arch = Architecture.from_dict(info["architecture"])
        space.validate(arch)
        assert info["flops"] == space.flops(arch) <= space.flops_budget(flops)
        assert size is None or space.size_bits(arch) <= space.size_budget(size)
        assert bops is None or space.bops(arch) <= space.bops_budget(bops)


def test_pinned_layers_keep_their_bits(pinned: SearchSpace) -> None:
    info = run_episode(_quant(pinned), _random_actions(0))[-1][-1]
    bits = Architecture.from_dict(info["architecture"]).bits
    for layer, value in pinned.pinned_bits.items():
        assert bits[layer] == (value, value)


def test_action_mapping_lowest_uniform_highest(space: SearchSpace) -> None:
    lowest = min(space.bit_choices)
    low = run_episode(_quant(space), lambda _: -np.ones(2, np.float32))[-1][-1]
    assert set(map(tuple, Architecture.from_dict(low["architecture"]).bits.values())) == {(lowest, lowest)}
    free = _quant(space, None, None)  # no budget: +1 is the highest bits everywhere, and so is 0 (uniform)
    top = max(space.bit_choices)
    for action in (1.0, 0.0):
        info = run_episode(free, lambda _, a=action: np.full(2, a, np.float32))[-1][-1]
        assert set(map(tuple, Architecture.from_dict(info["architecture"]).bits.values())) == {(top, top)}
    # under a budget, 0 everywhere is the highest single bit width that fits (HAQ's uniform baseline)
    env = _quant(space, 0.15, None)
    info = run_episode(env, lambda _: np.zeros(2, np.float32))[-1][-1]
    uniform = max(b for b in space.bit_choices if space.size_fraction(space.uniform_bits(b)) <= 0.15)
    assert Architecture.from_dict(info["architecture"]) == space.uniform_bits(uniform)


def test_the_wall_takes_bits_off_a_greedy_agent(space: SearchSpace) -> None:
    """Asking the highest bits on every layer under a tight budget still ends within it, the early layers high."""
    env = _quant(space, 0.12, None)
    steps = run_episode(env, lambda _: np.ones(2, np.float32))
    info = steps[-1][-1]
    assert info["size_bits"] <= space.size_budget(0.12)
    first_bits = steps[1][-1]["bits"]
    assert first_bits[0] > min(space.bit_choices)  # the first layer got more than the lowest bits


def test_finishing_architecture_is_what_the_last_step_ends_on(space: SearchSpace) -> None:
    for env in (_quant(space), _joint(space)):
        env.reset()
        rng = np.random.default_rng(0)
        while True:
            action = rng.uniform(-1, 1, 2).astype(np.float32)
            finishing = env.finishing_architecture(action)
            _, _, done, _, info = env.step(action)
            if done:
                assert finishing == Architecture.from_dict(info["architecture"])
                break
            assert finishing is None


def test_unreachable_budgets_and_bad_input_are_one_line_errors(space: SearchSpace) -> None:
    evaluate = evaluate_for(space)
    lowest_full = space.size_bits(space.lowest_bits(space.full()))
    with pytest.raises(BudgetError) as error:
        QuantizationEnv(space, evaluate, Budget(space.full_flops, size_bits=lowest_full - 1))
    assert "\n" not in str(error.value)
    with pytest.raises(BudgetError) as error:
        JointCompressionEnv(space, evaluate, Budget(space.flops_budget(0.5), bops=space.bops(space.lowest_bits()) - 1))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError):
        QuantizationEnv(space, evaluate, Budget(space.full_flops), reward="nope")
    env = _quant(space)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(2, np.float32))  # before reset
    env.reset()
    with pytest.raises(ValueError):
        env.step(np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        env.step(np.array([2.0, 0.0], np.float32))
