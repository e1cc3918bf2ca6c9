"""Optuna searchers: TPE for the best accuracy under the budget, and a multi-objective accuracy/FLOPs front.

The search starts from the uniform architecture of the budget (one keep ratio for every group): it is
enqueued as the first trial of a new study, so the sampler always knows the strongest simple solution, and
with the default ``prior="uniform"`` each trial suggests one factor per channel group on that group's uniform
keep ratio (``trial.suggest_float(group, 1 / spread, spread, log=True)``; the ratio is the uniform one times
the factor, clipped to ``[min_keep / size, 1]``), so the random start-up and TPE's model both live around
uniform rather than across the whole box. ``prior="box"`` suggests the keep ratio itself
(``suggest_float(group, min_keep / size, 1.0)``); ``integer_widths=True`` suggests widths (with the uniform
prior, within ``[uniform / spread, uniform x spread]``). A suggestion over the FLOPs budget is projected onto it
(`agents.budget.project_to_budget` with ``fill=True``), and the widths actually evaluated are stored as the
trial's ``widths`` user attribute, so nothing this module returns is ever over budget. TPE then models the
raw suggestions against the accuracy of their projections ("constrained sampling").

With ``start="one-shot"`` the sensitivity profile's one-shot answer (`agents.start`) takes the uniform
architecture's place: it is the first trial, and the centre of the ``prior="uniform"`` factors.

Bits (``search="bits"`` or ``"both"``): every conv/linear layer with more than one allowed bit width gets two
integer parameters, ``w_bits:<layer>`` and ``a_bits:<layer>``, each an index into the layer's allowed bits
(ascending, so TPE sees their order); with ``"bits"`` no width is suggested (every group keeps its full
width). The first trial is the uniform architecture with the highest single bit width that fits
(`agents.bit_budget.uniform_bits_architecture`). A suggestion over the size or BOPs budget is projected onto
them by taking bits off the costliest layers (`agents.bit_budget.project_bits`, HAQ's rule) and the bits
evaluated are stored as the trial's ``bits`` user attribute. The multi-objective searcher's second objective
is the BOPs when a BOPs budget is given, else the size when a size budget is, else the FLOPs.

Storage and resume
------------------
With a ``run_dir`` the study lives in ``RUN_DIR/optuna.db`` (SQLite through ``sqlite:///...``), under a study
name fixed per run, opened with ``load_if_exists=True``. SQLite was chosen over a `JournalStorage` file
because every write is an ACID transaction: after a ``kill -9`` the database is exactly the last committed
state (SQLite's rollback journal undoes a half-written transaction on the next open), whereas a journal file
can end in a torn line that the reader must skip. SQLite is also what ``optuna-dashboard`` opens directly,
and the same code path takes a server URL (``storage="postgresql://..."``) when many machines share a study.
Without a ``run_dir`` or ``storage`` the study is in memory (`save` then copies it to a SQLite file).

To watch a run live::

    pip install optuna-dashboard
    optuna-dashboard sqlite:///RUN_DIR/optuna.db      # then open http://127.0.0.1:8080

Running the same search again (same ``run_dir``) continues it:

- Finished trials are kept. The sampler (with its random state) is pickled by `save` and restored, so a
  saved and restored search proposes exactly what an uninterrupted one would; after a kill -9 (no save) it is
  re-created from ``seed`` and the number of trials already stored (re-using the bare seed would replay the
  first random start-up suggestions as duplicates).
- Trials are asked in batches of the evaluator's parallelism and scored side by side.
- A trial left RUNNING by a kill is retried, not lost: it is marked FAIL and its parameters are enqueued
  (``study.enqueue_trial``, with a ``retry_of`` user attribute so a second crash never enqueues it twice).
- ``history.jsonl`` and the study agree: each evaluation is appended (fsynced) to the history before
  ``study.tell``, and the trial records ``history_index``. If a crash fell between the append and the tell,
  the RUNNING trial whose ``widths`` match that unclaimed history entry is completed with the recorded
  metrics instead of being evaluated (and appended) a second time. So after any crash the number of COMPLETE
  trials equals the number of this searcher's history entries.

Only RUNNING trials this run owns are touched: with the default storage that is every one of them; with a
shared ``storage`` URL, those whose ``worker`` attribute (host and run directory) is this run's, so trials of
live workers on other machines are left alone.
"""

from __future__ import annotations

import json
import math
import pickle
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from agents.base import HistoryEntry, SearchContext, SearchHistory, SearchResult
from agents.bit_budget import project_bits, uniform_bits_architecture
from agents.budget import around_uniform, check_prior, project_to_budget, uniform_architecture
from agents.start import StartingSearcher
from automl_prune.atomic import atomic_write, atomic_write_text
from search_spaces import Architecture, WidthDecision

__all__ = ["OptunaSearcher"]

_STATE_FILE = "optuna_searcher.json"
_W_PREFIX, _A_PREFIX = "w_bits:", "a_bits:"  # parameter names of a layer's weight and activation bits
#: The multi-objective searcher's second objective (minimized) -> how the budget and full model name it.
OBJECTIVES: dict[str, str] = {"flops": "FLOPs", "size_bits": "size (bits)", "bops": "BOPs"}
_SAMPLER_FILE = "optuna_sampler.pkl"


class OptunaSearcher(StartingSearcher):
    """TPE over per-group keep ratios; the objective is validation accuracy under the FLOPs budget.

    Args:
        context: As every `Searcher`; its ``seed`` seeds the sampler (together with the number of trials already
            stored, for resume), its ``run_dir`` holds ``history.jsonl`` and ``optuna.db`` (``None``: both in
            memory), and its ``search`` may decide bits (see the module docstring).
        storage: An Optuna storage URL (``sqlite:///...``, ``postgresql://...``) or storage object used
            instead of ``run_dir/optuna.db``, e.g. one database shared by many machines.
        study_name: Study name; default ``"<searcher name>-<the budget's width limit>"`` (fixed for a run).
        n_startup_trials: Random trials before TPE starts modelling.
        multivariate: Multivariate TPE (group widths interact through the FLOPs they share).
        integer_widths: Suggest integer widths (``suggest_int(group, low, high)``) instead of ratios.
        prior: ``"uniform"`` (default): suggest factors on the uniform keep ratio; ``"box"``: the whole range.
        spread: The largest factor away from the uniform ratio (``prior="uniform"`` only).
        start: ``"uniform"`` (default) or ``"one-shot"``: the first trial is the sensitivity profile's one-shot
            answer (`agents.start`), and with ``prior="uniform"`` the factors are on its keep ratios (its widths
            with ``integer_widths``) instead of the uniform one's: the prior is centred on it.
        profile_cache, profile_key: Where that answer's profile is cached (`agents.start.StartingSearcher`).
    """

    name: ClassVar[str] = "optuna"
    directions: ClassVar[tuple[Literal["maximize", "minimize"], ...]] = ("maximize",)

    def __init__(
        self,
        context: SearchContext,
        *,
        storage: str | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
        n_startup_trials: int = 10,
        multivariate: bool = True,
        integer_widths: bool = False,
        prior: str = "uniform",
        spread: float = 2.0,
        start: str = "uniform",
        profile_cache: str | Path | None = None,
        profile_key: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(context, start=start, profile_cache=profile_cache, profile_key=profile_key)
        space, budget = self.space, self.budget
        check_prior(prior, spread)
        self.prior = prior
        self.spread = float(spread)
        self.uniform = uniform_architecture(space, budget.flops) if self.searches_widths else space.full()
        self.bit_decisions = [d for d in space.bit_decisions if len(d.choices) > 1] if self.searches_bits else []
        self.uniform_bits = (
            uniform_bits_architecture(space, self.uniform, budget.size_bits, budget.bops).bits
            if self.searches_bits else {}
        )
        self._set_centre(self.uniform)
        if n_startup_trials < 0:
            raise ValueError(f"`n_startup_trials >= 0` must hold, but got {n_startup_trials=}")
        if storage is not None and not isinstance(storage, (str, optuna.storages.BaseStorage)):
            raise TypeError(
                f"`storage` must be a database URL string or an optuna storage, but got {type(storage).__name__}"
            )
        self.n_startup_trials = n_startup_trials
        self.multivariate = multivariate
        self.integer_widths = integer_widths
        self.study_name = study_name or f"{self.name}-{budget.flops}"
        self._storage_arg = storage
        self._saved_sampler: optuna.samplers.BaseSampler | None = None
        self._saved_sampler_trials: int | None = None  # trials in the study when that sampler was saved
        # The default storage belongs to this run alone, so every RUNNING trial in it is a dead one of ours.
        self._owns_storage = storage is None
        self._worker = f"{socket.gethostname()}:{self.run_dir.resolve()}" if self.run_dir is not None else None
        self._storage: optuna.storages.BaseStorage | None = None
        self._study: optuna.Study | None = None
        self.recovered: dict[str, int] = {"adopted": 0, "retried": 0}

    def _set_centre(self, centre: Architecture) -> None:
        """Centre the ``prior="uniform"`` parameters on ``centre``'s widths (the uniform ones, or the start's)."""
        self.centre = centre
        self._centre = {d.name: centre.widths[d.name] / d.size for d in self.space.decisions}

    def _use_start(self, architecture: Architecture) -> None:
        """The one-shot start: the first trial of a new study (`start_params`) and the prior's centre."""
        if self.searches_widths:
            self._set_centre(architecture)

    # storage and study -------------------------------------------------------------------------------------
    @property
    def storage_url(self) -> str | None:
        """The storage's URL (``None`` when in memory or given as an object)."""
        if isinstance(self._storage_arg, str):
            return self._storage_arg
        if self._storage_arg is None and self.run_dir is not None:
            return f"sqlite:///{(self.run_dir / 'optuna.db').resolve()}"
        return None

    def _make_storage(self) -> optuna.storages.BaseStorage:
        if isinstance(self._storage_arg, optuna.storages.BaseStorage):
            return self._storage_arg
        url = self.storage_url
        if url is None:
            return optuna.storages.InMemoryStorage()
        if url.startswith("sqlite:///") and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # A generous SQLite lock timeout: a dashboard reading the file must not fail our writes.
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)

    def _make_sampler(self, n_existing: int) -> optuna.samplers.BaseSampler:
        seed = derived_seed(self.seed, n_existing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=self.multivariate
            )

    @property
    def study(self) -> optuna.Study:
        """The study (created, or loaded when it exists, on first use)."""
        if self._study is None:
            if self._storage is None:
                self._storage = self._make_storage()
            study = optuna.create_study(
                storage=self._storage,
                study_name=self.study_name,
                directions=list(self.directions),
                load_if_exists=True,
            )
            self._check_study(study)
            saved, self._saved_sampler = self._saved_sampler, None
            n_existing = len(study.get_trials(deepcopy=False))
            # A sampler saved at an earlier point (a Ctrl-C, then a kill -9 after more trials) would propose
            # again what it proposed after that save: only the state of exactly this study is restored.
            if saved is None or self._saved_sampler_trials != n_existing:
                saved = self._make_sampler(n_existing)
            study.sampler = saved
            self._study = study
        return self._study

    def _check_study(self, study: optuna.Study) -> None:
        """Refuse to continue a study made for another space, budget or searcher."""
        expected = self._study_attrs()
        attrs = study.user_attrs
        if not attrs:
            for key, value in expected.items():
                study.set_user_attr(key, value)
            return
        for key, value in expected.items():
            if key in attrs and attrs[key] != value:
                raise ValueError(
                    f"study {self.study_name!r} in {self.storage_url or 'the given storage'} was made with "
                    f"{key}={attrs[key]!r}, but this search has {key}={value!r}; resume with the same settings, "
                    f"or use another run_dir or study_name"
                )

    def _study_attrs(self) -> dict[str, Any]:
        """The settings a new study records, and that a search continuing it must share."""
        # The keys are those of studies already on disk (a resumed study must match them).
        return {"searcher": self.name, "budget_flops": self.budget.flops, "decisions": self.space.names,
                "prior": self.prior, "spread": self.spread, "integer_widths": self.integer_widths,
                "search": self.search_mode, "size_budget_bits": self.budget.size_bits,
                "bops_budget": self.budget.bops, "start": self.start}

    # the search ------------------------------------------------------------------------------------------
    def _values(self, metrics: Mapping[str, Any], architecture: Architecture) -> list[float]:
        return [float(metrics["accuracy"])]

    def _bounds(self, d: WidthDecision) -> tuple[float, float]:
        """The range of group ``d``'s parameter (integer widths or ratios, or factors on the uniform ratio)."""
        if self.integer_widths:
            if self.prior == "box":
                return d.min_keep, d.size
            centre = self.centre.widths[d.name]
            return max(d.min_keep, math.floor(centre / self.spread)), min(d.size, math.ceil(centre * self.spread))
        if self.prior == "box":
            return d.min_keep / d.size, 1.0
        return 1.0 / self.spread, self.spread

    def architecture_from_params(self, params: Mapping[str, float]) -> Architecture:
        """The architecture a trial's parameters stand for (before any budget projection)."""
        return self._widths_from_params(params).with_bits(self._bits_from_params(params))

    def _widths_from_params(self, params: Mapping[str, float]) -> Architecture:
        if not self.searches_widths:
            return self.space.full()
        if self.integer_widths:
            return Architecture({d.name: d.round(params[d.name]) for d in self.space.decisions})
        if self.prior == "box":
            return Architecture({d.name: d.from_ratio(params[d.name]) for d in self.space.decisions})
        return around_uniform(self.space, self._centre, params)

    def _bits_from_params(self, params: Mapping[str, float]) -> dict[str, tuple[int, int]]:
        """Bits per layer: suggested indices into the allowed bits; pinned layers at their pinned bits."""
        if not self.searches_bits:
            return {}
        bits = {d.name: (d.choices[0], d.choices[0]) for d in self.space.bit_decisions if len(d.choices) == 1}
        for d in self.bit_decisions:
            bits[d.name] = (d.choices[int(params[_W_PREFIX + d.name])], d.choices[int(params[_A_PREFIX + d.name])])
        return bits

    def uniform_params(self) -> dict[str, float]:
        """The parameters of the uniform architecture (the first trial of every new study)."""
        params: dict[str, float] = {}
        if self.searches_widths:
            if self.integer_widths:
                params.update({name: int(width) for name, width in self.uniform.widths.items()})
            elif self.prior == "box":
                params.update(self._centre)
            else:
                params.update({name: 1.0 for name in self.space.names})
        for d in self.bit_decisions:
            w_bits, a_bits = self.uniform_bits[d.name]
            params[_W_PREFIX + d.name] = d.choices.index(w_bits)
            params[_A_PREFIX + d.name] = d.choices.index(a_bits)
        return params

    def start_params(self) -> dict[str, float]:
        """The parameters of the first trial of a new study: the one-shot start's (``start="one-shot"``, once
        obtained), else the uniform architecture's (`uniform_params`)."""
        if self.search_start is None:
            return self.uniform_params()
        arch = self.search_start.architecture
        params: dict[str, float] = {}
        if self.searches_widths:
            if self.integer_widths:
                params.update({d.name: int(arch.widths[d.name]) for d in self.space.decisions})
            elif self.prior == "box":
                params.update({d.name: arch.widths[d.name] / d.size for d in self.space.decisions})
            else:  # the prior is centred on the start: factor 1 everywhere
                params.update({name: 1.0 for name in self.space.names})
        for d in self.bit_decisions:
            w_bits, a_bits = arch.bits[d.name]
            params[_W_PREFIX + d.name] = d.choices.index(w_bits)
            params[_A_PREFIX + d.name] = d.choices.index(a_bits)
        return params

    def _suggest(self, trial: optuna.Trial) -> Architecture:
        log = self.prior == "uniform"
        if self.searches_widths:
            for d in self.space.decisions:
                low, high = self._bounds(d)
                if self.integer_widths:
                    trial.suggest_int(d.name, int(low), int(high), log=log)
                else:
                    trial.suggest_float(d.name, low, high, log=log)
        for b in self.bit_decisions:
            trial.suggest_int(_W_PREFIX + b.name, 0, len(b.choices) - 1)
            trial.suggest_int(_A_PREFIX + b.name, 0, len(b.choices) - 1)
        return self.architecture_from_params(trial.params)

    def _project(self, proposed: Architecture) -> Architecture:
        """``proposed`` within every budget: widths onto the FLOPs budget, then bits onto size and BOPs."""
        arch = proposed
        if self.space.flops(arch) > self.budget.flops:
            arch = project_to_budget(self.space, arch, self.budget.flops, fill=True).with_bits(arch.bits)
        if self.searches_bits:
            arch = project_bits(self.space, arch, self.budget.size_bits, self.budget.bops)
        return arch

    def _run(self) -> None:
        study = self.study
        self._recover(study)
        if not study.get_trials(deepcopy=False):
            # A new study starts from uniform (or the one-shot start): every later trial is then compared with it.
            first = {"start": "one-shot"} if self.search_start is not None else {"uniform": True}
            study.enqueue_trial(self.start_params(), user_attrs=first)
        while self.remaining:
            # As many trials as there are workers (ask/tell): they are scored side by side.
            self._run_trials(study, [study.ask() for _ in range(min(self.remaining, self.batch_size))])
        self._after_run()

    def _after_run(self) -> None:
        """Hook for subclasses (the multi-objective searcher writes its front)."""

    def _run_trial(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self._run_trials(study, [trial])

    def _run_trials(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        archs = []
        for trial in trials:
            proposed = self._suggest(trial)
            arch = self._project(proposed)
            # Stored before evaluating: after a crash this is how a RUNNING trial is matched to its history entry.
            if self._worker is not None:
                trial.set_user_attr("worker", self._worker)
            trial.set_user_attr("widths", dict(arch.widths))
            if arch.bits:
                trial.set_user_attr("bits", {k: list(v) for k, v in arch.bits.items()})
            trial.set_user_attr("projected", arch != proposed)
            archs.append(arch)
        try:
            results = self._evaluate_many(archs)
        except Exception:
            for trial in trials:
                study.tell(trial, state=TrialState.FAIL)
            raise
        first = len(self.history) - len(trials)
        for i, (trial, arch, metrics) in enumerate(zip(trials, archs, results, strict=True)):
            trial.set_user_attr("history_index", first + i)
            self._tell(study, trial, self._values(metrics, arch))

    def _tell(self, study: optuna.Study, trial: optuna.Trial | int, values: Sequence[float]) -> None:
        """``study.tell`` (one place, so tests can simulate a crash right before it)."""
        study.tell(trial, list(values))

    def _owned(self, trial: FrozenTrial) -> bool:
        if self._owns_storage:
            return True
        return self._worker is not None and trial.user_attrs.get("worker") == self._worker

    def _recover(self, study: optuna.Study) -> None:
        """Settle trials a killed process left RUNNING: complete them from history, or fail and retry them."""
        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING and self._owned(t)]
        if not running:
            return
        claimed = {
            t.user_attrs["history_index"]
            for t in trials
            if t.state == TrialState.COMPLETE and "history_index" in t.user_attrs
        }
        orphans: dict[str, HistoryEntry] = {}
        for e in self.history.entries:
            if e.index not in claimed and e.searcher == self.name:
                orphans.setdefault(e.architecture.key(), e)
        queued = {t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.WAITING}
        storage = study._storage  # the storage API is public; the study keeps the object we may have been given
        for t in running:
            entry: HistoryEntry | None = None
            index = t.user_attrs.get("history_index")
            if isinstance(index, int) and 0 <= index < len(self.history) and index not in claimed:
                entry = self.history.entries[index]
            elif "widths" in t.user_attrs:
                recorded = Architecture({k: int(v) for k, v in t.user_attrs["widths"].items()},
                                        t.user_attrs.get("bits") or {})
                entry = orphans.get(recorded.key())
            if entry is not None and entry.index not in claimed:
                # Evaluated and recorded, but killed before `tell`: finish it with what was measured.
                storage.set_trial_user_attr(t._trial_id, "history_index", entry.index)
                self._tell(study, t.number, self._values(entry.metrics, entry.architecture))
                claimed.add(entry.index)
                orphans.pop(entry.architecture.key(), None)
                self.recovered["adopted"] += 1
                continue
            if t.params and t.number not in queued:
                study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
                self.recovered["retried"] += 1
            study.tell(t.number, state=TrialState.FAIL)

    # result, save, restore -----------------------------------------------------------------------------------
    def result(self) -> SearchResult:
        """The best architecture within budget, with the study's name and storage in ``extra``."""
        result = super().result()
        result.extra.update({"study_name": self.study_name, "storage": self.storage_url,
                             "recovered": dict(self.recovered)})
        return result

    def save(self, path: str | Path) -> None:
        """Record the study's name and storage; an in-memory study (and history) is copied under ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {"study_name": self.study_name, "storage": self.storage_url, "seed": self.seed,
                 "searcher": self.name, "sampler_trials": len(self.study.get_trials(deepcopy=False))}
        if self.storage_url is None and not isinstance(self._storage_arg, optuna.storages.BaseStorage):
            target = path / "optuna.db"
            target.unlink(missing_ok=True)
            optuna.copy_study(from_study_name=self.study_name, from_storage=self.study._storage,
                              to_storage=f"sqlite:///{target.resolve()}")
            state["copy"] = target.name
        if self.history.path is None:
            _write_history(path / "history.jsonl", self.history.entries)
        # The sampler's random state: a restored search then proposes exactly what an uninterrupted one would.
        atomic_write(path / _SAMPLER_FILE, pickle.dumps(self.study.sampler))
        self._save_start(path)
        atomic_write_text(path / _STATE_FILE, json.dumps(state, indent=1))

    def restore(self, path: str | Path) -> None:
        """Load what `save` wrote: the study copy (if in memory) and the history (if not already on disk)."""
        path = Path(path)
        file = path / _STATE_FILE
        if not file.exists():
            raise FileNotFoundError(f"no saved {self.name} searcher under {path} (expected {file.name})")
        state = json.loads(file.read_text())
        if state.get("searcher", self.name) != self.name:
            raise ValueError(f"{path} holds a {state['searcher']!r} searcher, not {self.name!r}")
        self.seed = int(state["seed"])
        self.study_name = str(state["study_name"])
        self._restore_start(path)
        if "copy" in state and self.storage_url is None and self._storage_arg is None:
            self._storage = optuna.storages.InMemoryStorage()
            saved = f"sqlite:///{(path / state['copy']).resolve()}"
            optuna.copy_study(from_study_name=self.study_name, from_storage=saved, to_storage=self._storage,
                              to_study_name=self.study_name)
        self._study = None
        sampler_file = path / _SAMPLER_FILE
        if sampler_file.exists():
            self._saved_sampler = pickle.loads(sampler_file.read_bytes())  # our own file, written by `save`
            self._saved_sampler_trials = state.get("sampler_trials")
        if self.history.path is None and len(self.history) == 0 and (path / "history.jsonl").exists():
            for entry in SearchHistory(path / "history.jsonl").entries:
                self.history.entries.append(entry)


def derived_seed(seed: int, n_existing: int) -> int:
    """A sampler seed for a study that already holds ``n_existing`` trials (fresh stream after resume)."""
    if n_existing == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(n_existing)]).generate_state(1)[0])


def _write_history(path: Path, entries: Sequence[HistoryEntry]) -> None:
    atomic_write_text(path, "".join(json.dumps(e.to_dict()) + "\n" for e in entries))
