"""HAQ's mixed-precision search as Gymnasium environments: bits alone, and widths then bits in one episode.

`QuantizationEnv` (HAQ, Wang et al. 2019): one step per quantizable (conv or linear) layer, in execution order.
The activation bits are a *second action dimension*, not a second step: the action is ``Box(-1, 1, (2,))``,
``[weight, activation]``, so an episode lasts one step per layer, both bit widths of a layer are decided from
the same embedding, and the action wall clips them together (HAQ's reference code spends two steps per layer
instead, with a weight/activation flag in the state). The widths stay fixed (default: full).

`JointCompressionEnv`: one episode decides every channel group's width (AMC, as `ChannelPruningEnv`, with its
FLOPs wall), then every layer's bits (as `QuantizationEnv`). Both walls hold throughout: while widths are
chosen, a width is also clipped so that the later groups at their minimum width with every layer at its lowest
bits still meet the size and BOPs budgets; so when the bits start, the lowest bits fit, and the bit wall keeps
the episode within budget to its end.

Mapping of actions and the bit wall: `envs.bit_phase`. Nothing is random, and nothing is trained inside
`step`: the final architecture is scored by ``evaluate`` and its reward given on the last step (0 before).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from automl_prune.errors import BudgetError, ConfigError
from envs.bit_phase import BIT_FEATURES, BitPhase
from envs.pruning_env import FEATURES, REWARDS, ChannelPruningEnv
from search_spaces import Architecture, Budget, SearchSpace

__all__ = ["JOINT_FEATURES", "JointCompressionEnv", "QuantizationEnv"]

#: The joint environment's observation: the width features (zero while bits are decided), the bit features
#: (zero while widths are), and the phase (0 widths, 1 bits).
JOINT_FEATURES: tuple[str, ...] = (*(f"width/{f}" for f in FEATURES), *(f"bits/{f}" for f in BIT_FEATURES), "phase")

Evaluate = Callable[[Architecture], Mapping[str, Any]]


def _check_reward(reward: str) -> None:
    if reward not in REWARDS:
        raise ConfigError(f"unknown reward {reward!r}; must be one of {sorted(REWARDS)}")


def _checked_action(action: np.ndarray, done: bool) -> np.ndarray:
    """The action as two numbers in ``[-1, 1]``; refuses a step outside an episode or a malformed action."""
    if done:
        raise RuntimeError("the episode is over (or never started): call reset() before step()")
    value = np.asarray(action, dtype=np.float64).reshape(-1)
    if value.shape != (2,) or not np.all(np.isfinite(value)) or np.any(np.abs(value) > 1.0 + 1e-6):
        raise ValueError(f"the action must be two finite numbers in [-1, 1], but got {action!r}")
    return np.clip(value, -1.0, 1.0)


def _finish(space: SearchSpace, evaluate: Evaluate, reward_name: str, architecture: Architecture,
            info: dict[str, Any]) -> float:
    """Score the final architecture; fill ``info`` with its costs and metrics; return the reward."""
    metrics = dict(evaluate(architecture))
    costs = space.costs(architecture)
    metrics.setdefault("flops", costs.flops)
    reward = REWARDS[reward_name](metrics)
    info.update(
        flops=int(metrics["flops"]),
        params=int(metrics.get("params", costs.params)),
        size_bits=space.size_bits(architecture),
        bops=space.bops(architecture),
        accuracy=float(metrics["accuracy"]),
        reward_raw=reward,
        architecture=architecture.to_dict(),
    )
    return reward


class QuantizationEnv(gym.Env[np.ndarray, np.ndarray]):
    """Decide each conv/linear layer's weight and activation bits, one layer per step, within size and BOPs.

    Args:
        space: The search space; its bit decisions are in execution order.
        evaluate: Scores a finished architecture (metrics with at least ``"accuracy"``; ``"flops"`` is filled
            in when missing).
        budget: Its size and BOPs limits (``None``: no limit) are what the final architecture may not exceed;
            its width limit must allow ``widths``.
        widths: The widths kept throughout (default: every group at full width).
        reward: One of `envs.REWARDS`.

    Observation:
        ``Box(0, 1, (14,), float32)``: HAQ's embedding of the layer about to be decided (`BIT_FEATURES`).

    Action:
        ``Box(-1, 1, (2,), float32)``: ``[weight, activation]``; ``-1`` the layer's lowest bits, ``0`` the
        uniform bits of the budgets, ``+1`` its highest; clipped by the wall (`envs.bit_phase`).

    Info:
        Every step: ``layer`` and its ``bits`` ``(weight, activation)``. At the end also ``flops``, ``params``,
        ``size_bits``, ``bops``, ``accuracy``, ``reward_raw`` and ``architecture`` (plain data).
    """

    # gymnasium.Env declares `metadata` an instance variable, so a ClassVar here would not type-check.
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        space: SearchSpace,
        evaluate: Evaluate,
        budget: Budget,
        widths: Mapping[str, int] | None = None,
        reward: str = "accuracy",
    ) -> None:
        super().__init__()
        _check_reward(reward)
        budget.check(space, "both")  # what any widths need; these widths are checked next
        self.space = space
        self.evaluate = evaluate
        self.reward_name = reward
        self.budget = budget
        self.phase = BitPhase(space, budget)
        self.fixed_widths = space.complete(Architecture(dict(widths or {}))).widths
        space.validate(Architecture(self.fixed_widths))
        flops = space.flops(Architecture(self.fixed_widths))
        if flops > budget.flops:
            raise BudgetError(f"the widths kept need {flops:,} {budget.width_unit}, over the budget's width limit of "
                              f"{budget.flops:,}; raise the budget or narrow the widths")
        if not self.phase.fits_at_lowest(self.fixed_widths):
            raise BudgetError(
                "the size or BOPs budget cannot be met at these widths even with every layer at its lowest bits; "
                "raise the budget or narrow the widths"
            )
        self.observation_space = spaces.Box(0.0, 1.0, (len(BIT_FEATURES),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._step = 0
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at the first layer (the episode itself has no randomness)."""
        super().reset(seed=seed)
        self.phase.start(self.fixed_widths)
        self._step = 0
        self._done = False
        return self._observation(0, (1.0, 1.0)), {}

    def _observation(self, index: int, previous: tuple[float, float]) -> np.ndarray:
        return self.phase.features(index, previous).astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current layer's bits; evaluate the architecture after the last layer."""
        value = _checked_action(action, self._done)
        index = self._step
        pair = self.phase.bits_for(index, value)
        self.phase.decide(index, pair)
        info: dict[str, Any] = {"layer": self.phase.layers[index], "bits": pair}
        previous = self.phase.fraction(index, pair)
        if index + 1 < len(self.phase):
            self._step += 1
            return self._observation(self._step, previous), 0.0, False, False, info
        self._done = True
        reward = _finish(self.space, self.evaluate, self.reward_name, self.phase.architecture(), info)
        return self._observation(index, previous), reward, True, False, info

    def finishing_architecture(self, action: np.ndarray) -> Architecture | None:
        """The architecture `step` with ``action`` would end the episode on; ``None`` while layers remain.

        Changes nothing (see `ChannelPruningEnv.finishing_architecture`).
        """
        value = _checked_action(action, self._done)
        index = self._step
        if index + 1 < len(self.phase):
            return None
        return self.phase.architecture({self.phase.layers[index]: self.phase.bits_for(index, value)})


class _BoundedWidthEnv(ChannelPruningEnv):
    """`ChannelPruningEnv` whose upper wall also keeps the size and BOPs reachable at the lowest bits."""

    def __init__(self, space: SearchSpace, budget: Budget, phase: BitPhase, *, min_flops_fraction: float,
                 action_mapping: str) -> None:
        def no_score(architecture: Architecture) -> dict[str, Any]:  # the joint env scores after the bits
            return {"accuracy": 0.0, "flops": space.flops(architecture)}

        super().__init__(space, no_score, budget.without_bit_limits(), min_flops_fraction=min_flops_fraction,
                         action_mapping=action_mapping)
        self.phase = phase

    def _reachable(self, index: int, width: int) -> bool:
        if not super()._reachable(index, width):
            return False
        widths = dict(self.widths)
        widths[self.decisions[index].name] = width
        for d in self.decisions[index + 1:]:
            widths[d.name] = d.min_keep
        return self.phase.fits_at_lowest(widths)


class JointCompressionEnv(gym.Env[np.ndarray, np.ndarray]):
    """Widths for every channel group, then bits for every conv/linear layer, in one episode, within every budget.

    Args:
        space: The search space.
        evaluate: Scores a finished architecture, as for `QuantizationEnv`.
        budget: Every limit the final architecture may not exceed (width cost, and size and BOPs when set).
        reward: One of `envs.REWARDS`.
        min_flops_fraction, action_mapping: Of the width phase, as for `ChannelPruningEnv`.

    Observation:
        ``Box(0, 1, (26,), float32)``: `JOINT_FEATURES` (the current phase's features, the other's zero).

    Action:
        ``Box(-1, 1, (2,), float32)``: while widths are decided, the first value is `ChannelPruningEnv`'s action
        and the second is ignored; then ``[weight, activation]`` bits as in `QuantizationEnv`.

    Info:
        Width steps: ``group`` and ``width``; bit steps: ``layer`` and ``bits``; at the end as `QuantizationEnv`.
    """

    # gymnasium.Env declares `metadata` an instance variable, so a ClassVar here would not type-check.
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        space: SearchSpace,
        evaluate: Evaluate,
        budget: Budget,
        reward: str = "accuracy",
        *,
        min_flops_fraction: float = 0.0,
        action_mapping: str = "uniform",
    ) -> None:
        super().__init__()
        _check_reward(reward)
        budget.check(space, "both")
        self.space = space
        self.evaluate = evaluate
        self.reward_name = reward
        self.budget = budget
        self.phase = BitPhase(space, budget)
        self.widths_env = _BoundedWidthEnv(space, budget, self.phase, min_flops_fraction=min_flops_fraction,
                                           action_mapping=action_mapping)
        self.min_flops_fraction = self.widths_env.min_flops_fraction
        self.n_groups = len(space.decisions)
        self.observation_space = spaces.Box(0.0, 1.0, (len(JOINT_FEATURES),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._step = 0
        self._done = True

    def __len__(self) -> int:
        """Steps per episode: one per group, then one per quantizable layer."""
        return self.n_groups + len(self.phase)

    def _observation(self, width_obs: np.ndarray | None, bit_obs: np.ndarray | None) -> np.ndarray:
        width = np.zeros(len(FEATURES)) if width_obs is None else width_obs
        bits = np.zeros(len(BIT_FEATURES)) if bit_obs is None else bit_obs
        return np.concatenate([width, bits, [0.0 if bit_obs is None else 1.0]]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at the first group (the episode itself has no randomness)."""
        super().reset(seed=seed)
        obs, _ = self.widths_env.reset()
        self._step = 0
        self._done = False
        return self._observation(obs, None), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current group's width or layer's bits; evaluate after the last layer."""
        value = _checked_action(action, self._done)
        index = self._step
        self._step += 1
        if index < self.n_groups:
            obs, _, widths_done, _, info = self.widths_env.step(value[:1])
            info = {"group": info["group"], "width": info["width"]}
            if not widths_done:
                return self._observation(obs, None), 0.0, False, False, info
            self.phase.start(self.space.complete(Architecture(self.widths_env.widths)).widths)
            return self._observation(None, self.phase.features(0, (1.0, 1.0))), 0.0, False, False, info
        layer = index - self.n_groups
        pair = self.phase.bits_for(layer, value)
        self.phase.decide(layer, pair)
        info = {"layer": self.phase.layers[layer], "bits": pair}
        previous = self.phase.fraction(layer, pair)
        if layer + 1 < len(self.phase):
            return self._observation(None, self.phase.features(layer + 1, previous)), 0.0, False, False, info
        self._done = True
        reward = _finish(self.space, self.evaluate, self.reward_name, self.phase.architecture(), info)
        return self._observation(None, self.phase.features(layer, previous)), reward, True, False, info

    def finishing_architecture(self, action: np.ndarray) -> Architecture | None:
        """The architecture `step` with ``action`` would end the episode on; ``None`` while steps remain."""
        value = _checked_action(action, self._done)
        layer = self._step - self.n_groups
        if layer + 1 < len(self.phase):
            return None
        return self.phase.architecture({self.phase.layers[layer]: self.phase.bits_for(layer, value)})
