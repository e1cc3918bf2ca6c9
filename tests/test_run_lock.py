"""One process per run directory, and a cluster address that does not answer is one line within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl_prune.errors import ConfigError
from automl_prune.parallel.address import check_cluster_address, host_and_port
from automl_prune.run.lock import run_dir_lock

HOLD = ("import sys, time; from automl_prune.run.lock import run_dir_lock\n"
        "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by process {holder.pid} on "):
            with run_dir_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(tmp_path):  # a killed holder leaves no stale lock
        assert f"process {os.getpid()}" in (tmp_path / ".lock").read_text()


def test_the_lock_is_released_after_the_block(tmp_path: Path) -> None:
    with run_dir_lock(tmp_path):
        pass
    with run_dir_lock(tmp_path):
        pass


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at --address '127.0.0.1:{port}'"):
        check_cluster_address(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 15


def test_an_address_that_listens_passes_and_forms_are_parsed() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_cluster_address(f"ray://127.0.0.1:{port}")
    assert host_and_port("auto") is None and host_and_port("10.0.0.2:6379") == ("10.0.0.2", 6379)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        host_and_port("nohostport")
