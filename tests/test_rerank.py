"""The re-ranking ladder's rules, with a fake evaluator: who enters, who is promoted, who wins, and resume."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from automl_prune.errors import ConfigError
from automl_prune.scoring.ladder import Candidate, Ladder, RungResult, plan_rungs, select_candidates
from search_spaces import Architecture


def _arch(width: int) -> Architecture:
    return Architecture({"conv1": width, "conv2": width})


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(f"c{i}", _arch(i + 1), f"search #{i}", 0.5, 100) for i in range(n)]


class FakeFineTune:
    """Validation accuracy of candidate ``ci`` at rung r is ``scores[i][r]``; records every call."""

    def __init__(self, scores: dict[str, list[float]], fail_after: int | None = None) -> None:
        self.scores = scores
        self.calls: list[tuple[int, str]] = []
        self.fail_after = fail_after

    def __call__(self, rung: int, todo: Sequence[Candidate]) -> Iterator[RungResult]:
        for candidate in todo:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise KeyboardInterrupt  # the driver is killed mid-rung
            self.calls.append((rung, candidate.id))
            yield RungResult(candidate.id, rung, 10 * (rung + 1), self.scores[candidate.id][rung], 0.1)


def test_plan_rungs_is_geometric_and_ends_at_the_fine_tune() -> None:
    assert plan_rungs(430, 3, 3) == (48, 143, 430)
    assert plan_rungs(100, 2, 2) == (50, 100)
    assert plan_rungs(2, 4, 3) == (1, 2)  # merged where they round together
    with pytest.raises(ConfigError, match="rerank_eta"):
        plan_rungs(100, 3, 1)


def test_uniform_always_enters_and_duplicates_are_merged() -> None:
    ranked = [(_arch(3), 0.7, 90), (_arch(5), 0.9, 95), (_arch(3), 0.7, 90), (_arch(4), 0.8, 99)]
    chosen = select_candidates(ranked, top_k=2, uniform=(_arch(9), 0.1, 98))
    assert [c.origin for c in chosen] == ["search #1", "search #3", "uniform"]
    # The search found the uniform architecture itself: one entrant, both origins named.
    chosen = select_candidates(ranked, top_k=3, uniform=(_arch(5), 0.9, 95), widened=(_arch(7), 0.95, 100))
    assert [c.origin for c in chosen] == ["search #1 = uniform", "search #3", "search #0", "widened best"]
    # Even with no search candidates at all, uniform is re-ranked.
    assert [c.origin for c in select_candidates([], top_k=3, uniform=(_arch(2), None, 10))] == ["uniform"]


def test_promotes_the_best_third_each_rung_and_picks_the_best_at_the_top(tmp_path: Path) -> None:
    scores = {  # rung 0 ranks c4 > c2 > c0 ..., rung 1 flips c4 and c2
        "c0": [0.60, 0, 0], "c1": [0.50, 0, 0], "c2": [0.70, 0.80, 0.86],
        "c3": [0.40, 0, 0], "c4": [0.75, 0.78, 0.90], "c5": [0.65, 0, 0],
    }
    fake = FakeFineTune(scores)
    ladder = Ladder(tmp_path / "ladder.json", _candidates(6), rungs=(10, 30, 90), eta=3)
    winner = ladder.run(fake)
    assert [c.id for c in ladder.entrants(1)] == ["c4", "c2"]  # ceil(6 / 3) = 2
    assert [c.id for c in ladder.entrants(2)] == ["c2"]  # ceil(2 / 3) = 1: c2 was better at rung 1
    assert winner.id == "c2"  # the only one at the highest rung, although c4 scores more there (never run)
    assert fake.calls == [(0, f"c{i}") for i in range(6)] + [(1, "c4"), (1, "c2"), (2, "c2")]
    data = ladder.to_dict()
    assert data["promoted"] == [["c4", "c2"], ["c2"]] and data["winner"] == "c2"


def test_uniform_climbs_every_rung_even_when_an_early_rung_ranks_it_last(tmp_path: Path) -> None:
    candidates = [*_candidates(5), Candidate("c5", _arch(9), "uniform", 0.1, 100)]
    scores = {  # uniform is last at rung 0, below c2 at rung 1 and at the top
        "c0": [0.60, 0, 0], "c1": [0.50, 0, 0], "c2": [0.70, 0.80, 0.84],
        "c3": [0.40, 0, 0], "c4": [0.75, 0.78, 0.90], "c5": [0.30, 0.70, 0.82],
    }
    fake = FakeFineTune(scores)
    ladder = Ladder(tmp_path / "ladder.json", candidates, rungs=(10, 30, 90), eta=3)
    winner = ladder.run(fake)
    assert [c.id for c in ladder.entrants(1)] == ["c4", "c2", "c5"]  # the best ceil(6 / 3) = 2, then uniform
    assert [c.id for c in ladder.entrants(2)] == ["c2", "c5"]  # the best ceil(3 / 3) = 1, then uniform
    assert winner.id == "c2"  # c4 (0.90) never reached the top: c2 beat it at rung 1
    scores["c5"][2] = 0.95
    other = Ladder(tmp_path / "other.json", candidates, rungs=(10, 30, 90), eta=3)
    assert other.run(FakeFineTune(scores)).id == "c5"  # the search's pick loses to uniform: uniform is handed back
    # A merged entrant ("search #3 = uniform") is uniform too; without uniform nothing extra climbs.
    merged = [Candidate("c0", _arch(1), "search #0", 0.5, 1), Candidate("c1", _arch(2), "search #3 = uniform", 0.4, 1)]
    assert Ladder(tmp_path / "m.json", merged, rungs=(10, 20), eta=2).always_climb == {"c1"}
    assert Ladder(tmp_path / "n.json", _candidates(3), rungs=(10, 20), eta=2).always_climb == frozenset()


def test_winner_is_the_best_at_the_highest_rung_reached(tmp_path: Path) -> None:
    scores = {"c0": [0.9, 0.5], "c1": [0.8, 0.6], "c2": [0.1, 0.0], "c3": [0.2, 0.0]}
    ladder = Ladder(tmp_path / "ladder.json", _candidates(4), rungs=(10, 20), eta=2)
    assert ladder.run(FakeFineTune(scores)).id == "c1"  # better than c0 at rung 1, worse at rung 0


def test_a_killed_reranking_resumes_without_rerunning_finished_rungs(tmp_path: Path) -> None:
    scores = {f"c{i}": [0.1 * i, 0.1 * i + 0.05, 0.1 * i + 0.07] for i in range(6)}
    path = tmp_path / "ladder.json"
    first = FakeFineTune(scores, fail_after=7)  # all of rung 0 and one trial of rung 1 finish
    with pytest.raises(KeyboardInterrupt):
        Ladder(path, _candidates(6), rungs=(10, 30, 90), eta=3).run(first)
    assert len(first.calls) == 7

    second = FakeFineTune(scores)
    winner = Ladder(path, _candidates(6), rungs=(10, 30, 90), eta=3).run(second)
    assert second.calls == [(1, "c4"), (2, "c5")]  # c5's rung 1 was recorded before the kill
    assert winner.id == "c5"

    with pytest.raises(ConfigError, match="other candidates or rungs"):
        Ladder(path, _candidates(5), rungs=(10, 30, 90), eta=3)
