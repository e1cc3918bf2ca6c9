"""The PPO searcher: stable-baselines3's PPO with a rollout that pauses between rounds and resumes exactly."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from agents.base import SearchContext
from agents.rl_base import _ROLLOUT_FILE, _SB3Searcher

__all__ = ["PPOSearcher"]


class _ResumablePPO(PPO):
    """PPO whose rollout can pause after any episode and continue later, even in another process.

    stable-baselines3 empties the rollout buffer at the start of every `collect_rollouts`, and a callback that
    stops a rollout drops the step it was called on. A search ends after its last evaluation, usually in the
    middle of a rollout, so a continued search would train on other rollouts than one that never stopped.
    Here the rollout pauses after storing an episode's last step (``_paused_rollout``, saved with the model;
    the partly filled buffer is saved beside it) and the next call goes on filling the same buffer. The loop
    is stable-baselines3 2.x's, less what this environment never needs (SDE, discrete actions, timeouts).
    """

    _paused_rollout: bool = False
    _episode_end_hook: Callable[[], bool] | None = None  # returns True to stop; set by the searcher
    start_actions: np.ndarray | None = None  # the first environment's first episode (one row per step); by the searcher

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode_end_hook", "start_actions"]

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        assert self._last_obs is not None, "No previous observation was provided"
        # The environments have Box observations and actions, so stable-baselines3's wider types narrow to these.
        assert isinstance(self._last_obs, np.ndarray) and self._last_episode_starts is not None
        assert isinstance(self.action_space, spaces.Box)
        self.policy.set_training_mode(False)
        if self._paused_rollout:
            n_steps = rollout_buffer.buffer_size if rollout_buffer.full else rollout_buffer.pos
        else:
            n_steps = 0
            rollout_buffer.reset()
        self._paused_rollout = False
        callback.on_rollout_start()
        while n_steps < n_rollout_steps:
            with torch.no_grad():
                actions, values, log_probs = self.policy(obs_as_tensor(self._last_obs, self.device))
            actions = actions.cpu().numpy()
            script = self.start_actions
            if script is not None and self.num_timesteps < env.num_envs * len(script):
                # The first round's first episode is the one-shot start: its actions, with their log-probability.
                actions[0] = script[(self.num_timesteps // env.num_envs) % len(script)]
                with torch.no_grad():
                    _, scripted, _ = self.policy.evaluate_actions(obs_as_tensor(self._last_obs, self.device),
                                                                  torch.as_tensor(actions, device=self.device))
                log_probs = log_probs.clone()
                log_probs[0] = scripted[0]
            clipped = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped)
            assert isinstance(new_obs, np.ndarray)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)
            self._last_obs = new_obs
            self._last_episode_starts = dones
            if dones.all() and self._episode_end_hook is not None:
                self._paused_rollout = True  # the state a save made by the hook continues from
                if self._episode_end_hook() and n_steps < n_rollout_steps:
                    return False  # stays paused; a full rollout is still trained on
                self._paused_rollout = False
        with torch.no_grad():
            values = self.policy.predict_values(obs_as_tensor(self._last_obs, self.device))
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=self._last_episode_starts)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True


class PPOSearcher(_SB3Searcher):
    """PPO over per-group keep ratios: rollouts of whole episodes, undiscounted returns.

    Args:
        context: As for every `Searcher` (see `_SB3Searcher` for what ``search`` runs in).
        episodes_per_rollout: Episodes per rollout (policy update), rounded up to whole rounds: each of the
            ``episodes_per_round`` environments runs ``n_steps = ceil(episodes_per_rollout /
            episodes_per_round) * n_groups`` steps; minibatches hold half a rollout.
        n_epochs: PPO epochs per rollout.
        learning_rate: Adam step size.
        **options: The other options of every RL searcher (`_SB3Searcher`): ``reward``, ``min_flops_fraction``,
            ``episodes_per_round``, ``net_arch`` (of the policy and of the value function), ``save_every``,
            ``device``, ``verbose``, and ``start`` (``"one-shot"``: the first episode is the sensitivity profile's
            answer) with ``profile_cache`` and ``profile_key``.
    """

    name = "ppo"
    algorithm = _ResumablePPO

    def __init__(self, context: SearchContext, *, episodes_per_rollout: int = 4, n_epochs: int = 10,
                 learning_rate: float = 3e-4, **options: Any) -> None:
        super().__init__(context, learning_rate=learning_rate, **options)
        if episodes_per_rollout < 1 or episodes_per_rollout * self.episode_steps < 2:
            raise ValueError(
                f"`episodes_per_rollout * episode_steps >= 2` must hold, but got {episodes_per_rollout=} "
                f"with {self.episode_steps} steps per episode"
            )
        if n_epochs < 1:
            raise ValueError(f"`n_epochs >= 1` must hold, but got {n_epochs=}")
        self.episodes_per_rollout = episodes_per_rollout
        self.n_epochs = n_epochs

    @property
    def n_steps(self) -> int:
        """Steps per environment in one rollout (a whole number of rounds)."""
        return math.ceil(self.episodes_per_rollout / self.episodes_per_round) * self.episode_steps

    @property
    def ppo_batch_size(self) -> int:
        """PPO's minibatch: half a rollout (all environments), or all of it when that is odd."""
        total = self.n_steps * self.episodes_per_round
        return total // 2 if total % 2 == 0 else total

    def _build_model(self) -> BaseAlgorithm:
        return _ResumablePPO(
            "MlpPolicy",
            self.env,
            learning_rate=self.learning_rate,
            n_steps=self.n_steps,
            batch_size=self.ppo_batch_size,
            n_epochs=self.n_epochs,
            gamma=1.0,
            gae_lambda=0.95,
            policy_kwargs={"net_arch": {"pi": list(self.net_arch), "vf": list(self.net_arch)}},
            tensorboard_log=self._tensorboard_log,
            seed=self.seed,
            device=self.device,
            verbose=self.verbose,
        )

    def _prepare_model(self) -> None:
        self.model._episode_end_hook = self._round_end  # type: ignore[union-attr]

    def _round_end(self) -> bool:
        """Between two rounds of a rollout: save and snapshot when due; True once this `learn` has its rounds."""
        if self._consumed >= self._plan_end:
            return True
        self._between_rounds()
        return False

    def _save_buffers(self, blobs: dict[str, bytes]) -> None:
        if isinstance(self.model, PPO):
            blobs[_ROLLOUT_FILE] = pickle.dumps(self.model.rollout_buffer, pickle.HIGHEST_PROTOCOL)

    def _load_extra_state(self, state: dict[str, Any], blobs: dict[str, bytes]) -> None:
        if isinstance(self.model, PPO) and _ROLLOUT_FILE in blobs:
            self.model.rollout_buffer = pickle.loads(blobs[_ROLLOUT_FILE])
