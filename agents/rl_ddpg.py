"""The DDPG searcher, AMC's recipe: its exploration noise, its replay buffer and its stable-baselines3 DDPG.

How AMC's DDPG (He et al. 2018; ``mit-han-lab/amc``) maps onto stable-baselines3:

============================  ===========================================================================
AMC                           here
============================  ===========================================================================
warm-up episodes, random      ``learning_starts = warmup_episodes * n_groups`` (uniform random actions)
truncated normal noise,       `DecayingTruncatedNormalNoise` sampled around the actor's action (a small
sigma 0.5 x 0.99/episode      override of DDPG's ``_sample_action``), decaying per episode after warm-up
discount 1                    ``gamma=1.0``
moving-average baseline       `EpisodeRewardReplayBuffer`: raw rewards stored, the current baseline
                              subtracted from every sampled batch (an old transition never keeps the
                              baseline of its own time)
final reward on every step    `EpisodeRewardReplayBuffer` (``replay_buffer_class``)
update per transition         ``train_freq=(1, "episode")``, ``gradient_steps=-1`` (one per step); with N
                              episodes per round ``train_freq=(n_groups, "step")`` over N environments:
                              after every round, one gradient step per transition
tau 0.01, batch 64            ``tau=0.01``, ``batch_size=64``
replay 100 x n_layers         ``buffer_size = replay_episodes * n_groups``
actor/critic 300-300          ``[64, 64]`` each: trains quickly on a CPU (``net_arch`` to change)
============================  ===========================================================================

Rounds, the learn loop, random streams, save and restore are `agents.rl_base`'s.

With ``start="one-shot"`` (`agents.start`) the first episode takes the actions that end on the sensitivity
profile's one-shot answer (`agents.rl_base`), and the warm-up explores around it: instead of uniform random
actions, each warm-up step samples the truncated normal (``noise_sigma``, not yet decayed) around the answer's
action for that step.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3 import DDPG
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from agents.base import SearchContext
from agents.rl_base import _BUFFER_FILE, _SaveBetweenEpisodes, _SB3Searcher

__all__ = ["DDPGSearcher", "DecayingTruncatedNormalNoise", "EpisodeRewardReplayBuffer"]


class DecayingTruncatedNormalNoise(ActionNoise):
    """AMC's exploration: a normal around the actor's action, truncated to ``[-1, 1]``, its sigma decaying.

    ``sigma`` is ``sigma0 * decay ** max(0, episode - warmup_episodes)``. The random stream is derived from
    ``(seed, episode)``, so a restored search continues it exactly. The algorithm tells the noise which
    episode it is in (`set_episode`, from DDPG's own episode counter, which is saved with the model);
    `reset` is therefore not a counter, since stable-baselines3 also calls it when `learn` starts.

    Args:
        sigma: Initial standard deviation in action units. AMC's 0.5 is on the keep-ratio scale, half as
            wide as ``[-1, 1]``; 0.5 here explores less, and learned faster in our measurements.
        decay: Factor per episode after warm-up, in ``(0, 1]``.
        warmup_episodes: Episodes before the decay starts.
        seed: Seed of the noise stream.
    """

    def __init__(self, sigma: float = 0.5, decay: float = 0.99, warmup_episodes: int = 0, seed: int = 0) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"`sigma >= 0` must hold, but got {sigma=}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"`0 < decay <= 1` must hold, but got {decay=}")
        self.sigma0 = float(sigma)
        self.decay = float(decay)
        self.warmup_episodes = int(warmup_episodes)
        self.seed = int(seed)
        self.episode = 0
        self._rng: np.random.Generator | None = None

    @property
    def sigma(self) -> float:
        """The standard deviation used in the current episode."""
        return self.sigma0 * self.decay ** max(0, self.episode - self.warmup_episodes)

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, self.episode])
        return self._rng

    def set_episode(self, episode: int) -> None:
        """Move to episode ``episode`` (0-based): its sigma and its own random stream."""
        if episode != self.episode:
            self.episode = int(episode)
            self._rng = None

    def reset(self, indices: Sequence[int] | None = None) -> None:
        """Nothing to reset at an episode's end: the episode number (`set_episode`) selects the stream."""

    def __call__(self) -> np.ndarray:
        """Zero-mean normal noise (for use as a plain additive `ActionNoise`)."""
        return self._generator().normal(0.0, self.sigma, size=(1,)).astype(np.float32)

    def sample_around(self, mean: np.ndarray) -> np.ndarray:
        """A truncated normal sample in ``[-1, 1]`` around ``mean`` (rejection sampling, then clipping)."""
        mean = np.asarray(mean, dtype=np.float64)
        if self.sigma == 0:
            return mean.astype(np.float32)
        rng = self._generator()
        out = np.empty_like(mean)
        for i, mu in np.ndenumerate(mean):
            value = rng.normal(mu, self.sigma)
            for _ in range(100):
                if -1.0 <= value <= 1.0:
                    break
                value = rng.normal(mu, self.sigma)
            out[i] = np.clip(value, -1.0, 1.0)
        return out.astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"sigma": self.sigma0, "decay": self.decay, "warmup_episodes": self.warmup_episodes,
                "seed": self.seed, "episode": self.episode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.sigma0 = float(state["sigma"])
        self.decay = float(state["decay"])
        self.warmup_episodes = int(state["warmup_episodes"])
        self.seed = int(state["seed"])
        self.episode = int(state["episode"])
        self._rng = None


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """AMC's replay buffer: every step carries its episode's final raw reward, shifted by the baseline when sampled.

    The environment rewards only the last step; AMC stores the final reward with every step of the
    episode, so each (layer embedding, keep ratio) pair is credited with the outcome at once instead of
    through a chain of bootstrapped values. Measured on a toy objective over vgg-small's six groups, DDPG
    with this buffer moved from random-search quality to near the optimum within 150 episodes, and without
    it got worse than random. Rewards are rewritten when the episode ends, before any training on them
    (``train_freq=(1, "episode")``).

    Variance reduction (AMC): ``baseline`` is an exponential moving average of the episodes' final rewards
    (the first episode's reward starts it). Rewards are stored raw and the *current* baseline is subtracted
    from every sampled batch, so all transitions of a batch are compared with the same baseline; shifting at
    store time instead would leave every old transition with the baseline of its own time (a raw 0.60
    stored as +0.30 and a later, better 0.70 as -0.04).

    Args:
        *args, **kwargs: As for `ReplayBuffer`.
        baseline_alpha: Weight of the newest episode reward in the baseline, in ``(0, 1]``.
    """

    def __init__(self, *args: Any, baseline_alpha: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < baseline_alpha <= 1.0:
            raise ValueError(f"`0 < baseline_alpha <= 1` must hold, but got {baseline_alpha=}")
        self.baseline_alpha = float(baseline_alpha)
        self.baseline: float | None = None
        self._open: list[list[int]] = [[] for _ in range(self.n_envs)]

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store one step; at an episode's end, copy its reward onto the episode's steps and update the baseline."""
        position = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        for env in range(self.n_envs):
            self._open[env].append(position)
            if done[env]:
                raw = float(reward[env])
                self.rewards[self._open[env], env] = raw
                self._open[env] = []
                if self.baseline is None:
                    self.baseline = raw
                else:
                    self.baseline += self.baseline_alpha * (raw - self.baseline)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        if self.baseline is None:
            return samples
        return samples._replace(rewards=samples.rewards - self.baseline)


class _AMCDDPG(DDPG):
    """DDPG exploring as AMC does: uniform actions during warm-up, then a truncated normal around the actor.

    With several environments stable-baselines3 would wrap the noise in a `VectorizedActionNoise` (one copy
    per environment); the truncated normal samples every environment's action itself, from one stream.

    ``start_actions`` (set by the searcher, not saved: one row per step of an episode) script the first
    environment's first episode, and the warm-up samples around them instead of uniformly.
    """

    start_actions: np.ndarray | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "start_actions"]

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:
        noise = self.action_noise
        result = super()._setup_learn(*args, **kwargs)
        if isinstance(noise, DecayingTruncatedNormalNoise):
            self.action_noise = noise
        return result

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        script = self.start_actions
        if script is None:
            if not isinstance(action_noise, DecayingTruncatedNormalNoise):
                return super()._sample_action(learning_starts, action_noise, n_envs)
            if self.num_timesteps < learning_starts:  # warm-up: uniform random, no noise on top
                return super()._sample_action(learning_starts, None, n_envs)
            action_noise.set_episode(self._episode_num)
            _, scaled = super()._sample_action(learning_starts, None, n_envs)
            noisy = action_noise.sample_around(scaled)
            return self.policy.unscale_action(noisy), noisy
        step = (self.num_timesteps // n_envs) % len(script)  # episodes run in lockstep: the step of each
        if not isinstance(action_noise, DecayingTruncatedNormalNoise):
            _, noisy = super()._sample_action(learning_starts, action_noise, n_envs)
        elif self.num_timesteps < learning_starts:  # warm-up: around the start
            action_noise.set_episode(self._episode_num)
            noisy = action_noise.sample_around(np.repeat(script[step][None, :], n_envs, axis=0))
        else:
            action_noise.set_episode(self._episode_num)
            _, scaled = super()._sample_action(learning_starts, None, n_envs)
            noisy = action_noise.sample_around(scaled)
        if self.num_timesteps < n_envs * len(script):  # the first round: its first episode is the start
            noisy = np.array(noisy, dtype=np.float32)
            noisy[0] = script[step]
        return self.policy.unscale_action(noisy), noisy


class DDPGSearcher(_SB3Searcher):
    """AMC: DDPG over per-group keep ratios, with warm-up, decaying truncated-normal noise and a baseline.

    Args:
        context: As for every `Searcher` (see `_SB3Searcher` for what ``search`` runs in).
        warmup_episodes: Episodes of uniform random actions before learning starts (AMC: 100 of 800),
            rounded up to whole rounds.
        noise_sigma, noise_decay: Exploration noise (action units) and its decay per episode after warm-up.
        baseline_alpha: Weight of the newest reward in the moving-average baseline (subtracted from sampled
            rewards at training time, see `EpisodeRewardReplayBuffer`).
        replay_episodes: Replay buffer size in episodes.
        batch_size, tau: DDPG minibatch size (kept as `minibatch_size`: `Searcher.batch_size` is the number
            of candidates proposed at once) and target-network update rate.
        **options: The options of every RL searcher (`_SB3Searcher`): ``reward``, ``min_flops_fraction``,
            ``episodes_per_round``, ``net_arch`` (of both the actor and the critic), ``learning_rate`` (1e-3),
            ``save_every``, ``device``, ``verbose``, and ``start`` (``"one-shot"``: the first episode and the
            warm-up's centre are the sensitivity profile's answer) with ``profile_cache`` and ``profile_key``.
    """

    name = "ddpg"
    algorithm = _AMCDDPG

    def __init__(
        self,
        context: SearchContext,
        *,
        warmup_episodes: int = 25,
        noise_sigma: float = 0.5,
        noise_decay: float = 0.99,
        baseline_alpha: float = 0.1,
        replay_episodes: int = 100,
        batch_size: int = 64,
        tau: float = 0.01,
        **options: Any,
    ) -> None:
        if warmup_episodes < 0:
            raise ValueError(f"`warmup_episodes >= 0` must hold, but got {warmup_episodes=}")
        if replay_episodes < 1 or batch_size < 1:
            raise ValueError(f"`replay_episodes >= 1` and `batch_size >= 1` must hold, but got "
                             f"{replay_episodes=}, {batch_size=}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"`0 < tau <= 1` must hold, but got {tau=}")
        if not 0.0 < baseline_alpha <= 1.0:
            raise ValueError(f"`0 < baseline_alpha <= 1` must hold, but got {baseline_alpha=}")
        self.baseline_alpha = float(baseline_alpha)
        super().__init__(context, **options)
        rounds = math.ceil(warmup_episodes / self.episodes_per_round)
        self.warmup_episodes = rounds * self.episodes_per_round  # no round mixes random and policy episodes
        self.replay_episodes = replay_episodes
        self.minibatch_size = batch_size
        self.tau = tau
        self.noise = DecayingTruncatedNormalNoise(noise_sigma, noise_decay, self.warmup_episodes, self.seed)

    @property
    def baseline(self) -> float | None:
        """The moving average of episode rewards that training subtracts (``None`` before any episode)."""
        buffer = getattr(self.model, "replay_buffer", None)
        return buffer.baseline if isinstance(buffer, EpisodeRewardReplayBuffer) else None

    def _learn_callback(self) -> BaseCallback | None:
        return _SaveBetweenEpisodes(self._between_rounds)

    def _build_model(self) -> BaseAlgorithm:
        # One round per collection, then one gradient step per transition (``gradient_steps=-1``); with one
        # environment that is AMC's update after every episode (stable-baselines3 allows episode units only then).
        n = self.episodes_per_round
        return _AMCDDPG(
            "MlpPolicy",
            self.env,
            learning_rate=self.learning_rate,
            buffer_size=self.replay_episodes * self.episode_steps,
            learning_starts=self.warmup_episodes * self.episode_steps,
            batch_size=self.minibatch_size,
            tau=self.tau,
            gamma=1.0,
            train_freq=(1, "episode") if n == 1 else (self.episode_steps, "step"),
            gradient_steps=-1,
            action_noise=self.noise,
            replay_buffer_class=EpisodeRewardReplayBuffer,
            replay_buffer_kwargs={"baseline_alpha": self.baseline_alpha},
            policy_kwargs={"net_arch": {"pi": list(self.net_arch), "qf": list(self.net_arch)}},
            tensorboard_log=self._tensorboard_log,
            seed=self.seed,
            device=self.device,
            verbose=self.verbose,
        )

    def _save_buffers(self, blobs: dict[str, bytes]) -> None:
        if isinstance(self.model, DDPG):
            blobs[_BUFFER_FILE] = pickle.dumps(self.model.replay_buffer, pickle.HIGHEST_PROTOCOL)

    def _extra_state(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict(), "baseline": self.baseline}

    def _load_extra_state(self, state: dict[str, Any], blobs: dict[str, bytes]) -> None:
        self.noise.load_state_dict(state["noise"])
        self.warmup_episodes = self.noise.warmup_episodes
        if isinstance(self.model, DDPG):
            self.model.load_replay_buffer(io.BytesIO(blobs[_BUFFER_FILE]))
            self.model.action_noise = self.noise
