"""A phase's wall time is summed over the processes that worked on it (a resumed run counts the earlier time)."""

from __future__ import annotations

import json
from pathlib import Path

from automl_prune.run.wall_clock import WallClock


def test_a_new_clock_counts_on_from_the_recorded_seconds(tmp_path: Path) -> None:
    path = tmp_path / "search_seconds.json"
    first = WallClock(path)
    assert first.before == 0.0
    recorded = first.save()
    assert json.loads(path.read_text())["seconds"] == recorded
    path.write_text(json.dumps({"seconds": 120.0}))  # an earlier process searched two minutes
    second = WallClock(path)
    assert second.before == 120.0
    assert 120.0 <= second.total() < 121.0
    assert second.save() >= 120.0 and json.loads(path.read_text())["seconds"] >= 120.0


def test_an_unreadable_record_counts_as_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rerank_seconds.json"
    path.write_text("{not json")
    assert WallClock(path).before == 0.0
