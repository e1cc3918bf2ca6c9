"""Wrappers the searchers put around an environment; the base environments stay deterministic."""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym

__all__ = ["MovingAverageBaseline"]


class MovingAverageBaseline(gym.Wrapper):
    """Subtract an exponential moving average of past episode rewards from each episode's final reward.

    Variance reduction for an on-policy learner, which uses each reward once, right away: the reward is
    ``reward - baseline`` where the baseline averages earlier rewards. Only the reward of an episode's last
    step changes (earlier rewards are 0); the baseline is updated after it is used, and the first episode
    gets 0. Not for replayed experience: a stored shifted reward keeps the baseline of its own time, so later
    comparisons mix baselines (a raw 0.60 stored as +0.30 and a better 0.70 later as -0.04). DDPG therefore
    stores raw rewards and subtracts the current baseline when it samples a batch
    (`agents.rl_ddpg.EpisodeRewardReplayBuffer`), as AMC does.

    Args:
        env: The environment (rewards at episode ends only).
        alpha: Weight of the newest reward in the average, in ``(0, 1]``.
    """

    def __init__(self, env: gym.Env, alpha: float = 0.1) -> None:
        super().__init__(env)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"`0 < alpha <= 1` must hold, but got {alpha=}")
        self.alpha = float(alpha)
        self.baseline: float | None = None

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the environment; at an episode's end, shift the reward by the baseline and update it."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            raw = float(reward)
            if self.baseline is None:
                self.baseline = raw
            shaped = raw - self.baseline
            self.baseline += self.alpha * (raw - self.baseline)
            info = {**info, "baseline": self.baseline}
            return obs, shaped, terminated, truncated, info
        return obs, reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        """What `load_state_dict` needs to continue (plain data for JSON)."""
        return {"alpha": self.alpha, "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.alpha = float(state["alpha"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
