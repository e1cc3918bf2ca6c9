"""The re-ranking ladder on Ray Tune: a trial that raises is retried from its checkpoint, a killed driver is
resumed without redoing finished trials, and nothing is written outside the run and cache directories.

Each test runs the CLI in a subprocess with HOME and TMPDIR pointed at empty folders, as on a user's machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl_prune.scoring.rung_job import FAIL_ONCE_ENV, FAIL_WHILE_ENV

# 14 steps per epoch on the synthetic set: 30 epochs = 420 steps, rungs (47, 140, 420); a rung saves progress
# every 100 steps from its start (rung 1 ends before its first save; rung 2 saves at 240 and 340), so a trial of
# the last rung can fail or be killed midway. Two re-ranked candidates (the search's best and uniform).
SEARCH = ["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "1", "--flops", "0.5",
          "--agent", "random", "--episodes", "6", "--finetune-epochs", "30", "--rerank-top-k", "1", "--workers", "2",
          "--no-progress", "--criterion", "l1"]  # the criterion is not under test here; l1 needs no calibration


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "TMPDIR": str(tmp), "AUTOML_PRUNE_THREADS": "1", **extra}


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "automl_prune.cli", *argv]


def _nothing_outside(tmp_path: Path) -> None:
    leftovers = [p for d in ("home", "tmp") for p in (tmp_path / d).rglob("*")]
    assert leftovers == [], f"files written outside the run and cache directories: {leftovers[:5]}"


def _done_files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): p.read_text() for p in sorted((run / "rerank").glob("*/rung*.json"))}


def test_a_trial_that_raises_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    # Short paths: Ray's sockets live in RUN_DIR/.ray and must stay under ~107 bytes.
    run, cache, marker = tmp_path / "r", tmp_path / "c", tmp_path / "failed-once"
    env = _env(tmp_path, **{FAIL_ONCE_ENV: str(marker)})
    done = subprocess.run(_cli(*SEARCH, "--out", str(run), "--cache-dir", str(cache)), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.exists(), "the injected failure never fired"
    resumed = list((run / "rerank").glob("*/resumed.log"))
    assert resumed, "the failed trial started over instead of continuing from its checkpoint"
    assert "rung 2 continued from step 240" in resumed[0].read_text()  # the first progress save
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rerank"]["winner"] == summary["chosen"]["id"]
    assert (run / "best" / "arch.json").exists() and (run / "ladder.png").stat().st_size > 0
    _nothing_outside(tmp_path)


def test_a_run_whose_trials_failed_for_good_resumes_to_the_end(tmp_path: Path) -> None:
    run, cache, marker = tmp_path / "r", tmp_path / "c", tmp_path / "broken"
    marker.write_text("every rung fails while this file exists\n")
    env = _env(tmp_path, **{FAIL_WHILE_ENV: str(marker)})
    search = [*SEARCH, "--out", str(run), "--cache-dir", str(cache)]
    search[search.index("--finetune-epochs") + 1] = "10"
    failed = subprocess.run(_cli(*search), env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0 and "re-ranking failed" in failed.stderr, failed.stderr[-3000:]
    marker.unlink()  # the cause is fixed
    done = subprocess.run(_cli("resume", str(run)), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Tune restores a search that stopped on a failure as finished: the rest goes on in a new experiment.
    assert "going on in a new Tune experiment" in done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rerank"]["winner"] == summary["chosen"]["id"]
    _nothing_outside(tmp_path)


def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    run, cache = tmp_path / "r", tmp_path / "c"
    env = _env(tmp_path)
    assert subprocess.run(_cli("pretrain", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs",
                               "1", "--cache-dir", str(cache), "--no-progress"), env=env, timeout=300).returncode == 0
    proc = subprocess.Popen(_cli(*SEARCH, "--out", str(run), "--cache-dir", str(cache)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    # Kill once a trial of the last rung (280 steps) has saved progress midway: it is still running then.
    while time.monotonic() < deadline:
        last_rung = list((run / "tune" / "rerank").glob("*rung=2*/checkpoint_*"))
        if last_rung and not (run / "summary.json").exists():
            time.sleep(0.5)  # let Tune's experiment state take in the checkpoint
            break
        if proc.poll() is not None:
            pytest.fail("the search finished before it could be killed")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the search never reached its last rung")
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's own processes notice and go
    proc.wait()
    before = _done_files(run)
    assert before and not (run / "summary.json").exists()
    started = json.loads((run / ".ray" / "started_pids.json").read_text())
    assert started, "the run did not record the Ray processes it started"
    mtimes = {name: (run / name).stat().st_mtime_ns for name in before}

    done = subprocess.run(_cli("resume", str(run)), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _done_files(run)
    for name, text in before.items():  # finished trials were not run again
        assert after[name] == text and (run / name).stat().st_mtime_ns == mtimes[name]
    assert len(after) > len(before)
    from automl_prune.parallel.ray_session import _proc_start_time

    alive = [p for p in started if _proc_start_time(p["pid"]) == p["start"]]
    assert alive == [], "Ray processes of the killed run are still running after the resume"
    resumed = [p.read_text() for p in (run / "rerank").glob("*/resumed.log")]
    steps = [int(line.rsplit(" ", 1)[1]) for text in resumed for line in text.splitlines()]
    assert steps and all(140 < step < 420 for step in steps), (resumed, done.stderr[-2000:])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rerank"]["winner"] == summary["chosen"]["id"]
    assert (run / "best" / "arch.json").exists()
    _nothing_outside(tmp_path)


def test_search_joins_an_existing_ray_cluster(tmp_path: Path) -> None:
    """`--address` uses a running cluster (here: a head node on 127.0.0.1 started by the test) and stops only it."""
    import shutil
    import socket
    import tempfile

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="apc", dir="/tmp"))  # short: Ray's socket paths must stay < 107 bytes
    env = _env(tmp_path, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(temp))
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--temp-dir", str(temp)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run, cache = tmp_path / "r", tmp_path / "c"
        argv = [arg for arg in SEARCH if arg not in ("--workers", "2")]
        argv[argv.index("--finetune-epochs") + 1] = "1"
        deadline = time.monotonic() + 120
        while True:  # the head node needs a few seconds before it accepts drivers
            done = subprocess.run(_cli(*argv, "--out", str(run), "--cache-dir", str(cache), "--workers", "2",
                                       "--address", f"127.0.0.1:{port}"), env=env, capture_output=True, text=True,
                                  timeout=600)
            if done.returncode == 0 or time.monotonic() > deadline or "cannot join" not in done.stderr:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stderr[-3000:]
        assert head.poll() is None, "the search must leave the cluster it joined running"
        assert not (run / ".ray").exists(), "a joined cluster's session files are the cluster's, not the run's"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rerank"]["winner"] == summary["chosen"]["id"]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # exactly the cluster this test started
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_search_in_process_leaves_the_ctrl_c_handler_as_it_was(tmp_path: Path) -> None:
    import signal as signals

    from automl_prune.cli import main

    before = signals.getsignal(signals.SIGINT)
    code = main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.3",
                 "--flops", "0.5", "--agent", "random", "--episodes", "2", "--finetune-epochs", "0.2",
                 "--workers", "1", "--rerank-top-k", "1", "--no-progress", "--out", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 0
    assert signals.getsignal(signals.SIGINT) is before  # Ctrl-C still interrupts the next search here


def test_the_saved_tune_experiment_does_not_carry_the_data(tmp_path: Path) -> None:
    # With progress lines on (the default), the line-per-trial callback is part of what Tune pickles into
    # tuner.pkl for restore; it once held the whole ladder job, so the file was as large as the dataset.
    run, cache = tmp_path / "r", tmp_path / "c"
    argv = ["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.2", "--agent",
            "random", "--episodes", "2", "--finetune-epochs", "0.05", "--rerank-top-k", "1", "--workers", "2",
            "--out", str(run), "--cache-dir", str(cache)]
    done = subprocess.run(_cli(*argv), env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rung 1:" in done.stderr  # the progress lines were on
    assert (run / "tune" / "rerank" / "tuner.pkl").stat().st_size < 64_000  # the synthetic data is 2.5 MB
    assert (run / "best" / "arch.json").exists()
    _nothing_outside(tmp_path)


def test_ray_workers_receive_the_users_loaders_not_a_copy_of_the_data(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import automl_prune
    from automl_prune.data.datasets import load_dataset
    from automl_prune.models import build_model

    splits = load_dataset("synthetic", seed=0)
    model = build_model("tiny-cnn", splits.spec.in_channels, splits.spec.num_classes, splits.spec.input_size)
    train = DataLoader(TensorDataset(splits.train.images, splits.train.labels), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(splits.val.images, splits.val.labels), batch_size=100)
    torch.manual_seed(0)
    result = automl_prune.search(model.eval(), train, val, flops=0.5, agent="random", episodes=3, workers=2,
                                 out=tmp_path / "run",
                                 cache_dir=tmp_path / "cache", criterion="l1", rerank_top_k=1, finetune_epochs=0.2,
                                 progress=False)
    assert result.metrics["compressed"]["flops"] <= 0.5 * result.metrics["base"]["flops"]
    assert (tmp_path / "run" / "tune" / "rerank" / "tuner.pkl").stat().st_size < 64_000
    assert (tmp_path / "run" / "best" / "arch.json").exists()
