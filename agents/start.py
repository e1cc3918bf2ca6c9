"""Searches that start from the sensitivity searcher's one-shot answer instead of the uniform width.

With ``start="one-shot"`` a searcher that supports it (`StartingSearcher`: DDPG, PPO, Optuna and Optuna's
multi-objective search) first obtains the sensitivity profile's one-shot answer (`agents.sensitivity`: the
threshold's widths, the exact bit allocation, or both) and makes it its first proposal:

- from the profile cached by an earlier run of the same base model, data and proxy (``profile_cache`` and
  ``profile_key``, as `agents.sensitivity.SensitivitySearcher` takes them; `agents.profile_cache`): free;
- else by measuring the profile's missing points (its coarsest grid: 20% steps, and the bits profile when bits
  are searched) with the search's own evaluator. Those evaluations count toward the search's: a search asked
  for ``n`` evaluations that spent ``c`` on the profile evaluates ``n - c`` candidates (at least the start).
  The points are kept in the cache folder (so the next run of any budget reuses them) and in
  ``RUN_DIR/search_start/`` (so a killed run does not measure them again, and still counts them).

One line on stderr says where the start came from and what it cost. The start, its origin and its cost are
recorded in ``RUN_DIR/search_start.json`` (and by `StartingSearcher.save`), so a resumed search starts from the
very same architecture with the same evaluations left, and in the result's ``extra`` (``search_start``, and
``one_shot``, which the re-ranking ladder then takes without solving or evaluating it again).

How each searcher makes the start its first proposal is its own (`StartingSearcher._use_start`): Optuna
enqueues it as the first trial and centres its prior on it, DDPG and PPO script the actions of their first
episode (DDPG also explores around it during its warm-up).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.base import EvaluatorLike, HistoryEntry, SearchContext, Searcher, SearchResult
from automl_prune.atomic import atomic_write_text
from automl_prune.errors import ConfigError
from search_spaces import Architecture, Budget, SearchSpace

__all__ = ["STARTS", "SearchStart", "StartingSearcher", "measure_one_shot", "one_shot_start"]

#: Where a `StartingSearcher` starts: the uniform width (default) or the sensitivity profile's one-shot answer.
STARTS: tuple[str, ...] = ("uniform", "one-shot")
_RECORD_FILE = "search_start.json"
_PROFILE_DIR = "search_start"  # the profile measured for the start, under the run directory
_STEPS = 5  # the sensitivity searcher's coarsest width grid (20% steps): the cheapest profile


@dataclass(frozen=True)
class SearchStart:
    """Where a search starts: the one-shot answer, where it came from, and the evaluations it cost."""

    architecture: Architecture
    origin: str
    evaluations: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``RUN_DIR/search_start.json``)."""
        return {"start": "one-shot", "architecture": self.architecture.to_dict(), "origin": self.origin,
                "evaluations": self.evaluations}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchStart:
        """Inverse of `to_dict`."""
        return cls(Architecture.from_dict(dict(data["architecture"])), str(data["origin"]), int(data["evaluations"]))


def _evaluate_points(evaluator: EvaluatorLike, architectures: list[Architecture]) -> list[dict[str, Any]]:
    """Profile evaluations (over budget by design, so outside the history), side by side when the evaluator can."""
    many = getattr(evaluator, "evaluate_many", None)
    if many is not None:
        return [m.to_dict() for m in many(architectures)]
    return [evaluator.evaluate(a).to_dict() for a in architectures]


def one_shot_start(space: SearchSpace, evaluator: EvaluatorLike, budget: Budget, search: str, *,
                   profile_cache: str | Path | None = None, profile_key: str | Mapping[str, Any] | None = None,
                   run_dir: str | Path | None = None) -> SearchStart:
    """The sensitivity profile's one-shot answer for this budget, measuring what the profile lacks.

    Args:
        space, budget, search: The search's.
        evaluator: Scores the missing profile points (the search's own, so the profile is of its proxy).
        profile_cache, profile_key: Where profiles are kept across runs and what makes them the same
            (`agents.sensitivity.SensitivitySearcher`); without them the profile is measured for this run only.
        run_dir: Keeps the measured points (``run_dir/search_start/``): a resumed run measures none twice.

    Returns:
        The answer, where it came from, and how many evaluations this run spent on its profile (points
        measured by an earlier process of the same ``run_dir`` included; points from the cache folder not).
    """
    return measure_one_shot(space, evaluator, budget, search, profile_cache=profile_cache, profile_key=profile_key,
                            folder=Path(run_dir) / _PROFILE_DIR if run_dir is not None else None)


def measure_one_shot(space: SearchSpace, evaluator: EvaluatorLike, budget: Budget, search: str, *,
                     profile_cache: str | Path | None = None, profile_key: str | Mapping[str, Any] | None = None,
                     folder: str | Path | None = None, announce: Callable[[int, int], None] | None = None
                     ) -> SearchStart:
    """The one-shot answer of the coarsest sensitivity profile (20% steps, and the bits profile when bits are
    searched), its missing points measured with ``evaluator`` (`one_shot_start`; the re-ranking ladder's entrant,
    `automl_prune.run.rerank_stage`).

    Args:
        folder: Keeps the points measured here (``sensitivity.json``, ``profile.json``): a later process given the
            same folder measures none of them again, and still counts them in ``evaluations``.
        announce: Called with ``(points to measure, points in the profile)`` before anything is measured, when
            something is (so a caller can say why it waits).
    """
    from agents.sensitivity import ProfileProgress, SensitivitySearcher

    profiler = SensitivitySearcher(SearchContext(space, evaluator, budget, search=search,
                                                 run_dir=Path(folder) if folder is not None else None),
                                   steps=_STEPS, profile_cache=profile_cache, profile_key=profile_key, quiet=True)

    def known() -> int:
        return sum(len(v) for v in profiler.profile.values()) + sum(len(v) for v in profiler.bit_profile.values())

    reused = sum(profiler.reused.values())
    earlier = known() - reused  # measured for this run by an earlier process (kept in the folder)
    batch = max(1, int(getattr(evaluator, "parallelism", 1)))
    pending: list[tuple[Callable[[Any, Mapping[str, Any]], None], Any]] = []
    if profiler.searches_widths:
        pending += [(profiler.record_profile, p) for p in profiler.pending_profile()]
    if profiler.searches_bits:
        pending += [(profiler.record_bit_profile, p) for p in profiler.pending_bit_profile()]
    if pending and announce is not None:
        announce(len(pending), known() + len(pending))
    with ProfileProgress(len(pending), "sensitivity: one-shot profile", enabled=announce is not None and
                         bool(pending)) as bar:
        for first in range(0, len(pending), batch):
            chunk = pending[first:first + batch]
            for (record, point), metrics in zip(chunk, _evaluate_points(evaluator, [p.architecture for _, p in chunk]),
                                                strict=True):
                record(point, metrics)
                bar.update(point, metrics)
    architecture = profiler.one_shot()
    cost = earlier + len(pending)
    files = ", ".join(str(c.path) for c in profiler.caches.values())
    if cost == 0:
        origin = f"from the cached profile {files}" if files else "from the profile"
    else:
        origin = (f"from its profile, measured with the search's evaluator ({cost} evaluations"
                  + (f", {earlier} of them by an earlier process of this run" if earlier else "")
                  + (f"; {reused} points reused from {files}" if reused else "") + ")")
    return SearchStart(architecture, origin, cost)


class StartingSearcher(Searcher):
    """A searcher that may start from the sensitivity profile's one-shot answer (``start="one-shot"``).

    Args:
        context: As every `Searcher`.
        start: One of `STARTS`: ``"uniform"`` (default: the searcher's own start, unchanged) or ``"one-shot"``.
        profile_cache, profile_key: Where sensitivity profiles are kept across runs and what makes two runs'
            profiles the same (see `agents.sensitivity.SensitivitySearcher`); used with ``"one-shot"`` only.

    Subclasses make ``self.search_start.architecture`` their first proposal in `_use_start`, which is called
    once, before the first evaluation of the first `search` (after a `restore` as well).
    """

    def __init__(self, context: SearchContext, *, start: str = "uniform", profile_cache: str | Path | None = None,
                 profile_key: str | Mapping[str, Any] | None = None) -> None:
        super().__init__(context)
        if start not in STARTS:
            raise ConfigError(f"unknown start {start!r}; must be one of {list(STARTS)}")
        self.start = start
        self.profile_cache = profile_cache
        self.profile_key = profile_key
        self.search_start: SearchStart | None = None
        """The one-shot start once obtained (``None`` with ``start="uniform"``)."""
        self._start_used = False

    def search(self, n_evaluations: int, callback: Callable[[HistoryEntry], None] | None = None) -> SearchResult:
        """As `Searcher.search`; with ``start="one-shot"`` the start is obtained first, and the evaluations its
        profile cost are taken off ``n_evaluations`` (the search still evaluates at least its start)."""
        if self.start == "one-shot":
            if n_evaluations < 1:
                raise ValueError(f"`n_evaluations >= 1` must hold, but got {n_evaluations=}")
            fresh, began = not self._start_used, time.perf_counter()
            start = self.resolve_start()
            self._elapsed += time.perf_counter() - began  # the profile's time is the search's too
            left = max(1, n_evaluations - start.evaluations)
            if fresh:
                self._log_start(start, n_evaluations, left)
            n_evaluations = left
        return super().search(n_evaluations, callback)

    def _log_start(self, start: SearchStart, asked: int, left: int) -> None:
        if start.evaluations == 0:
            cost = "no evaluation"
        elif start.evaluations >= asked:
            cost = (f"its {start.evaluations} profile evaluations are more than the search's {asked}: {self.name} "
                    "evaluates only its start")
        else:
            cost = f"{start.evaluations} of the search's {asked} evaluations, {left} left for {self.name}"
        print(f"{self.name} starts from the sensitivity one-shot answer {start.origin}; cost: {cost}", file=sys.stderr,
              flush=True)

    def resolve_start(self) -> SearchStart:
        """The one-shot start: recorded (``RUN_DIR/search_start.json``, or restored), else obtained now
        (`one_shot_start`) and recorded; then handed to `_use_start` once."""
        if self.start != "one-shot":
            raise RuntimeError(f"{self.name} was not asked to start from the one-shot answer (start={self.start!r})")
        if self.search_start is None:
            record = self.run_dir / _RECORD_FILE if self.run_dir is not None else None
            if record is not None and record.exists():
                self.search_start = SearchStart.from_dict(json.loads(record.read_text()))
            else:
                found = one_shot_start(self.space, self.evaluator, self.budget, self.search_mode,
                                       profile_cache=self.profile_cache, profile_key=self.profile_key,
                                       run_dir=self.run_dir)
                over = self.violations(found.architecture)
                if over:  # cannot happen: the one-shot answer is solved within every limit
                    raise RuntimeError(f"the sensitivity one-shot answer is over budget: {'; '.join(over)}")
                self.search_start = found
                if record is not None:
                    self._write_start(record)
        if not self._start_used:
            self._use_start(self.search_start.architecture)
            self._start_used = True
        return self.search_start

    def _use_start(self, architecture: Architecture) -> None:
        """Make ``architecture`` the first proposal (called once, before the first evaluation)."""

    def _write_start(self, path: Path) -> None:
        assert self.search_start is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**self.search_start.to_dict(), "search": self.search_mode}, indent=1)
                          + "\n")

    def _save_start(self, folder: str | Path) -> None:
        """Keep the start beside a `save` (for a search without a run directory)."""
        if self.search_start is not None:
            self._write_start(Path(folder) / _RECORD_FILE)

    def _restore_start(self, folder: str | Path) -> None:
        """Take back the start `_save_start` kept (a recorded start is never obtained again)."""
        path = Path(folder) / _RECORD_FILE
        if self.start == "one-shot" and self.search_start is None and path.exists():
            self.search_start = SearchStart.from_dict(json.loads(path.read_text()))

    def result(self) -> SearchResult:
        """As `Searcher.result`; with a one-shot start, ``extra["search_start"]`` (the start, its origin and cost)
        and ``extra["one_shot"]`` (the answer itself, for the re-ranking ladder)."""
        result = super().result()
        if self.search_start is not None:
            result.extra["search_start"] = self.search_start.to_dict()
            result.extra["one_shot"] = self.search_start.architecture.to_dict()
        return result
