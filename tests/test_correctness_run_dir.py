"""A run directory is one run: a second process is refused with the holder named, and a time limit is the run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from automl_prune.cli import main

TINY = ["--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.2", "--workers", "0",
        "--no-progress", "--rerank-top-k", "0", "--finetune-epochs", "0.05"]


def test_a_second_search_on_a_running_run_directory_is_refused(tmp_path: Path, capsys) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["search", *TINY, "--episodes", "400", "--agent", "random", "--out", str(run), "--cache-dir", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen([sys.executable, "-m", "automl_prune.cli", *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (run / "history.jsonl").exists():  # the first process holds the run and is searching
            assert first.poll() is None and time.monotonic() < deadline, "the first search ended or never started"
            time.sleep(0.2)
        lines = len((run / "history.jsonl").read_text().splitlines())
        for second in (argv, ["resume", str(run)]):
            assert main(second) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"in use by process {first.pid}" in err, err
        assert first.poll() is None
        assert len((run / "history.jsonl").read_text().splitlines()) >= lines  # nothing was rewritten
    finally:
        first.kill()
        first.wait()


def test_a_resumed_run_does_not_get_a_second_time_limit(tmp_path: Path, capsys) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["search", *TINY, "--episodes", "500", "--agent", "random", "--time-limit", "3s", "--out", str(run),
            "--cache-dir", str(cache)]
    assert main(argv) == 0
    history = run / "history.jsonl"
    first = len(history.read_text().splitlines())
    assert 0 < first < 500
    assert json.loads((run / "summary.json").read_text())["stopped_by_time_limit"] is True
    assert main(["resume", str(run)]) == 0
    assert len(history.read_text().splitlines()) == first
    assert "was spent by the earlier processes of this run" in capsys.readouterr().err


def test_changing_the_ladder_of_a_run_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    from automl_prune.config import SearchConfig

    (run / "config.json").write_text(json.dumps(SearchConfig(model="tiny-cnn", dataset="synthetic",
                                                             out=str(run)).to_dict()))
    code = main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--rerank-top-k", "5", "--out", str(run)])
    assert code == 2 and "rerank_top_k: 3 -> 5" in capsys.readouterr().err
