"""`history.jsonl` after a crash mid-write: nothing before or after the torn line is lost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agents import HistoryEntry, SearchHistory
from search_spaces import Architecture


def _entry(index: int) -> HistoryEntry:
    return HistoryEntry(index=index, architecture=Architecture({"conv": 4 + index}),
                        metrics={"accuracy": 0.5, "flops": 100 + index}, searcher="test", time=time.time())


def test_torn_last_line_is_cut_and_later_appends_survive_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history = SearchHistory(path)
    history.append(_entry(0))
    history.append(_entry(1))
    torn = json.dumps(_entry(2).to_dict())[:40]  # a crash in the middle of the third write
    with path.open("a") as handle:
        handle.write(torn)

    with pytest.warns(RuntimeWarning, match="torn last line"):
        resumed = SearchHistory(path)
    assert [e.index for e in resumed.entries] == [0, 1]
    resumed.append(_entry(2))
    resumed.append(_entry(3))

    reloaded = SearchHistory(path)
    assert [e.index for e in reloaded.entries] == [0, 1, 2, 3]
    assert [e.architecture for e in reloaded.entries] == [e.architecture for e in resumed.entries]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_unreadable_middle_line_is_skipped_and_reported_not_the_end_of_the_history(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = [json.dumps(_entry(0).to_dict()), '{"index": 1, "sea', json.dumps(_entry(2).to_dict())]
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(RuntimeWarning, match=r"skipped unreadable line\(s\) \[2\]"):
        history = SearchHistory(path)
    assert [e.index for e in history.entries] == [0, 2]


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(_entry(0).to_dict()))
    history = SearchHistory(path)
    history.append(_entry(1))
    assert [e.index for e in SearchHistory(path).entries] == [0, 1]
