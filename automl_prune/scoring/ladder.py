"""The re-ranking ladder: successive halving of the search's best candidates over growing fine-tunes.

A search scores candidates with a cheap proxy; the proxy's ranking is noisy exactly where compression is
hardest (at 10% FLOPs adaptive-BN accuracy ranked 12 candidates with Spearman's rho 0.22 against their
fine-tuned accuracy). So before anything is handed back, the top-k distinct candidates of the search, the
uniform-width architecture (always), the searcher's widened best and the sensitivity profile's one-shot answer
(when its profile is known) climb a ladder of fidelities:

- rung ``r`` fine-tunes a candidate up to ``rungs[r]`` optimizer steps of the *final* fine-tune recipe
  (`automl_prune.train.training.Trainer`, planned over the whole fine-tune), continuing from rung ``r - 1``;
- after each rung the best ``ceil(n / eta)`` by validation accuracy are promoted (successive halving,
  Jamieson & Talwalkar 2016; Li et al.'s ASHA without the asynchrony, so that the outcome does not depend on
  which worker finished first);
- the uniform entrant climbs every rung whatever its rank: it is the answer the search has to beat, and an
  early rung can mis-rank it (at resnet20 / 10% FLOPs a 48-step rung dropped it and the winner then finished
  a point below it). With two or more workers its extra trial runs beside the leader's, nearly free in wall
  time;
- the top rung is the whole fine-tune, so the winner (the best validation accuracy at the highest rung
  reached) is already the fine-tuned model: no separate final fine-tune.

Every finished rung of every candidate is recorded in ``ladder.json`` (atomically) before the next decision,
so a killed re-ranking resumes without re-running finished rungs, and the promotions are recomputed from the
records rather than from any scheduler's memory. How a rung is run (in process, or as Ray Tune trials) is the
executor's business: this module never imports Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from automl_prune.atomic import atomic_write_text
from automl_prune.errors import ConfigError
from search_spaces import Architecture

__all__ = ["Candidate", "Ladder", "RungResult", "plan_rungs", "select_candidates"]


@dataclass(frozen=True)
class Candidate:
    """One architecture entering the ladder."""

    id: str
    architecture: Architecture
    origin: str  # "search #12", "uniform", "widened best"
    proxy_accuracy: float | None
    flops: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``ladder.json`` and the summary."""
        return {"id": self.id, "origin": self.origin, "proxy_accuracy": self.proxy_accuracy, "flops": self.flops,
                "architecture": self.architecture.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """Inverse of `to_dict`."""
        return cls(id=str(data["id"]), architecture=Architecture.from_dict(data["architecture"]),
                   origin=str(data["origin"]), proxy_accuracy=data["proxy_accuracy"], flops=int(data["flops"]))


@dataclass(frozen=True)
class RungResult:
    """What one candidate measured at the end of one rung."""

    candidate: str
    rung: int
    steps: int
    val_acc: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def plan_rungs(total_steps: int, n_rungs: int = 3, eta: int = 3) -> tuple[int, ...]:
    """Cumulative fine-tune steps of each rung: geometric with ratio ``eta``, ending at ``total_steps``.

    ``plan_rungs(430, 3, 3)`` is ``(48, 143, 430)``. Rungs that would round to the same step are merged.
    """
    if total_steps < 1:
        raise ConfigError(f"the re-ranking ladder needs a fine-tune of at least one step, but got {total_steps}")
    if n_rungs < 1:
        raise ConfigError(f"`rerank_rungs` must be >= 1, but got {n_rungs}")
    if eta < 2:
        raise ConfigError(f"`rerank_eta` must be >= 2, but got {eta}")
    steps = [max(1, round(total_steps / eta ** (n_rungs - 1 - r))) for r in range(n_rungs)]
    return tuple(sorted(set(steps)))


def select_candidates(
    ranked: Iterable[tuple[Architecture, float, int]],
    *,
    top_k: int,
    uniform: tuple[Architecture, float | None, int],
    widened: tuple[Architecture, float | None, int] | None = None,
    one_shot: tuple[Architecture, float | None, int] | None = None,
) -> list[Candidate]:
    """The ladder's entrants: the ``top_k`` distinct best of ``ranked``, plus uniform, the widened best and the
    sensitivity profile's one-shot answer.

    Args:
        ranked: ``(architecture, proxy accuracy, flops)`` of every evaluated candidate within budget, in the
            order they were evaluated (ties in accuracy go to the earlier one).
        top_k: How many of the search's own candidates enter.
        uniform: The uniform-width architecture: always an entrant, even if the search never proposed it.
        widened: The searcher's best widened to spend the leftover budget, when that differs from it.
        one_shot: The sensitivity profile's one-shot answer (`agents.sensitivity`), when it is known without a
            profile to measure; entered after uniform (origin ``"sensitivity one-shot"``).
    """
    if top_k < 0:
        raise ConfigError(f"`rerank_top_k` must be >= 0, but got {top_k}")
    seen: set[str] = set()
    distinct: list[tuple[int, Architecture, float, int]] = []
    for index, (arch, accuracy, flops) in enumerate(ranked):
        if arch.key() not in seen:
            seen.add(arch.key())
            distinct.append((index, arch, accuracy, flops))
    distinct.sort(key=lambda item: (-item[2], item[0]))
    candidates: list[Candidate] = []
    taken: set[str] = set()

    def add(arch: Architecture, origin: str, accuracy: float | None, flops: int) -> None:
        if arch.key() in taken:
            # Already in (the search found it too): keep one entry, and remember both origins.
            for i, existing in enumerate(candidates):
                if existing.architecture.key() == arch.key() and origin not in existing.origin:
                    candidates[i] = Candidate(existing.id, arch, f"{existing.origin} = {origin}",
                                              existing.proxy_accuracy, flops)
            return
        taken.add(arch.key())
        candidates.append(Candidate(f"c{len(candidates)}", arch, origin, accuracy, flops))

    for index, arch, accuracy, flops in distinct[:top_k]:
        add(arch, f"search #{index}", accuracy, flops)
    if widened is not None:
        add(widened[0], "widened best", widened[1], widened[2])
    add(uniform[0], "uniform", uniform[1], uniform[2])
    if one_shot is not None:
        add(one_shot[0], "sensitivity one-shot", one_shot[1], one_shot[2])
    return candidates


#: Runs one rung for some candidates and yields each result as soon as it is known.
RungExecutor = Callable[[int, Sequence[Candidate]], Iterable[RungResult]]


class Ladder:
    """Successive halving of ``candidates`` over ``rungs``, recorded in ``path`` (``ladder.json``).

    Args:
        path: The record file; an existing one with the same candidates and rungs is continued, one with
            others is an error (the run directory holds another re-ranking).
        candidates: The entrants (`select_candidates`).
        rungs: Cumulative fine-tune steps per rung (`plan_rungs`).
        eta: Keep the best ``ceil(n / eta)`` after each rung.
        always_climb: Ids promoted at every rung whatever their rank; by default the entrant whose origin
            names ``uniform``.
    """

    def __init__(self, path: str | Path, candidates: Sequence[Candidate], rungs: Sequence[int], eta: int,
                 always_climb: Iterable[str] | None = None) -> None:
        if not candidates:
            raise ConfigError("the re-ranking ladder needs at least one candidate")
        if eta < 2:
            raise ConfigError(f"`rerank_eta` must be >= 2, but got {eta}")
        if list(rungs) != sorted(set(rungs)) or rungs[0] < 1:
            raise ConfigError(f"ladder rungs must be increasing positive step counts, but got {list(rungs)}")
        self.path = Path(path)
        self.candidates = list(candidates)
        self.rungs = tuple(int(r) for r in rungs)
        self.eta = int(eta)
        if always_climb is None:
            always_climb = [c.id for c in self.candidates if "uniform" in c.origin.split(" = ")]
        self.always_climb = frozenset(always_climb)
        self.results: dict[tuple[str, int], RungResult] = {}
        if self.path.exists():
            self._load()

    def _identity(self) -> dict[str, Any]:
        return {"rungs": list(self.rungs), "eta": self.eta,
                "candidates": [c.to_dict() for c in self.candidates]}

    def _load(self) -> None:
        data = json.loads(self.path.read_text())
        old = {k: data.get(k) for k in ("rungs", "eta", "candidates")}
        if old != self._identity():
            raise ConfigError(
                f"{self.path} records a re-ranking of other candidates or rungs; remove it to re-rank afresh"
            )
        for item in data.get("results", []):
            result = RungResult(**item)
            self.results[(result.candidate, result.rung)] = result

    def _save(self) -> None:
        data = {**self._identity(), "results": [r.to_dict() for r in self.results.values()]}
        atomic_write_text(self.path, json.dumps(data, indent=1))

    def record(self, result: RungResult) -> None:
        """Store one finished rung (written to disk before anything else happens)."""
        if not 0 <= result.rung < len(self.rungs):
            raise ValueError(f"rung {result.rung} is not one of the ladder's {len(self.rungs)} rungs")
        self.results[(result.candidate, result.rung)] = result
        self._save()

    def entrants(self, rung: int) -> list[Candidate]:
        """Who runs rung ``rung``: everyone at rung 0, then those promoted from the rung before."""
        if rung == 0:
            return list(self.candidates)
        previous = self.entrants(rung - 1)
        if any((c.id, rung - 1) not in self.results for c in previous):
            raise RuntimeError(f"rung {rung - 1} is not finished, so nobody is promoted to rung {rung} yet")
        keep = math.ceil(len(previous) / self.eta)
        order = {c.id: i for i, c in enumerate(self.candidates)}
        ranked = sorted(previous, key=lambda c: (-self.results[(c.id, rung - 1)].val_acc, order[c.id]))
        promoted = ranked[:keep]
        promoted += [c for c in ranked[keep:] if c.id in self.always_climb]
        return promoted

    def pending(self, rung: int) -> list[Candidate]:
        """Entrants of ``rung`` without a recorded result."""
        return [c for c in self.entrants(rung) if (c.id, rung) not in self.results]

    def run(self, executor: RungExecutor, on_rung: Callable[[int, list[Candidate]], None] | None = None) -> Candidate:
        """Climb every rung (skipping what is recorded) and return the winner."""
        for rung in range(len(self.rungs)):
            todo = self.pending(rung)
            if on_rung is not None:
                on_rung(rung, todo)
            if todo:
                wanted = {c.id for c in todo}
                for result in executor(rung, todo):
                    if result.candidate in wanted:
                        self.record(result)
                missing = [c.id for c in self.pending(rung)]
                if missing:
                    raise RuntimeError(f"rung {rung} ended without results for {missing}")
        return self.winner()

    def highest_rung_reached(self) -> int:
        """The highest rung with at least one result (-1 when none)."""
        return max((rung for _, rung in self.results), default=-1)

    def winner(self) -> Candidate:
        """The best validation accuracy at the highest rung reached (ties: the earlier entrant)."""
        top = self.highest_rung_reached()
        if top < 0:
            raise RuntimeError("no rung of the ladder has finished yet")
        at_top = [c for c in self.candidates if (c.id, top) in self.results]
        return max(at_top, key=lambda c: (self.results[(c.id, top)].val_acc, -self.candidates.index(c)))

    def to_dict(self) -> dict[str, Any]:
        """The ladder for ``summary.json``: candidates, rungs, every result, who was promoted, the winner."""
        data = self._identity()
        data["results"] = [r.to_dict() for r in sorted(self.results.values(), key=lambda r: (r.rung, r.candidate))]
        promoted = []
        for rung in range(1, len(self.rungs)):
            try:
                promoted.append([c.id for c in self.entrants(rung)])
            except RuntimeError:
                break
        data["promoted"] = promoted
        if self.results:
            data["winner"] = self.winner().id
        return data
