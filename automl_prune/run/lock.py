"""One process per run directory: an advisory lock held for the whole run, naming the process that holds it.

Two processes on one run directory (the same `search` started twice, or `resume` while it runs) would append to
one history and overwrite each other's checkpoints. The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``: the
kernel releases it when the holder exits, however it exits (kill -9 included), so a stale lock never blocks a
resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from automl_prune.errors import ConfigError

__all__ = ["LOCK_FILE", "run_dir_lock"]

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; `ConfigError` at once when another process holds it."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{run_dir} is in use by {holder}; wait for it to finish (or stop it), then resume, "
                              "or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the lock
