"""The RL searchers' shared machinery: environments, rounds, learn loop, random streams, save and restore.

The searchers (`agents.rl_ddpg.DDPGSearcher`, AMC's recipe, and `agents.rl_ppo.PPOSearcher`) run
stable-baselines3 in `ChannelPruningEnv`. With ``search="bits"`` they run in `envs.QuantizationEnv` (HAQ: one
step per conv/linear layer, weight and activation bits as the two values of the action) and with
``search="both"`` in `envs.JointCompressionEnv` (every group's width, then every layer's bits); below,
``n_groups`` then reads as the episode's steps (``episode_steps``).

One episode decides every channel group once and ends with one evaluation, so one episode is one entry of
the search history. Episodes run in rounds of ``episodes_per_round`` (by default the evaluator's
``parallelism``: 1 for a plain `Evaluator`, N for a pool of N workers) side by side in a vectorised
environment, in lockstep, since every episode lasts ``n_groups`` steps: before the round's last step the N
final architectures are scored together by ONE `Searcher._evaluate_many` call (which checks the budget and
writes the history), and each environment's last step then takes its reward from that batch. The policy
learns from whole rounds: DDPG trains after each round (one gradient step per transition, as AMC does per
episode), PPO's rollouts hold a whole number of rounds. With one episode per round this is exactly the
one-episode-at-a-time search.

Save, restore and crash safety: the searcher keeps its own random streams (python's `random`, numpy's and
torch's global generators, which stable-baselines3 draws from, and the action space's) and swaps them in only
while it learns, so a user's generators are left as they were and a restored search continues the very same
streams: N evaluations, `save`, `restore` and N more give the architectures of 2N in one go. With a
``run_dir``, the whole state (model, replay or partial rollout buffer, random streams) is also written to
``run_dir/agent_state`` every ``save_every`` episodes, as one generation folder made current by an atomic
write of ``rl_state.json``; a kill -9 therefore loses at most the round in flight.

Rounds and resume: the state records how many history entries the agent has taken in (``consumed``) and its
round size, which a restore keeps (so a resumed search repeats the uninterrupted one even when the
evaluator's parallelism changed). Entries recorded after the state was saved (a crash after a round was
evaluated but before the next save) are not evaluated again: the resumed agent re-runs that round, gets the
same architectures and takes their recorded scores. A crash while a round is being evaluated loses that
round's evaluations (they are redone on resume); nothing is duplicated. A search whose remaining evaluations
do not fill its last round evaluates the round's first episodes only, records them, and rolls the agent back
to the start of that round (an in-memory snapshot): a later continuation re-runs the round and takes the
recorded scores, so a search of ``n`` then ``m`` evaluations equals one of ``m`` for every ``n``.

Start (``start="one-shot"``, `agents.start`): the first episode of the first round (its first environment)
takes scripted actions, the ones that make the environment end exactly on the sensitivity profile's one-shot
answer (found step by step in a scratch environment: each action is the middle of the range of actions that
give the answer's width or bits there); the algorithm stores them as its own (PPO with their log-probability
under its policy). When the answer uses less of the width budget than the lower action wall asks for
(``min_flops_fraction``), the wall is lowered to the answer's share of the budget, for the whole search, so that
the answer is an episode the environment can end on.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import math
import pickle
import random
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from agents.base import SearchContext
from agents.start import StartingSearcher
from automl_prune.atomic import atomic_write, atomic_write_text
from envs import ChannelPruningEnv, JointCompressionEnv, QuantizationEnv
from search_spaces import Architecture

_STATE_FILE = "rl_state.json"
_MODEL_FILE = "model.zip"
_BUFFER_FILE = "replay_buffer.pkl"
_ROLLOUT_FILE = "rollout_buffer.pkl"
_RNG_FILE = "random_state.pkl"


def _default_device() -> str:
    """The run's device (`automl_prune.train.device.current_device`)."""
    from automl_prune.train.device import current_device

    return str(current_device())


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


class _SaveBetweenEpisodes(BaseCallback):
    """Lets an off-policy searcher act between rounds (save, snapshot), after the last round was trained on."""

    def __init__(self, between_rounds: Callable[[], None]) -> None:
        super().__init__()
        self._between_rounds = between_rounds

    def _on_rollout_start(self) -> None:
        self._between_rounds()

    def _on_step(self) -> bool:
        return True


class _RoundCut(Exception):
    """Raised from a round's last step when the search's evaluations ran out before the round's end."""


class _PreparedScore:
    """An environment's ``evaluate``: hands back the score its round's batch evaluation prepared for it."""

    def __init__(self) -> None:
        self._prepared: tuple[Architecture, dict[str, Any]] | None = None

    def prepare(self, architecture: Architecture, metrics: dict[str, Any]) -> None:
        """Set the score the next call (for ``architecture``) returns."""
        self._prepared = (architecture, metrics)

    def __call__(self, architecture: Architecture) -> dict[str, Any]:
        if self._prepared is None or self._prepared[0] != architecture:
            raise RuntimeError(f"no batch score was prepared for {architecture.widths}")
        metrics = self._prepared[1]
        self._prepared = None
        return metrics


class _RoundVecEnv(DummyVecEnv):
    """N pruning episodes in lockstep whose final architectures are scored together before their last step.

    Every episode lasts one step per channel group, and all are reset together, so they end on the same
    step. Before that step, ``score_round`` gets the N architectures the episodes are about to end on
    (`ChannelPruningEnv.finishing_architecture`) and returns their metrics, which each environment's last
    `step` then takes from its `_PreparedScore`; the rest is `DummyVecEnv`'s (automatic reset included).
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        scores: list[_PreparedScore],
        score_round: Callable[[list[Architecture]], list[dict[str, Any]]],
    ) -> None:
        super().__init__(env_fns)
        self._scores = scores
        self._score_round = score_round

    def step_wait(self) -> VecEnvStepReturn:
        finishing = [env.unwrapped.finishing_architecture(action)  # type: ignore[attr-defined]
                     for env, action in zip(self.envs, self.actions, strict=True)]
        ends = [architecture is not None for architecture in finishing]
        if any(ends):
            if not all(ends):
                raise RuntimeError("the episodes of a round must end on the same step")
            done = [a for a in finishing if a is not None]
            for score, architecture, metrics in zip(self._scores, done, self._score_round(done), strict=True):
                score.prepare(architecture, metrics)
        return super().step_wait()


_Snapshot = tuple[dict[str, Any], dict[str, bytes]]  # (plain state, file name -> bytes)


def _invert(value_of: Callable[[float], Any], target: Any) -> float | None:
    """The middle of the actions in ``[-1, 1]`` that ``value_of`` (nondecreasing) maps to ``target``, as a float32
    number; ``None`` when no action does."""
    low, high = -1.0, 1.0
    if value_of(low) > target or value_of(high) < target:
        return None
    left = low
    if value_of(low) < target:  # the smallest action reaching the target
        below, above = low, high
        for _ in range(40):
            middle = (below + above) / 2
            below, above = (below, middle) if value_of(middle) >= target else (middle, above)
        left = above
    right = high
    if value_of(high) > target:  # the largest action not past it
        below, above = left, high
        for _ in range(40):
            middle = (below + above) / 2
            below, above = (middle, above) if value_of(middle) <= target else (below, middle)
        right = below
    action = float(np.float32((left + right) / 2))
    return action if value_of(action) == target else None


def _bits_towards(phase: Any, index: int, pair: tuple[int, int] | None) -> np.ndarray | None:
    """The two action values that give layer ``index`` of a `envs.bit_phase.BitPhase` the bits ``pair``."""
    if pair is None:
        return None
    weight = _invert(lambda v: phase.bits_for(index, np.array([v, -1.0]))[0], pair[0])
    if weight is None:
        return None
    activation = _invert(lambda v: phase.bits_for(index, np.array([weight, v]))[1], pair[1])
    if activation is None or tuple(phase.bits_for(index, np.array([weight, activation]))) != tuple(pair):
        return None
    return np.array([weight, activation], dtype=np.float32)


def _action_towards(env: Any, step: int, target: Architecture) -> np.ndarray | None:
    """The action that gives step ``step`` of ``env``'s episode (at that step now) ``target``'s width or bits."""
    if isinstance(env, QuantizationEnv):
        return _bits_towards(env.phase, step, target.bits.get(env.phase.layers[step]))
    if isinstance(env, JointCompressionEnv):
        if step >= env.n_groups:
            layer = step - env.n_groups
            return _bits_towards(env.phase, layer, target.bits.get(env.phase.layers[layer]))
        widths_env = env.widths_env
        name = widths_env.decisions[step].name
        value = _invert(lambda v: widths_env.width_for(step, v), target.widths[name])
        return None if value is None else np.array([value, 0.0], dtype=np.float32)
    name = env.decisions[step].name
    value = _invert(lambda v: env.width_for(step, v), target.widths[name])
    return None if value is None else np.array([value], dtype=np.float32)


class _SB3Searcher(StartingSearcher):
    """What both RL searchers share: the environments, the learn loop, its random streams, save and restore.

    Args:
        context: As every `Searcher`: ``search="widths"`` (default) runs in `ChannelPruningEnv`, ``"bits"`` in
            `QuantizationEnv` at full width, ``"both"`` in `JointCompressionEnv`; the budget's size and BOPs
            limits are the environments' bit walls.
        reward: ``"accuracy"`` or ``"acc_flops_log"`` (see `envs.REWARDS`).
        min_flops_fraction: The environment's lower wall: episodes end with at least this fraction of the
            budget where the rounding allows. Default: 0.95 with the ``"accuracy"`` reward (AMC's
            FLOPs-constrained search, where using the budget is the point), 0 (AMC's one-sided wall) with
            ``"acc_flops_log"``, which trades accuracy against FLOPs by itself.
        episodes_per_round: Episodes run side by side and evaluated in one batch before each policy update;
            default: the evaluator's ``parallelism`` (`Searcher.batch_size`).
        net_arch: Hidden layers of the networks (DDPG: actor and critic; PPO: policy and value function).
        learning_rate: Of those networks.
        save_every: With a ``run_dir``, save the whole state to ``run_dir/agent_state`` every this many
            episodes, checked between rounds (1: after every round, so a kill -9 loses at most the round in
            flight; 0: at the end of `search` only).
        device: The run's (`automl_prune.train.device.current_device`), unless given.
        verbose: stable-baselines3 verbosity.
        start, profile_cache, profile_key: Where the search starts (`agents.start.StartingSearcher`): with
            ``"one-shot"`` the first episode ends on the sensitivity profile's one-shot answer.
    """

    algorithm: ClassVar[type[BaseAlgorithm]]

    def __init__(
        self,
        context: SearchContext,
        *,
        reward: str = "accuracy",
        min_flops_fraction: float | None = None,
        episodes_per_round: int | None = None,
        net_arch: Sequence[int] = (64, 64),
        learning_rate: float = 1e-3,
        save_every: int = 1,
        device: str | None = None,
        verbose: int = 0,
        start: str = "uniform",
        profile_cache: str | Path | None = None,
        profile_key: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(context, start=start, profile_cache=profile_cache, profile_key=profile_key)
        space = self.space
        if learning_rate <= 0:
            raise ValueError(f"`learning_rate > 0` must hold, but got {learning_rate=}")
        if not net_arch or any(int(n) < 1 for n in net_arch):
            raise ValueError(f"`net_arch` must be a non-empty list of positive layer sizes, but got {net_arch!r}")
        if save_every < 0:
            raise ValueError(f"`save_every >= 0` (episodes; 0: only at the end) must hold, but got {save_every=}")
        if episodes_per_round is not None and episodes_per_round < 1:
            raise ValueError(f"`episodes_per_round >= 1` must hold, but got {episodes_per_round=}")
        self.reward = reward
        if min_flops_fraction is None:
            min_flops_fraction = 0.95 if reward == "accuracy" else 0.0
        self.min_flops_fraction = float(min_flops_fraction)
        self.episodes_per_round = int(episodes_per_round or self.batch_size)
        self.net_arch = [int(n) for n in net_arch]
        self.learning_rate = float(learning_rate)
        self.save_every = int(save_every)
        self.device = device or _default_device()
        self.verbose = verbose
        self.n_groups = len(space)
        self.episode_steps = {"widths": len(space), "bits": len(space.bit_decisions),
                              "both": len(space) + len(space.bit_decisions)}[self.search_mode]
        """Steps per episode: one per channel group (widths), per quantizable layer (bits), or both."""
        self.model: BaseAlgorithm | None = None
        self._random_state: dict[str, Any] | None = None  # our global streams while the user's are in place
        self._learning = False
        self._consumed = len(self.history)  # history entries the agent has taken in (earlier ones are not its own)
        self._saved_at = -1  # `_consumed` at the last automatic save
        self._plan_end = 0  # `_consumed` at which the current `learn` ends
        self._cut_snapshot: tuple[int, _Snapshot] | None = None  # (consumed, state) at a round that may be cut
        self._start_actions: np.ndarray | None = None  # the first episode's scripted actions (one-shot start)
        self.env = self._make_env()  # validates reward and min_flops_fraction early

    # environment ------------------------------------------------------------------------------------------
    def _make_env(self) -> _RoundVecEnv:
        """``episodes_per_round`` environments (each in a `Monitor`, as stable-baselines3 would wrap it): channel
        pruning (``search="widths"``), quantization at full width (``"bits"``) or joint (``"both"``)."""
        scores = [_PreparedScore() for _ in range(self.episodes_per_round)]

        def factory(score: _PreparedScore) -> Callable[[], gym.Env]:
            return lambda: Monitor(self._single_env(score))

        return _RoundVecEnv([factory(score) for score in scores], scores, self._score_round)

    def _single_env(self, evaluate: Callable[[Architecture], Mapping[str, Any]]) -> gym.Env:
        """One environment of this search (channel pruning, quantization or joint) scoring with ``evaluate``."""
        if self.search_mode == "bits":
            return QuantizationEnv(self.space, evaluate, self.budget, reward=self.reward)
        if self.search_mode == "both":
            return JointCompressionEnv(self.space, evaluate, self.budget, reward=self.reward,
                                       min_flops_fraction=self.min_flops_fraction)
        return ChannelPruningEnv(self.space, evaluate, self.budget, reward=self.reward,
                                 min_flops_fraction=self.min_flops_fraction)

    # the one-shot start -------------------------------------------------------------------------------------
    def _use_start(self, architecture: Architecture) -> None:
        """Script the first episode so that it ends on ``architecture`` (lowering the lower wall if it must)."""
        if self.searches_widths and self.min_flops_fraction > 0:
            share = self.space.flops(architecture) / self.budget.flops
            if share < self.min_flops_fraction:
                self.min_flops_fraction = share * (1 - 1e-9)  # the wall may not ask for more than the start uses
                self.env = self._make_env()
                if self.model is not None:
                    self.model.set_env(self.env)
        self._start_actions = self._script(architecture)
        if self._start_actions is None:  # cannot happen: every step of a start within budget is reachable
            warnings.warn(f"{self.name}: no actions of the environment end on the one-shot start "
                          f"{architecture.to_dict()}; the first episode is the policy's own", RuntimeWarning,
                          stacklevel=2)

    def _script(self, target: Architecture) -> np.ndarray | None:
        """The actions (one row per step) of an episode that ends exactly on ``target``; ``None`` if none does."""

        def no_score(architecture: Architecture) -> dict[str, Any]:
            return {"accuracy": 0.0, "flops": self.space.flops(architecture)}

        env: Any = self._single_env(no_score)
        env.reset()
        actions: list[np.ndarray] = []
        for step in range(self.episode_steps):
            action = _action_towards(env, step, target)
            if action is None:
                return None
            actions.append(action)
            if step + 1 < self.episode_steps:
                env.step(action)
        final = env.finishing_architecture(actions[-1])
        if final is None or self.space.complete(final) != self.space.complete(target):
            return None
        return np.array(actions, dtype=np.float32)

    def _score_round(self, architectures: list[Architecture]) -> list[dict[str, Any]]:
        """The metrics of one round's final architectures: recorded ones taken back, new ones in one batch.

        Entries already in the history beyond what the agent has taken in (a round evaluated before a crash,
        or the first episodes of a cut round) are this very round replayed: their architectures match and
        their scores are reused. New architectures are scored by one `_evaluate_many` call, as many as the
        search has evaluations left; when that is fewer than the round, `_RoundCut` is raised after
        recording them.
        """
        results: list[dict[str, Any]] = []
        for architecture in architectures:
            if self._consumed >= len(self.history):
                break
            entry = self.history.entries[self._consumed]
            if entry.architecture != architecture:
                warnings.warn(
                    f"{self.name}: history entry {self._consumed} ({entry.architecture.widths}) is not the "
                    f"architecture the restored agent proposes there ({architecture.widths}); the "
                    f"{len(self.history) - self._consumed} entries from it on are kept as they are and not "
                    "learned from",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._consumed = len(self.history)
                break
            results.append(dict(entry.metrics))
            self._consumed += 1
        new = architectures[len(results):][: self.remaining]
        if new:
            # The evaluator may reseed the global generators (on cache misses only), which the policy samples
            # from: keep them as they were so that a search is reproducible whatever the evaluator's cache holds.
            with _preserved_global_random_state():
                results.extend(self._evaluate_many(list(new)))
            self._consumed += len(new)
        if len(results) < len(architectures):
            raise _RoundCut
        return results

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

    def _prepare_model(self) -> None:
        """Called before every `learn` with the model built (PPO attaches its round hook)."""

    def _run(self) -> None:
        rounds = math.ceil(max(0, self.n_evaluations - self._consumed) / self.episodes_per_round)
        cut = False
        self._cut_snapshot = None
        with self._own_random_streams():
            if self.model is None:
                self.model = self._build_model()
            self.model.start_actions = self._start_actions  # type: ignore[attr-defined]
            self._prepare_model()
            self._plan_end = self._consumed + rounds * self.episodes_per_round
            self._between_rounds()
            try:
                self.model.learn(
                    total_timesteps=rounds * self.episodes_per_round * self.episode_steps,
                    callback=self._learn_callback(),
                    reset_num_timesteps=self.model.num_timesteps == 0,
                    tb_log_name=self.name,
                )
            except _RoundCut:
                cut = True
            # Searches end on round boundaries, where the envs have already been reset for the next round: the
            # next `learn` (here or after a restore) starts from a reset, which gives the same observations.
            self.model._last_obs = None
        if cut:
            if self._cut_snapshot is None:  # cannot happen: a round that may be cut is snapshotted first
                raise RuntimeError(f"{self.name}: a round was cut without a snapshot to roll back to")
            self._load_snapshot(*self._cut_snapshot[1])
        self._cut_snapshot = None
        self._autosave(force=True)

    def _between_rounds(self) -> None:
        """At a round boundary: save when due, and snapshot the agent when the next round may be cut short."""
        self._autosave()
        if self.remaining < self.episodes_per_round and (
            self._cut_snapshot is None or self._cut_snapshot[0] != self._consumed
        ):
            self._cut_snapshot = (self._consumed, self._snapshot())

    def _learn_callback(self) -> BaseCallback | None:
        return None

    def _autosave(self, force: bool = False) -> None:
        """Save to ``state_dir`` every ``save_every`` episodes taken in (called between rounds), or when forced."""
        if self.state_dir is None or self._consumed == self._saved_at or (self.save_every == 0 and not force):
            return
        if force or self._consumed - max(self._saved_at, 0) >= self.save_every:
            self.save(self.state_dir)
            self._saved_at = self._consumed

    # save / restore ---------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _save_buffers(self, blobs: dict[str, bytes]) -> None:
        pass

    def _load_extra_state(self, state: dict[str, Any], blobs: dict[str, bytes]) -> None:
        pass

    def _snapshot(self) -> _Snapshot:
        """The whole state: plain data and the files' bytes (model, replay or partial rollout buffer, streams)."""
        state: dict[str, Any] = {"searcher": self.name, "search": self.search_mode, "seed": self.seed,
                                 "has_model": self.model is not None,
                                 "evaluations": len(self.history), "consumed": self._consumed,
                                 "episodes_per_round": self.episodes_per_round}
        blobs: dict[str, bytes] = {}
        streams = _global_random_state() if self._learning else self._random_state
        action_space = None
        if self.model is not None:
            buffer = io.BytesIO()
            self.model.save(buffer, exclude=["action_noise"])
            blobs[_MODEL_FILE] = buffer.getvalue()
            self._save_buffers(blobs)
            action_space = self.model.action_space.np_random.bit_generator.state
        blobs[_RNG_FILE] = pickle.dumps({"global": streams, "action_space": action_space})
        state.update(self._extra_state())
        return state, blobs

    def _load_snapshot(self, state: dict[str, Any], blobs: dict[str, bytes]) -> None:
        """Become what `_snapshot` returned (new environments and model; the history is left as it is)."""
        self.seed = int(state["seed"])
        self.episodes_per_round = int(state.get("episodes_per_round", 1))
        self.env = self._make_env()
        self.model = None
        with _preserved_global_random_state():  # loading reseeds the global generators from `seed`
            if state.get("has_model"):
                self.model = self.algorithm.load(
                    io.BytesIO(blobs[_MODEL_FILE]),
                    env=self.env,
                    device=self.device,
                    tensorboard_log=self._tensorboard_log,
                )
                self.model._last_obs = None  # the fresh env needs its reset
            self._load_extra_state(state, blobs)
        self._random_state = None
        if _RNG_FILE in blobs:
            streams = pickle.loads(blobs[_RNG_FILE])
            self._random_state = streams["global"]
            if self.model is not None and streams["action_space"] is not None:
                self.model.action_space.np_random.bit_generator.state = streams["action_space"]
        self._consumed = min(int(state.get("consumed", state["evaluations"])), len(self.history))

    def save(self, path: str | Path) -> None:
        """Write the whole state under ``path``: a new generation folder, then ``rl_state.json`` naming it.

        The generation holds the SB3 model (``model.zip``), its replay or partial rollout buffer and the
        random streams; ``rl_state.json`` (searcher, seed, round size, entries taken in, noise and baseline as
        plain data) is replaced atomically last, so a crash at any point leaves the previous complete state
        current.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state, blobs = self._snapshot()
        generation = folder / f"gen-{len(self.history):06d}-{uuid.uuid4().hex[:8]}"
        generation.mkdir()
        for name, data in blobs.items():
            atomic_write(generation / name, data)
        self._save_start(folder)
        state["generation"] = generation.name
        _write_json_atomic(folder / _STATE_FILE, state)
        for old in folder.glob("gen-*"):
            if old != generation:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, path: str | Path) -> None:
        """Load what `save` wrote so that the next `search` continues exactly where it stopped.

        The round size is the saved one (whatever the evaluator's parallelism is now), so that the continued
        search is the one that was interrupted.
        """
        folder = Path(path)
        state_file = folder / _STATE_FILE
        if not state_file.exists():
            raise FileNotFoundError(f"no {self.name} state to restore: {state_file} does not exist")
        state = json.loads(state_file.read_text())
        if state.get("searcher") != self.name:
            raise ValueError(
                f"{state_file} holds the state of searcher {state.get('searcher')!r}, not {self.name!r}"
            )
        if state.get("search", "widths") != self.search_mode:
            raise ValueError(
                f"{state_file} holds a search of {state.get('search', 'widths')!r}, not {self.search_mode!r}; "
                "resume with the same search"
            )
        generation = folder / state["generation"] if "generation" in state else folder
        names = (_MODEL_FILE, _BUFFER_FILE, _ROLLOUT_FILE, _RNG_FILE)
        blobs = {name: (generation / name).read_bytes() for name in names if (generation / name).exists()}
        self._restore_start(folder)
        self._load_snapshot(state, blobs)
        self._saved_at = self._consumed
