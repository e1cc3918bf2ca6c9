"""Every agent end to end through the CLI, and an Optuna search killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from automl_prune.cli import main

TINY = ["--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "1", "--no-progress",
        "--flops", "0.5", "--finetune-epochs", "0.1", "--workers", "0"]
AGENT_OPTIONS = {
    "dmcp": ["--agent-option", "steps=30", "--agent-option", "warmup_steps=10"],
    "ddpg": ["--agent-option", "warmup_episodes=2"],
}


@pytest.mark.parametrize("agent", ["ddpg", "ppo", "optuna", "optuna-mo", "dmcp"])
def test_every_agent_runs_end_to_end(agent: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["search", *TINY, "--agent", agent, "--episodes", "4", "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(run), *AGENT_OPTIONS.get(agent, [])])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert arch["flops"] <= int(0.5 * arch["base_flops"])
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == summary["evaluations"] >= 4
    assert all(entry["metrics"]["flops"] <= int(0.5 * arch["base_flops"]) for entry in history)
    if agent == "optuna-mo":
        front = json.loads((run / "pareto.json").read_text())
        assert front and (run / "pareto.png").stat().st_size > 0


def test_optuna_search_killed_then_resumed_by_the_same_command(tmp_path: Path) -> None:
    cache, run = tmp_path / "cache", tmp_path / "run"
    argv = ["search", *TINY, "--agent", "optuna", "--episodes", "60", "--cache-dir", str(cache), "--out", str(run)]
    assert main(["pretrain", *TINY[:6], "--cache-dir", str(cache)]) == 0  # cache the base model first
    env = {**os.environ, "AUTOML_PRUNE_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "automl_prune.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = run / "history.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if history.exists() and len(history.read_text().splitlines()) >= 5:
            break
        if proc.poll() is not None:
            pytest.fail("the search finished before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    assert 5 <= len(before) < 60
    clock = run / "search_seconds.json"
    killed_seconds = json.loads(clock.read_text())["seconds"]  # saved at every evaluation
    assert killed_seconds > 0
    # As if the killed process had searched 1000 s longer: the resumed run's summary must count that time.
    clock.write_text(json.dumps({"seconds": killed_seconds + 1000}))

    assert main(argv) == 0  # the same command again
    summary = json.loads((run / "summary.json").read_text())
    assert summary["search_seconds"] > killed_seconds + 1000
    after = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(after) == 60
    assert [e["architecture"] for e in after[: len(before)]] == [e["architecture"] for e in before]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 60
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
