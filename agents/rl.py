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
moving-average baseline       `EpisodeRewardReplayBuffer`: raw rewards stored, the current baseline
                              subtracted from every sampled batch (an old transition never keeps the
                              baseline of its own time)
final reward on every step    `EpisodeRewardReplayBuffer` (``replay_buffer_class``)
update per transition         ``train_freq=(1, "episode")``, ``gradient_steps=-1`` (one per step)
tau 0.01, batch 64            ``tau=0.01``, ``batch_size=64``
replay 100 x n_layers         ``buffer_size = replay_episodes * n_groups``
actor/critic 300-300          ``[64, 64]`` each: trains quickly on a CPU (``net_arch`` to change)
============================  ===========================================================================

Save, restore and crash safety: the searcher keeps its own random streams (python's `random`, numpy's and
torch's global generators, which stable-baselines3 draws from, and the action space's) and swaps them in only
while it learns, so a user's generators are left as they were and a restored search continues the very same
streams: N evaluations, `save`, `restore` and N more give the architectures of 2N in one go. With a
``run_dir``, the whole state (model, replay or partial rollout buffer, random streams) is also written to
``run_dir/agent_state`` every ``save_every`` episodes, as one generation folder made current by an atomic
write of ``rl_state.json``; a kill -9 therefore loses at most the evaluation in flight.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import pickle
import random
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DDPG, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from agents.base import EvaluatorLike, Searcher, SearchHistory
from automl_prune.atomic import atomic_write, atomic_write_text
from envs import ChannelPruningEnv
from search_spaces import Architecture, SearchSpace

__all__ = ["DDPGSearcher", "DecayingTruncatedNormalNoise", "EpisodeRewardReplayBuffer", "PPOSearcher"]

_STATE_FILE = "rl_state.json"
_MODEL_FILE = "model.zip"
_BUFFER_FILE = "replay_buffer.pkl"
_ROLLOUT_FILE = "rollout_buffer.pkl"
_RNG_FILE = "random_state.pkl"


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def _global_random_state() -> dict[str, Any]:
    """The process-wide generators stable-baselines3 draws from (and seeds), plus cuDNN's flags it sets."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
    }


def _set_global_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = state["cudnn"]


@contextlib.contextmanager
def _preserved_global_random_state() -> Iterator[None]:
    """Whatever runs inside leaves the process-wide generators as it found them."""
    state = _global_random_state()
    try:
        yield
    finally:
        _set_global_random_state(state)


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

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_episode_end_hook"]

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        assert self._last_obs is not None, "No previous observation was provided"
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
            clipped = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped)
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


class _SaveBetweenEpisodes(BaseCallback):
    """Lets an off-policy searcher save after each episode has been stored and trained on."""

    def __init__(self, save: Callable[[], None]) -> None:
        super().__init__()
        self._save = save

    def _on_rollout_start(self) -> None:
        self._save()

    def _on_step(self) -> bool:
        return True


class _SB3Searcher(Searcher):
    """What both RL searchers share: the environment, the learn loop, its random streams, save and restore."""

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
        save_every: int = 1,
        device: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(space, evaluator, budget_flops, seed=seed, run_dir=run_dir, history=history)
        if learning_rate <= 0:
            raise ValueError(f"`learning_rate > 0` must hold, but got {learning_rate=}")
        if not net_arch or any(int(n) < 1 for n in net_arch):
            raise ValueError(f"`net_arch` must be a non-empty list of positive layer sizes, but got {net_arch!r}")
        if save_every < 0:
            raise ValueError(f"`save_every >= 0` (episodes; 0: only at the end) must hold, but got {save_every=}")
        self.reward = reward
        if min_flops_fraction is None:
            min_flops_fraction = 0.95 if reward == "accuracy" else 0.0
        self.min_flops_fraction = float(min_flops_fraction)
        self.net_arch = [int(n) for n in net_arch]
        self.learning_rate = float(learning_rate)
        self.save_every = int(save_every)
        self.device = device or _default_device()
        self.verbose = verbose
        self.n_groups = len(space)
        self.model: BaseAlgorithm | None = None
        self._random_state: dict[str, Any] | None = None  # our global streams while the user's are in place
        self._learning = False
        self._saved_at = -1  # history length at the last automatic save
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
        # The evaluator may reseed the global generators (on cache misses only), which the policy samples
        # from: keep them as they were so that a search is reproducible whatever the evaluator's cache holds.
        with _preserved_global_random_state():
            return self._evaluate(architecture)

    @property
    def _tensorboard_log(self) -> str | None:
        return str(self.run_dir / "tensorboard") if self.run_dir is not None else None

    @contextlib.contextmanager
    def _own_random_streams(self) -> Iterator[None]:
        """Swap this search's generators in (stable-baselines3 seeds and draws from the global ones), then out."""
        users = _global_random_state()
        try:
            if self._random_state is not None:
                _set_global_random_state(self._random_state)
            self._learning = True
            yield
        finally:
            self._learning = False
            self._random_state = _global_random_state()
            _set_global_random_state(users)

    # learning ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _build_model(self) -> BaseAlgorithm:
        """A fresh stable-baselines3 model on ``self.env``."""

    def _run(self) -> None:
        with self._own_random_streams():
            if self.model is None:
                self.model = self._build_model()
            fresh = self.model.num_timesteps == 0
            self.model.learn(
                total_timesteps=self.remaining * self.n_groups,
                callback=self._learn_callback(),
                reset_num_timesteps=fresh,
                tb_log_name=self.name,
            )
            # Searches end on episode boundaries, where the env has already been reset for the next episode:
            # the next `learn` (here or after a restore) starts from a reset, which gives the same observation.
            self.model._last_obs = None  # type: ignore[assignment]
            self._autosave(force=True)

    def _learn_callback(self) -> BaseCallback | None:
        return None

    def _autosave(self, force: bool = False) -> None:
        """Save to ``state_dir`` every ``save_every`` new evaluations (called between episodes)."""
        if self.state_dir is None or self.save_every == 0 or len(self.history) == self._saved_at:
            return
        if force or len(self.history) - max(self._saved_at, 0) >= self.save_every:
            self.save(self.state_dir)
            self._saved_at = len(self.history)

    # save / restore ---------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _save_buffers(self, folder: Path) -> None:
        pass

    def _load_extra_state(self, state: dict[str, Any], folder: Path) -> None:
        pass

    def save(self, path: str | Path) -> None:
        """Write the whole state under ``path``: a new generation folder, then ``rl_state.json`` naming it.

        The generation holds the SB3 model (``model.zip``), its replay or partial rollout buffer and the
        random streams; ``rl_state.json`` (searcher, seed, noise and baseline as plain data) is replaced
        atomically last, so a crash at any point leaves the previous complete state current.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        generation = folder / f"gen-{len(self.history):06d}-{uuid.uuid4().hex[:8]}"
        generation.mkdir()
        state: dict[str, Any] = {"searcher": self.name, "seed": self.seed, "has_model": self.model is not None,
                                 "generation": generation.name, "evaluations": len(self.history)}
        streams = _global_random_state() if self._learning else self._random_state
        action_space = None
        if self.model is not None:
            buffer = io.BytesIO()
            self.model.save(buffer, exclude=["action_noise"])
            atomic_write(generation / _MODEL_FILE, buffer.getvalue())
            self._save_buffers(generation)
            action_space = self.model.action_space.np_random.bit_generator.state
        atomic_write(generation / _RNG_FILE, pickle.dumps({"global": streams, "action_space": action_space}))
        state.update(self._extra_state())
        _write_json_atomic(folder / _STATE_FILE, state)
        for old in folder.glob("gen-*"):
            if old != generation:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, path: str | Path) -> None:
        """Load what `save` wrote so that the next `search` continues exactly where it stopped."""
        folder = Path(path)
        state_file = folder / _STATE_FILE
        if not state_file.exists():
            raise FileNotFoundError(f"no {self.name} state to restore: {state_file} does not exist")
        state = json.loads(state_file.read_text())
        if state.get("searcher") != self.name:
            raise ValueError(
                f"{state_file} holds the state of searcher {state.get('searcher')!r}, not {self.name!r}"
            )
        generation = folder / state["generation"] if "generation" in state else folder
        self.seed = int(state["seed"])
        self.env = self._make_env()
        self.model = None
        with _preserved_global_random_state():  # loading reseeds the global generators from `seed`
            if state.get("has_model"):
                self.model = self.algorithm.load(
                    generation / _MODEL_FILE,
                    env=self.env,
                    device=self.device,
                    tensorboard_log=self._tensorboard_log,
                )
                self.model._last_obs = None  # type: ignore[assignment]  # the fresh env needs its reset
            self._load_extra_state(state, generation)
        self._random_state = None
        rng_file = generation / _RNG_FILE
        if rng_file.exists():
            streams = pickle.loads(rng_file.read_bytes())
            self._random_state = streams["global"]
            if self.model is not None and streams["action_space"] is not None:
                self.model.action_space.np_random.bit_generator.state = streams["action_space"]
        self._saved_at = len(self.history)


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
        baseline_alpha: Weight of the newest reward in the moving-average baseline (subtracted from sampled
            rewards at training time, see `EpisodeRewardReplayBuffer`).
        replay_episodes: Replay buffer size in episodes.
        batch_size, tau: DDPG minibatch size and target-network update rate.
        net_arch: Hidden layers of both the actor and the critic.
        learning_rate: Of actor and critic.
        save_every: With a ``run_dir``, save the whole state to ``run_dir/agent_state`` every this many
            episodes (1: after every episode, so a kill -9 loses at most the evaluation in flight; 0: at the
            end of `search` only).
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
        save_every: int = 1,
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
        if not 0.0 < baseline_alpha <= 1.0:
            raise ValueError(f"`0 < baseline_alpha <= 1` must hold, but got {baseline_alpha=}")
        self.baseline_alpha = float(baseline_alpha)
        super().__init__(
            space, evaluator, budget_flops, seed=seed, run_dir=run_dir, history=history, reward=reward,
            min_flops_fraction=min_flops_fraction, net_arch=net_arch, learning_rate=learning_rate,
            save_every=save_every, device=device, verbose=verbose,
        )
        self.warmup_episodes = warmup_episodes
        self.replay_episodes = replay_episodes
        self.batch_size = batch_size
        self.tau = tau
        self.noise = DecayingTruncatedNormalNoise(noise_sigma, noise_decay, warmup_episodes, seed)

    @property
    def baseline(self) -> float | None:
        """The moving average of episode rewards that training subtracts (``None`` before any episode)."""
        buffer = getattr(self.model, "replay_buffer", None)
        return buffer.baseline if isinstance(buffer, EpisodeRewardReplayBuffer) else None

    def _learn_callback(self) -> BaseCallback | None:
        return _SaveBetweenEpisodes(self._autosave)

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
            replay_buffer_kwargs={"baseline_alpha": self.baseline_alpha},
            policy_kwargs={"net_arch": {"pi": list(self.net_arch), "qf": list(self.net_arch)}},
            tensorboard_log=self._tensorboard_log,
            seed=self.seed,
            device=self.device,
            verbose=self.verbose,
        )

    def _save_buffers(self, folder: Path) -> None:
        if isinstance(self.model, DDPG):
            atomic_write(folder / _BUFFER_FILE, pickle.dumps(self.model.replay_buffer, pickle.HIGHEST_PROTOCOL))

    def _extra_state(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict(), "baseline": self.baseline}

    def _load_extra_state(self, state: dict[str, Any], folder: Path) -> None:
        self.noise.load_state_dict(state["noise"])
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
        save_every: As for `DDPGSearcher`.
        device: ``"cuda"`` when present, else ``"cpu"``, unless given.
        verbose: stable-baselines3 verbosity.
    """

    name = "ppo"
    algorithm = _ResumablePPO

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
        save_every: int = 1,
        device: str | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(
            space, evaluator, budget_flops, seed=seed, run_dir=run_dir, history=history, reward=reward,
            min_flops_fraction=min_flops_fraction, net_arch=net_arch, learning_rate=learning_rate,
            save_every=save_every, device=device, verbose=verbose,
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

    def _run(self) -> None:
        self._attach_hook()
        super()._run()

    def _attach_hook(self) -> None:
        if self.model is None:
            with self._own_random_streams():  # building seeds the global generators
                self.model = self._build_model()
        self.model._episode_end_hook = self._episode_end  # type: ignore[attr-defined]

    def _episode_end(self) -> bool:
        """Between two episodes of a rollout: save when due; True once the search has its evaluations."""
        if self.remaining == 0:
            return True
        self._autosave()
        return False

    def _save_buffers(self, folder: Path) -> None:
        if isinstance(self.model, PPO):
            atomic_write(folder / _ROLLOUT_FILE, pickle.dumps(self.model.rollout_buffer, pickle.HIGHEST_PROTOCOL))

    def _load_extra_state(self, state: dict[str, Any], folder: Path) -> None:
        if isinstance(self.model, PPO) and (folder / _ROLLOUT_FILE).exists():
            self.model.rollout_buffer = pickle.loads((folder / _ROLLOUT_FILE).read_bytes())
