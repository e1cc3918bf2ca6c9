"""Reinforcement-learning searchers: stable-baselines3's DDPG (AMC's recipe) and PPO in `ChannelPruningEnv`.

One episode decides every channel group once and ends with one evaluation, so one episode is one entry of
the search history: the environment's ``evaluate`` is the searcher's own ``_evaluate``, which also enforces
the budget. A search of ``n`` evaluations learns for ``remaining x n_groups`` timesteps.

How AMC's DDPG (He et al. 2018; ``mit-han-lab/amc``) maps onto stable-baselines3:

============================  ===========================================================================
AMC                           here
============================  ===========================================================================
warm-up episodes, random      ``learning_starts = warmup_episodes * n_groups`` (uniform random actions)
truncated normal noise,       `DecayingTruncatedNormalNoise` sampled around the actor's action (a small
sigma 0.5 x 0.99/episode      override of DDPG's ``_sample_action``), decaying per episode after warm-up
discount 1                    ``gamma=1.0``
moving-average baseline       `envs.MovingAverageBaseline` wrapper (the base env stays deterministic)
final reward on every step    `EpisodeRewardReplayBuffer` (``replay_buffer_class``)
update per transition         ``train_freq=(1, "episode")``, ``gradient_steps=-1`` (one per step)
tau 0.01, batch 64            ``tau=0.01``, ``batch_size=64``
replay 100 x n_layers         ``buffer_size = replay_episodes * n_groups``
actor/critic 300-300          ``[64, 64]`` each: trains quickly on a CPU (``net_arch`` to change)
============================  ===========================================================================
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DDPG, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise

from agents.base import EvaluatorLike, Searcher, SearchHistory
from automl_prune.atomic import atomic_write_text
from envs import ChannelPruningEnv, MovingAverageBaseline
from search_spaces import Architecture, SearchSpace

__all__ = ["DDPGSearcher", "DecayingTruncatedNormalNoise", "EpisodeRewardReplayBuffer", "PPOSearcher"]

_STATE_FILE = "rl_state.json"
_MODEL_FILE = "model.zip"
_BUFFER_FILE = "replay_buffer.pkl"


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


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
    """A replay buffer that gives every transition of an episode that episode's final reward (AMC).

    The environment rewards only the last step; AMC stores the final reward with every step of the
    episode, so each (layer embedding, keep ratio) pair is credited with the outcome at once instead of
    through a chain of bootstrapped values. Measured on a toy objective over vgg-small's six groups, DDPG
    with this buffer moved from random-search quality to near the optimum within 150 episodes, and without
    it got worse than random. Rewards are rewritten when the episode ends, before any training on them
    (``train_freq=(1, "episode")``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: list[list[int]] = [[] for _ in range(self.n_envs)]

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Store one step; at an episode's end, copy its reward onto the episode's earlier steps."""
        position = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        for env in range(self.n_envs):
            self._open[env].append(position)
            if done[env]:
                self.rewards[self._open[env], env] = reward[env]
                self._open[env] = []


class _AMCDDPG(DDPG):
    """DDPG exploring as AMC does: uniform actions during warm-up, then a truncated normal around the actor."""

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(action_noise, DecayingTruncatedNormalNoise):
            return super()._sample_action(learning_starts, action_noise, n_envs)
        if self.num_timesteps < learning_starts:  # warm-up: uniform random, no noise on top
            return super()._sample_action(learning_starts, None, n_envs)
        action_noise.set_episode(self._episode_num)
        _, scaled = super()._sample_action(learning_starts, None, n_envs)
        noisy = action_noise.sample_around(scaled)
        return self.policy.unscale_action(noisy), noisy


class _StopWhenDone(BaseCallback):
    """Stop an on-policy rollout once the search has its evaluations (never mid-way past the last one)."""

    def __init__(self, searcher: Searcher) -> None:
        super().__init__()
        self.searcher = searcher

    def _on_step(self) -> bool:
        if self.searcher.remaining > 0:
            return True
        # A full rollout ends by itself (and is trained on); stop only a rollout that would start new episodes.
        return self.locals.get("n_steps", 0) + 1 >= self.locals.get("n_rollout_steps", 0)


class _SB3Searcher(Searcher):
    """What both RL searchers share: the environment, the learn loop, save and restore."""

    algorithm: ClassVar[type[BaseAlgorithm]]

    def __init__(
        self,
        space: SearchSpace,
        evaluator: EvaluatorLike,
        budget_flops: int,
        *,
        seed: int = 0,
        run_dir: str | Path | None = None,
        history: SearchHistory | None = None,
        reward: str = "accuracy",
        min_flops_fraction: float | None = None,
        net_arch: Sequence[int] = (64, 64),
        learning_rate: float = 1e-3,
        device: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(space, evaluator, budget_flops, seed=seed, run_dir=run_dir, history=history)
        if learning_rate <= 0:
            raise ValueError(f"`learning_rate > 0` must hold, but got {learning_rate=}")
        if not net_arch or any(int(n) < 1 for n in net_arch):
            raise ValueError(f"`net_arch` must be a non-empty list of positive layer sizes, but got {net_arch!r}")
        self.reward = reward
        if min_flops_fraction is None:
            min_flops_fraction = 0.95 if reward == "accuracy" else 0.0
        self.min_flops_fraction = float(min_flops_fraction)
        self.net_arch = [int(n) for n in net_arch]
        self.learning_rate = float(learning_rate)
        self.device = device or _default_device()
        self.verbose = verbose
        self.n_groups = len(space)
        self.model: BaseAlgorithm | None = None
        self.env = self._make_env()  # validates reward and min_flops_fraction early

    # environment ------------------------------------------------------------------------------------------
    def _make_env(self) -> gym.Env:
        return ChannelPruningEnv(
            self.space,
            self._evaluate_episode,
            self.budget_flops,
            reward=self.reward,
            min_flops_fraction=self.min_flops_fraction,
        )

    def _evaluate_episode(self, architecture: Architecture) -> dict[str, Any]:
        if self.remaining == 0:  # the learn loop is sized so this never happens
            raise RuntimeError(f"{self.name} started an episode past its {self.n_evaluations} evaluations")
        # The evaluator may reseed torch's global generator (on cache misses only), which the policy samples
        # from: fork it so that a search is reproducible whatever the evaluator's cache holds.
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return self._evaluate(architecture)

    @property
    def _tensorboard_log(self) -> str | None:
        return str(self.run_dir / "tensorboard") if self.run_dir is not None else None

    # learning ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _build_model(self) -> BaseAlgorithm:
        """A fresh stable-baselines3 model on ``self.env``."""

    def _run(self) -> None:
        if self.model is None:
            self.model = self._build_model()
        fresh = self.model.num_timesteps == 0
        self.model.learn(
            total_timesteps=self.remaining * self.n_groups,
            callback=self._learn_callback(),
            reset_num_timesteps=fresh,
            tb_log_name=self.name,
        )

    def _learn_callback(self) -> BaseCallback | None:
        return None

    # save / restore ---------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any], folder: Path) -> None:
        pass

    def save(self, path: str | Path) -> None:
        """Write the SB3 model (``model.zip``), DDPG's replay buffer and the noise/baseline state (JSON)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"searcher": self.name, "seed": self.seed, "has_model": self.model is not None}
        if self.model is not None:
            tmp = folder / "model.tmp.zip"
            self.model.save(tmp, exclude=["action_noise"])
            os.replace(tmp, folder / _MODEL_FILE)
        state.update(self._extra_state())
        _write_json_atomic(folder / _STATE_FILE, state)

    def restore(self, path: str | Path) -> None:
        """Load what `save` wrote so that the next `search` continues learning where it stopped."""
        folder = Path(path)
        state_file = folder / _STATE_FILE
        if not state_file.exists():
            raise FileNotFoundError(f"no {self.name} state to restore: {state_file} does not exist")
        state = json.loads(state_file.read_text())
        if state.get("searcher") != self.name:
            raise ValueError(
                f"{state_file} holds the state of searcher {state.get('searcher')!r}, not {self.name!r}"
            )
        self.seed = int(state["seed"])
        self.env = self._make_env()
        self.model = None
        if state.get("has_model"):
            self.model = self.algorithm.load(
                folder / _MODEL_FILE,
                env=self.env,
                device=self.device,
                tensorboard_log=self._tensorboard_log,
            )
        self._load_extra_state(state, folder)


class DDPGSearcher(_SB3Searcher):
    """AMC: DDPG over per-group keep ratios, with warm-up, decaying truncated-normal noise and a baseline.

    Args:
        space, evaluator, budget_flops, seed, run_dir, history: As for every `Searcher`.
        reward: ``"accuracy"`` or ``"acc_flops_log"`` (see `envs.REWARDS`).
        min_flops_fraction: The environment's lower wall: episodes end with at least this fraction of the
            budget where the rounding allows. Default: 0.95 with the ``"accuracy"`` reward (AMC's
            FLOPs-constrained search, where using the budget is the point), 0 (AMC's one-sided wall) with
            ``"acc_flops_log"``, which trades accuracy against FLOPs by itself.
        warmup_episodes: Episodes of uniform random actions before learning starts (AMC: 100 of 800).
        noise_sigma, noise_decay: Exploration noise (action units) and its decay per episode after warm-up.
        baseline_alpha: Weight of the newest reward in the moving-average baseline.
        replay_episodes: Replay buffer size in episodes.
        batch_size, tau: DDPG minibatch size and target-network update rate.
        net_arch: Hidden layers of both the actor and the critic.
        learning_rate: Of actor and critic.
        device: ``"cuda"`` when present, else ``"cpu"``, unless given.
        verbose: stable-baselines3 verbosity.
    """

    name = "ddpg"
    algorithm = _AMCDDPG

    def __init__(
        self,
        space: SearchSpace,
        evaluator: EvaluatorLike,
        budget_flops: int,
        *,
        seed: int = 0,
        run_dir: str | Path | None = None,
        history: SearchHistory | None = None,
        reward: str = "accuracy",
        min_flops_fraction: float | None = None,
        warmup_episodes: int = 25,
        noise_sigma: float = 0.5,
        noise_decay: float = 0.99,
        baseline_alpha: float = 0.1,
        replay_episodes: int = 100,
        batch_size: int = 64,
        tau: float = 0.01,
        net_arch: Sequence[int] = (64, 64),
        learning_rate: float = 1e-3,
        device: str | None = None,
        verbose: int = 0,
    ) -> None:
        if warmup_episodes < 0:
            raise ValueError(f"`warmup_episodes >= 0` must hold, but got {warmup_episodes=}")
        if replay_episodes < 1 or batch_size < 1:
            raise ValueError(f"`replay_episodes >= 1` and `batch_size >= 1` must hold, but got "
                             f"{replay_episodes=}, {batch_size=}")
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"`0 < tau <= 1` must hold, but got {tau=}")
        self.baseline_alpha = baseline_alpha
        super().__init__(
            space, evaluator, budget_flops, seed=seed, run_dir=run_dir, history=history, reward=reward,
            min_flops_fraction=min_flops_fraction, net_arch=net_arch, learning_rate=learning_rate,
            device=device, verbose=verbose,
        )
        self.warmup_episodes = warmup_episodes
        self.replay_episodes = replay_episodes
        self.batch_size = batch_size
        self.tau = tau
        self.noise = DecayingTruncatedNormalNoise(noise_sigma, noise_decay, warmup_episodes, seed)

    def _make_env(self) -> gym.Env:
        self.baseline_env = MovingAverageBaseline(super()._make_env(), alpha=self.baseline_alpha)
        return self.baseline_env

    def _build_model(self) -> BaseAlgorithm:
        return _AMCDDPG(
            "MlpPolicy",
            self.env,
            learning_rate=self.learning_rate,
            buffer_size=self.replay_episodes * self.n_groups,
            learning_starts=self.warmup_episodes * self.n_groups,
            batch_size=self.batch_size,
            tau=self.tau,
            gamma=1.0,
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=self.noise,
            replay_buffer_class=EpisodeRewardReplayBuffer,
            policy_kwargs={"net_arch": {"pi": list(self.net_arch), "qf": list(self.net_arch)}},
            tensorboard_log=self._tensorboard_log,
            seed=self.seed,
            device=self.device,
            verbose=self.verbose,
        )

    def save(self, path: str | Path) -> None:
        """Also writes the replay buffer (``replay_buffer.pkl``)."""
        super().save(path)
        if isinstance(self.model, DDPG):
            tmp = Path(path) / "replay_buffer.tmp.pkl"
            self.model.save_replay_buffer(tmp)
            os.replace(tmp, Path(path) / _BUFFER_FILE)

    def _extra_state(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict(), "baseline": self.baseline_env.state_dict()}

    def _load_extra_state(self, state: dict[str, Any], folder: Path) -> None:
        self.noise.load_state_dict(state["noise"])
        self.baseline_env.load_state_dict(state["baseline"])
        if isinstance(self.model, DDPG):
            self.model.load_replay_buffer(folder / _BUFFER_FILE)
            self.model.action_noise = self.noise


class PPOSearcher(_SB3Searcher):
    """PPO over per-group keep ratios: rollouts of whole episodes, undiscounted returns.

    Args:
        space, evaluator, budget_flops, seed, run_dir, history: As for every `Searcher`.
        reward, min_flops_fraction: As for `DDPGSearcher`.
        episodes_per_rollout: ``n_steps = episodes_per_rollout * n_groups``; minibatches hold half a rollout.
        n_epochs: PPO epochs per rollout.
        net_arch: Hidden layers of the policy and of the value function.
        learning_rate: Adam step size.
        device: ``"cuda"`` when present, else ``"cpu"``, unless given.
        verbose: stable-baselines3 verbosity.
    """

    name = "ppo"
    algorithm = PPO

    def __init__(
        self,
        space: SearchSpace,
        evaluator: EvaluatorLike,
        budget_flops: int,
        *,
        seed: int = 0,
        run_dir: str | Path | None = None,
        history: SearchHistory | None = None,
        reward: str = "accuracy",
        min_flops_fraction: float | None = None,
        episodes_per_rollout: int = 4,
        n_epochs: int = 10,
        net_arch: Sequence[int] = (64, 64),
        learning_rate: float = 3e-4,
        device: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(
            space, evaluator, budget_flops, seed=seed, run_dir=run_dir, history=history, reward=reward,
            min_flops_fraction=min_flops_fraction, net_arch=net_arch, learning_rate=learning_rate,
            device=device, verbose=verbose,
        )
        if episodes_per_rollout < 1 or episodes_per_rollout * self.n_groups < 2:
            raise ValueError(
                f"`episodes_per_rollout * n_groups >= 2` must hold, but got {episodes_per_rollout=} "
                f"with {self.n_groups} groups"
            )
        if n_epochs < 1:
            raise ValueError(f"`n_epochs >= 1` must hold, but got {n_epochs=}")
        self.n_steps = episodes_per_rollout * self.n_groups
        self.ppo_batch_size = self.n_steps // 2 if self.n_steps % 2 == 0 else self.n_steps
        self.n_epochs = n_epochs

    def _build_model(self) -> BaseAlgorithm:
        return PPO(
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

    def _learn_callback(self) -> BaseCallback | None:
        return _StopWhenDone(self)

    def _run(self) -> None:
        super()._run()
        # A rollout stopped by `_StopWhenDone` leaves SB3's last observation one step stale (the env has
        # already started its next episode); searches end on episode boundaries, so the next `learn` simply
        # starts from a reset.
        if self.model is not None:
            self.model._last_obs = None  # type: ignore[assignment]
