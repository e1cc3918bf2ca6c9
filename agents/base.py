"""The one interface every searcher implements, and the history they all keep."""

from __future__ import annotations

import abc
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from automl_prune.errors import ConfigError
from search_spaces import Architecture, Budget, SearchSpace

__all__ = ["SEARCH_MODES", "BudgetViolation", "EvaluatorLike", "HistoryEntry", "SearchContext", "SearchHistory",
           "SearchResult", "Searcher"]

#: What a searcher decides: ``"widths"`` (channels per group; float model), ``"bits"`` (weight and activation
#: bits per conv/linear layer at full width) or ``"both"``.
SEARCH_MODES: tuple[str, ...] = ("widths", "bits", "both")


class MetricsLike(Protocol):
    accuracy: float
    flops: int

    def to_dict(self) -> dict[str, Any]: ...


class EvaluatorLike(Protocol):
    """What a searcher needs from an evaluator (see `automl_prune.scoring.evaluator.Evaluator`)."""

    def evaluate(self, architecture: Architecture) -> MetricsLike: ...


@dataclass(frozen=True)
class HistoryEntry:
    """One evaluated architecture."""

    index: int
    architecture: Architecture
    metrics: dict[str, Any]
    searcher: str
    time: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data (one JSON line of ``history.jsonl``)."""
        return {
            "index": self.index,
            "searcher": self.searcher,
            "time": self.time,
            "metrics": self.metrics,
            "architecture": self.architecture.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryEntry:
        """Inverse of `to_dict`."""
        return cls(
            index=int(data["index"]),
            architecture=Architecture.from_dict(data["architecture"]),
            metrics=dict(data["metrics"]),
            searcher=str(data["searcher"]),
            time=float(data["time"]),
        )


def _parse_line(raw: bytes) -> HistoryEntry | None:
    """The entry one line of ``history.jsonl`` holds, or ``None`` for a blank or unreadable line."""
    if not raw.strip():
        return None
    try:
        return HistoryEntry.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


class SearchHistory:
    """Every evaluation, in order; appended to a JSON-lines file as it happens when given a path."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: list[HistoryEntry] = []
        self.skipped_lines: list[int] = []  # 1-based numbers of unreadable complete lines (reported, not read)
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        """Read every complete line; cut a torn last line off the file so that appends start on a fresh line.

        A crash mid-append leaves a last line without its newline (or one that does not parse). Appending after
        it would glue the next entry onto the fragment and make that entry unreadable, so the file is
        truncated to its last complete line. An unreadable line in the middle (written by an older version
        that appended after a fragment) is skipped and reported; the entries after it are kept.
        """
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # the bytes after the last newline: empty unless the last write was cut
        keep = len(data) - len(tail)
        for number, raw in enumerate(lines, start=1):
            entry = _parse_line(raw)
            if entry is not None:
                self.entries.append(entry)
            elif raw.strip():
                self.skipped_lines.append(number)
        last = _parse_line(tail)
        if last is not None:  # a complete entry that only lost its newline
            self.entries.append(last)
            with path.open("ab") as handle:
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())
        elif tail:
            with path.open("r+b") as handle:
                handle.truncate(keep)
                handle.flush()
                os.fsync(handle.fileno())
            if tail.strip():
                warnings.warn(
                    f"{path}: removed a torn last line ({len(tail)} bytes, cut by a crash mid-write); "
                    f"{len(self.entries)} complete entries kept",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if self.skipped_lines:
            warnings.warn(
                f"{path}: skipped unreadable line(s) {self.skipped_lines}; {len(self.entries)} entries read",
                RuntimeWarning,
                stacklevel=3,
            )

    def append(self, entry: HistoryEntry) -> None:
        """Record one evaluation (flushed and fsynced, so a crash loses nothing finished)."""
        self.entries.append(entry)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(entry.to_dict()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def __len__(self) -> int:
        return len(self.entries)

    def best(
        self, max_flops: int | None = None, *, within: Callable[[HistoryEntry], bool] | None = None
    ) -> HistoryEntry | None:
        """The most accurate entry within ``max_flops`` and accepted by ``within`` (ties: fewer FLOPs).

        ``within`` is how a searcher with size or BOPs budgets keeps an entry over them from being chosen.
        """
        fitting = [
            e for e in self.entries
            if (max_flops is None or e.metrics["flops"] <= max_flops) and (within is None or within(e))
        ]
        if not fitting:
            return None
        return max(fitting, key=lambda e: (e.metrics["accuracy"], -e.metrics["flops"]))


@dataclass
class SearchResult:
    """What a search returns: the best architecture within budget and everything it evaluated."""

    best: Architecture
    best_metrics: dict[str, Any]
    history: list[HistoryEntry]
    budget: Budget
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchContext:
    """What every searcher is built with: the space, the evaluator, the budget, and where the search lives.

    Attributes:
        space: The search space.
        evaluator: Scores architectures.
        budget: Every limit each evaluated architecture meets (`search_spaces.Budget`).
        seed: Seeds the searcher.
        run_dir: Where ``history.jsonl`` (and the searcher's state) live; ``None`` keeps everything in memory.
        history: An existing history to append to (default: ``run_dir/history.jsonl``).
        search: One of `SEARCH_MODES` (and of the searcher's `Searcher.searches`): ``"widths"`` (default),
            ``"bits"`` (full widths, so the budget's width limit must allow the full model) or ``"both"``; size
            and BOPs limits need ``"bits"`` or ``"both"``.
    """

    space: SearchSpace
    evaluator: EvaluatorLike
    budget: Budget
    seed: int = 0
    run_dir: str | Path | None = None
    history: SearchHistory | None = None
    search: str = "widths"


class BudgetViolation(RuntimeError):
    """A searcher proposed an architecture over budget: a bug in that searcher, never user input."""


class Searcher(abc.ABC):
    """Proposes architectures of ``context.space`` within ``context.budget`` and scores them with its evaluator.

    Subclasses take the `SearchContext` and only their own options (keyword-only), implement `_run` (propose
    and call `self._evaluate` until ``self.n_evaluations`` entries exist) and, when they carry learned state,
    `save`/`restore`. `_evaluate` refuses any architecture over any limit of the budget (FLOPs, and size and
    BOPs when given), so the guarantee is enforced in one place for every searcher.
    """

    name: ClassVar[str] = "searcher"
    searches: ClassVar[tuple[str, ...]] = SEARCH_MODES
    """The search modes this searcher implements."""

    def __init__(self, context: SearchContext) -> None:
        self.search_mode = context.search
        self._check_search()
        context.budget.check(context.space, context.search)
        self.space = context.space
        self.evaluator = context.evaluator
        self.budget = context.budget
        self.seed = context.seed
        self.run_dir = Path(context.run_dir) if context.run_dir is not None else None
        history = context.history
        if history is None:
            history = SearchHistory(self.run_dir / "history.jsonl" if self.run_dir is not None else None)
        self.history = history
        self.n_evaluations = 0
        self._callback: Callable[[HistoryEntry], None] | None = None
        self._elapsed = 0.0
        self.deadline: float | None = None
        self.stopped_by_deadline = False

    def _check_search(self) -> None:
        """Refuse a search mode this searcher lacks (the budget checks its own limits: `Budget.check`)."""
        mode = self.search_mode
        if mode not in SEARCH_MODES:
            raise ConfigError(f"unknown search {mode!r}; must be one of {list(SEARCH_MODES)}")
        if mode not in self.searches:
            raise ConfigError(f"agent {self.name!r} searches {' or '.join(self.searches)} only, not {mode!r}")

    @property
    def searches_bits(self) -> bool:
        """Whether this search decides bits (``search`` is ``"bits"`` or ``"both"``)."""
        return self.search_mode != "widths"

    @property
    def searches_widths(self) -> bool:
        """Whether this search decides widths (``search`` is ``"widths"`` or ``"both"``)."""
        return self.search_mode != "bits"

    def violations(self, architecture: Architecture) -> list[str]:
        """One line per budget ``architecture`` is over (FLOPs, size, BOPs); empty when it meets them all."""
        return self.budget.violations(self.space, architecture)

    def within_budget(self, entry: HistoryEntry) -> bool:
        """Whether a history entry's architecture meets every budget of this search."""
        return not self.violations(entry.architecture)

    def set_time_limit(self, seconds: float | None) -> None:
        """End the next `search` early once ``seconds`` of wall-clock time have passed (``None``: no limit).

        Checked after each batch of evaluations is recorded, so the batch in flight finishes and nothing
        evaluated is lost; work a searcher does before its first evaluation (DMCP's supernet) is not cut.
        """
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.stopped_by_deadline = False

    def search(self, n_evaluations: int, callback: Callable[[HistoryEntry], None] | None = None) -> SearchResult:
        """Run until the history holds ``n_evaluations`` entries (continuing a restored search), or the time limit
        (`set_time_limit`) passes."""
        if n_evaluations < 1:
            raise ValueError(f"`n_evaluations >= 1` must hold, but got {n_evaluations=}")
        self.n_evaluations = n_evaluations
        self._callback = callback
        start = time.perf_counter()
        if len(self.history) < n_evaluations:
            self._run()
        self._elapsed += time.perf_counter() - start
        return self.result()

    @abc.abstractmethod
    def _run(self) -> None:
        """Propose and evaluate until ``len(self.history) >= self.n_evaluations``."""

    @property
    def state_dir(self) -> Path | None:
        """``run_dir/agent_state``: where the run keeps this searcher's `save` (RL agents also save there as
        they go, so that a killed search resumes from its last episode); ``None`` without a ``run_dir``."""
        return self.run_dir / "agent_state" if self.run_dir is not None else None

    @property
    def remaining(self) -> int:
        """Evaluations still to do in this search."""
        return max(0, self.n_evaluations - len(self.history))

    @property
    def batch_size(self) -> int:
        """How many candidates to propose at once: the evaluator's parallel workers (1 without a pool)."""
        return max(1, int(getattr(self.evaluator, "parallelism", 1)))

    def _check_budget(self, architecture: Architecture) -> None:
        found = self.violations(architecture)
        if found:
            raise BudgetViolation(f"{self.name} proposed {'; '.join(found)}: {architecture.to_dict()}")

    def _evaluate(self, architecture: Architecture) -> dict[str, Any]:
        return self._evaluate_many([architecture])[0]

    def _evaluate_many(self, architectures: list[Architecture]) -> list[dict[str, Any]]:
        """Score candidates side by side (when the evaluator has workers) and record them in order.

        Every candidate is checked against the budget before any is evaluated: the guarantee lives here.
        """
        for architecture in architectures:
            self._check_budget(architecture)
        many = getattr(self.evaluator, "evaluate_many", None)
        if many is not None:
            results = [m.to_dict() for m in many(list(architectures))]
        else:
            results = [self.evaluator.evaluate(a).to_dict() for a in architectures]
        for architecture, metrics in zip(architectures, results, strict=True):
            entry = HistoryEntry(
                index=len(self.history),
                architecture=architecture,
                metrics=metrics,
                searcher=self.name,
                time=time.time(),
            )
            self.history.append(entry)
            if self._callback is not None:
                self._callback(entry)
        if self.deadline is not None and time.monotonic() >= self.deadline and self.remaining:
            # Every searcher's loop ends when the history reaches `n_evaluations` (RL agents on a round boundary).
            self.n_evaluations = len(self.history)
            self.stopped_by_deadline = True
        return results

    def result(self) -> SearchResult:
        """The best architecture found so far within budget, and the whole history."""
        within = self.within_budget if self.budget.has_bit_limits else None
        best = self.history.best(self.budget.flops, within=within)
        if best is None:
            raise RuntimeError(f"{self.name} has not evaluated any architecture yet")
        return SearchResult(
            best=best.architecture,
            best_metrics=best.metrics,
            history=list(self.history.entries),
            budget=self.budget,
            seconds=self._elapsed,
        )

    def save(self, path: str | Path) -> None:  # noqa: B027 - stateless searchers need nothing
        """Write learned state (models, replay buffers, samplers) under ``path``; history is already on disk."""

    def restore(self, path: str | Path) -> None:  # noqa: B027
        """Load what `save` wrote."""
