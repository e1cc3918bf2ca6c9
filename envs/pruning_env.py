"""`ChannelPruningEnv`: AMC's layer-by-layer channel pruning as a Gymnasium environment.

One episode walks the search space's channel groups in execution order, one step each. The agent sees a
normalized embedding of the current group (AMC, He et al. 2018, section 3.2) and answers with one number in
``[-1, 1]``, mapped to a keep ratio in ``[min_keep / size, 1]`` around the budget's uniform keep ratio: action
``0`` is the width one uniform ratio for every group would give (AMC's preserve-ratio prior), so an untrained
agent, or the middle of its exploration noise, already sits on the strongest simple solution and a short
search explores around it rather than across the whole box. AMC's action wall then clips the width so
that, even if every later group took its minimum, the final FLOPs could not exceed the budget: every episode
ends within budget by construction. When the last group is decided, ``evaluate`` scores the architecture and
the reward is computed from its metrics; every earlier reward is 0. Nothing is trained inside `step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from automl_prune.errors import ConfigError
from search_spaces import Architecture, Budget, SearchSpace, WidthDecision

__all__ = ["ACTION_MAPPINGS", "FEATURES", "REWARDS", "ChannelPruningEnv"]

#: How an action in ``[-1, 1]`` becomes a width: ``"uniform"`` (default) puts ``0`` at the budget's uniform
#: width; ``"absolute"`` maps ``[-1, 1]`` linearly onto ``[min_keep, size]`` (``0`` is the midpoint).
ACTION_MAPPINGS: tuple[str, ...] = ("uniform", "absolute")

#: Observation features, in order. The first eight are static (normalized by their maximum over groups);
#: the last three change during an episode and are fractions already.
FEATURES: tuple[str, ...] = (
    "index",
    "layer_type",
    "in_channels",
    "out_channels",
    "feature_map_size",
    "stride",
    "kernel",
    "flops_share",
    "flops_reduced",
    "flops_rest",
    "previous_action",
)


def _accuracy_reward(metrics: Mapping[str, Any]) -> float:
    return float(metrics["accuracy"])


def _acc_flops_log_reward(metrics: Mapping[str, Any]) -> float:
    # AMC's ``acc_flops_reward``: -error x log(FLOPs); accuracy is a fraction here, so error = 1 - accuracy.
    return float(-(1.0 - float(metrics["accuracy"])) * math.log(max(1.0, float(metrics["flops"]))))


#: Reward name -> function of the evaluation's metrics (given once per episode, at its end).
REWARDS: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "accuracy": _accuracy_reward,
    "acc_flops_log": _acc_flops_log_reward,
}

_LAYER_TYPES = {"conv": 0.0, "linear": 1.0}


class ChannelPruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """Decide how many channels each group keeps, one group per step, within a FLOPs budget.

    Args:
        space: The search space; its decisions are already in execution order.
        evaluate: Scores a finished architecture; returns a metrics dict with at least ``"accuracy"`` and
            ``"flops"`` (a searcher passes its own ``_evaluate`` so every episode lands in its history).
        budget: What the final architecture may not exceed: its width limit (``budget.flops``, at least
            ``space.min_flops``); a float model, so it has no size or BOPs limit (`Budget.check`).
        reward: ``"accuracy"`` (the validation accuracy) or ``"acc_flops_log"`` (AMC's
            ``-error * log(FLOPs)``).
        min_flops_fraction: An optional second, lower wall: each width is also raised so that, if every later
            group took its full width, the FLOPs would reach ``min_flops_fraction * budget.flops``. With it
            episodes end between that fraction and the budget wherever the widths' rounding allows (a best
            effort; the budget itself is never exceeded). ``0`` (default) is AMC's one-sided wall.
        action_mapping: One of `ACTION_MAPPINGS`: ``"uniform"`` (default) centres actions on the uniform
            width of the budget, ``"absolute"`` on the middle of each group's range.

    Observation:
        ``Box(0, 1, (11,), float32)``: the features named in `FEATURES` of the group about to be decided.
        After the last step it is the last group's embedding with the final FLOPs features.

    Action:
        ``Box(-1, 1, (1,), float32)``: ``-1`` keeps ``min_keep`` channels, ``0`` the group's uniform width
        (`uniform_widths`: the largest single keep ratio whose architecture fits the budget), ``+1`` all of
        them, linear on each side (then floored to a valid width and clipped by the walls). With every action
        ``0`` the episode ends on exactly the uniform architecture. ``action_mapping="absolute"`` is the plain
        linear map of ``[-1, 1]`` onto ``[min_keep, size]``.

    Info:
        Every step: ``group`` and the ``width`` it got. At the end also ``flops``, ``params``, ``accuracy``,
        ``reward_raw`` and ``architecture`` (plain data: ``{"widths": {...}}``).
    """

    # gymnasium.Env declares `metadata` an instance variable, so a ClassVar here would not type-check.
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        space: SearchSpace,
        evaluate: Callable[[Architecture], Mapping[str, Any]],
        budget: Budget,
        reward: str = "accuracy",
        *,
        min_flops_fraction: float = 0.0,
        action_mapping: str = "uniform",
    ) -> None:
        super().__init__()
        if len(space) == 0:
            raise ConfigError("the search space has no channel groups: there is nothing to prune")
        if reward not in REWARDS:
            raise ConfigError(f"unknown reward {reward!r}; must be one of {sorted(REWARDS)}")
        budget.check(space, "widths")
        if not 0.0 <= min_flops_fraction <= 1.0:
            raise ConfigError(f"`0 <= min_flops_fraction <= 1` must hold, but got {min_flops_fraction=}")
        if action_mapping not in ACTION_MAPPINGS:
            raise ConfigError(f"unknown action_mapping {action_mapping!r}; must be one of {list(ACTION_MAPPINGS)}")
        self.space = space
        self.evaluate = evaluate
        self.budget = budget
        self.reward_name = reward
        self._reward_fn = REWARDS[reward]
        self.min_flops_fraction = float(min_flops_fraction)
        self._floor_flops = self.min_flops_fraction * budget.flops
        self.decisions: list[WidthDecision] = list(space.decisions)
        self._choices = [d.choices() for d in self.decisions]
        self._full_flops = float(space.full_flops)
        self._static, self._rest_masks = self._embed_static()
        self.action_mapping = action_mapping
        self.uniform_widths = _uniform_widths(space, budget.flops)
        if action_mapping == "uniform":
            self._centre = [float(self.uniform_widths[d.name]) for d in self.decisions]
        else:
            self._centre = [(d.min_keep + d.size) / 2.0 for d in self.decisions]

        self.observation_space = spaces.Box(0.0, 1.0, (len(FEATURES),), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

        self._step = 0
        self._widths: dict[str, int] = {}
        self._done = True

    # embedding --------------------------------------------------------------------------------------------
    def _embed_static(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Static features per group (normalized by their max over groups) and each group's later layers."""
        graph = self.space.graph
        cost = self.space.cost_model
        layer_flops = cost.layer_flops({}).astype(np.float64)
        layer_index = {name: i for i, name in enumerate(cost.layer_names)}
        layer_order = np.array([graph.layers[name].order for name in cost.layer_names])
        rows, rest_masks = [], []
        for i, decision in enumerate(self.decisions):
            group = graph.group(decision.name)
            root = graph.layers.get(decision.name)
            if root is None:  # a group named after a layer the graph does not list: use its first member
                root = graph.layers[group.members[0].layer]
            touched = [layer_index[name] for name in group.member_layers() if name in layer_index]
            rows.append(
                [
                    float(i),
                    _LAYER_TYPES.get(root.kind, 0.0),
                    float(root.in_channels),
                    float(root.out_channels),
                    float(root.out_size),
                    float(root.stride) if root.kind == "conv" else 0.0,
                    float(root.kernel_elems),
                    float(layer_flops[touched].sum()) / self._full_flops,
                ]
            )
            rest_masks.append(layer_order > root.order)
        static = np.array(rows, dtype=np.float64)
        peak = static.max(axis=0)
        static = np.divide(static, peak, out=np.zeros_like(static), where=peak > 0)
        return static, rest_masks

    def _observation(self, index: int, previous_action: float) -> np.ndarray:
        """The embedding of group ``index`` given the widths chosen so far (undecided groups at full width)."""
        widths = self._current_widths()
        layer_flops = self.space.cost_model.layer_flops(widths).astype(np.float64)
        current = float(layer_flops.sum())
        reduced = (self._full_flops - current) / self._full_flops
        rest = float(layer_flops[self._rest_masks[index]].sum()) / self._full_flops
        dynamic = np.array([reduced, rest, previous_action], dtype=np.float64)
        obs = np.concatenate([self._static[index], dynamic])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    def _current_widths(self) -> dict[str, int]:
        return {d.name: self._widths.get(d.name, d.size) for d in self.decisions}

    # the action wall --------------------------------------------------------------------------------------
    def _flops_with(self, index: int, width: int, later: str) -> int:
        """FLOPs with earlier groups as chosen, group ``index`` at ``width``, later ones at min or full."""
        widths = dict(self._widths)
        widths[self.decisions[index].name] = width
        for d in self.decisions[index + 1 :]:
            widths[d.name] = d.min_keep if later == "min" else d.size
        return self.space.flops(widths)

    def _reachable(self, index: int, width: int) -> bool:
        """Whether the budget stays reachable with group ``index`` at ``width`` and every later one at its minimum.

        The upper action wall; a subclass with more budgets (`envs.bits_env.JointCompressionEnv`) adds its own.
        """
        return self._flops_with(index, width, "min") <= self.budget.flops

    def _largest_fitting(self, index: int) -> int:
        """The largest valid width of group ``index`` that keeps the budget reachable (bisection)."""
        choices = self._choices[index]
        lo, hi = 0, len(choices) - 1  # choices[0] == min_keep always fits (an invariant of the episode)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._reachable(index, choices[mid]):
                lo = mid
            else:
                hi = mid - 1
        return choices[lo]

    def _smallest_reaching_floor(self, index: int) -> int:
        """The smallest valid width of group ``index`` that keeps the lower wall reachable."""
        choices = self._choices[index]
        if self._floor_flops <= 0:
            return choices[0]
        lo, hi = 0, len(choices) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._flops_with(index, choices[mid], "full") >= self._floor_flops:
                hi = mid
            else:
                lo = mid + 1
        return choices[lo]

    def width_for(self, index: int, action: float) -> int:
        """The width group ``index`` gets for ``action`` in ``[-1, 1]`` given the widths chosen before it."""
        decision = self.decisions[index]
        centre = self._centre[index]
        action = float(action)
        if action <= 0.0:
            channels = centre + action * (centre - decision.min_keep)
        else:
            channels = centre + action * (decision.size - centre)
        width = decision.floor(channels)
        width = max(width, self._smallest_reaching_floor(index))
        return min(width, self._largest_fitting(index))

    # gymnasium API ----------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at the first group (the episode itself has no randomness)."""
        super().reset(seed=seed)
        self._step = 0
        self._widths = {}
        self._done = False
        return self._observation(0, 1.0), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current group's width; evaluate the architecture after the last group."""
        index = self._step
        decision = self.decisions[index]
        width = self.width_for(index, self._checked_action(action))
        self._widths[decision.name] = width
        info: dict[str, Any] = {"group": decision.name, "width": width}
        previous_action = width / decision.size

        if index + 1 < len(self.decisions):
            self._step += 1
            return self._observation(self._step, previous_action), 0.0, False, False, info

        self._done = True
        architecture = Architecture(dict(self._widths))
        metrics = dict(self.evaluate(architecture))
        costs = self.space.costs(architecture)
        metrics.setdefault("flops", costs.flops)
        reward = self._reward_fn(metrics)
        info.update(
            flops=int(metrics["flops"]),
            params=int(metrics.get("params", costs.params)),
            accuracy=float(metrics["accuracy"]),
            reward_raw=reward,
            architecture=architecture.to_dict(),
        )
        return self._observation(index, previous_action), reward, True, False, info

    def _checked_action(self, action: np.ndarray) -> float:
        """The action as one number in ``[-1, 1]``; refuses a step outside an episode or a malformed action."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() before step()")
        value = np.asarray(action, dtype=np.float64).reshape(-1)
        if value.shape != (1,) or not np.isfinite(value[0]) or not -1.0 - 1e-6 <= value[0] <= 1.0 + 1e-6:
            raise ValueError(f"the action must be one finite number in [-1, 1], but got {action!r}")
        return float(np.clip(value[0], -1.0, 1.0))

    def finishing_architecture(self, action: np.ndarray) -> Architecture | None:
        """The architecture `step` with ``action`` would end the episode on; ``None`` while groups remain after it.

        Changes nothing. It lets a caller running several episodes side by side (all of the same length) score
        their final architectures together before their last `step`s, which then take those scores from
        ``evaluate`` (see `agents.rl_base`).

        Raises:
            RuntimeError: Outside an episode, as `step`.
            ValueError: For a malformed action, as `step`.
        """
        value = self._checked_action(action)
        index = self._step
        if index + 1 < len(self.decisions):
            return None
        return Architecture({**self._widths, self.decisions[index].name: self.width_for(index, value)})

    @property
    def widths(self) -> dict[str, int]:
        """The widths chosen so far in this episode."""
        return dict(self._widths)


def _uniform_widths(space: SearchSpace, max_flops: int) -> dict[str, int]:
    """The largest single keep ratio whose widths (floored) fit ``max_flops``, as widths.

    The same rule as `agents.budget.uniform_architecture` (a test checks they agree); repeated here because
    environments sit below agents in the dependency order.
    """
    def widths(scale: float) -> dict[str, int]:
        return {d.name: d.floor(scale * d.size) for d in space.decisions}

    if space.flops(widths(1.0)) <= max_flops:
        return widths(1.0)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if space.flops(widths(mid)) <= max_flops:
            lo = mid
        else:
            hi = mid
    return widths(lo)
