"""Start (or join) Ray for one run, with every file it writes inside the run directory, and stop it after.

Traps of Ray 2.60 this module exists for (checked in its source and by trial on the project's machines):

- Ray's temp/session folder holds a Unix socket whose path must stay under 107 bytes, so the folder's path must
  be short (about 40 characters). The folder is always ``RUN_DIR/.ray``; when that path is too long, Ray is
  given a short symbolic link to it in the system temp folder (or ``/tmp``), named in the log and removed at
  the end: the only thing a run puts outside its run directory, and only for deep run directories.
- Lock files follow ``RAY_TMPDIR``; a new local cluster writes ``~/.ray/auth_token`` unless
  ``RAY_AUTH_MODE=disabled``; ``ray.init()`` without ``address="local"`` silently joins whatever cluster
  ``RAY_ADDRESS`` names. These environment variables are set only while Ray starts (its processes inherit
  them) and restored afterwards, so the caller's process is left as it was.
- After a SIGKILL of the driver some of Ray's processes outlive it for minutes. The processes a run starts are
  recorded (PID and start time) in ``RUN_DIR/.ray/started_pids.json``; a resume kills those still alive with
  the same start time (never by name, never another run's), then starts afresh.
- Tune writes its experiment state only every 10 s or more by default: after a SIGKILL of the driver,
  finished trials would run again. ``TUNE_GLOBAL_CHECKPOINT_S=0`` makes it write on every trial event.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from automl_prune.errors import ConfigError
from automl_prune.train.runtime import scoped_environ

__all__ = ["ray_session", "ray_temp_dir"]

# The plasma socket path: <temp>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store (~62 characters after
# the temp dir) must stay under 107 bytes.
_MAX_TEMP_DIR = 42

#: Environment for Ray's processes and for Tune in the driver (set while Ray starts and Tune runs).
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    # Saving the experiment state on every trial event is the point (see above): no warning about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_DISABLE_AUTO_INIT": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Workers run one torch thread each (see automl_prune.train.runtime); OpenMP must not spin against the other.
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "AUTOML_PRUNE_THREADS": "1",
}


def _driver_pythonpath() -> str:
    """The driver's import path for the workers: a user's model class is pickled by reference to its module
    (``--model package.module:factory``, or a class defined in a test file), which the workers must import."""
    outside = (os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix))
    paths = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)
                             and not os.path.realpath(p).startswith(outside)]
    existing = os.environ.get("PYTHONPATH")
    if existing:
        paths.append(existing)
    return os.pathsep.join(dict.fromkeys(paths))


def ray_temp_dir(run_dir: str | Path) -> tuple[Path, Path | None]:
    """Ray's temp folder for ``run_dir`` (inside it), and a short link to it when its own path is too long."""
    inside = Path(run_dir).resolve() / ".ray"
    if len(str(inside)) <= _MAX_TEMP_DIR:
        return inside, None
    digest = hashlib.sha1(str(inside).encode()).hexdigest()[:8]
    for base in (Path(tempfile.gettempdir()), Path("/tmp")):
        link = base.resolve() / f"ap-ray-{digest}"
        if len(str(link)) <= _MAX_TEMP_DIR:
            return inside, link
    raise ConfigError(f"no folder with a path short enough for Ray's sockets; use a shorter --out than {run_dir}")


def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _record_started(record: Path) -> None:
    """Remember the Ray processes this run started (PID and start time), for a resume to clean up."""
    pids = [{"pid": pid, "start": _proc_start_time(pid)} for pid in _descendants(os.getpid())]
    record.write_text(json.dumps([p for p in pids if p["start"] is not None]))


def _stop_leftovers(record: Path) -> int:
    """Kill the processes a killed earlier run started that still live (same PID *and* start time)."""
    if not record.exists():
        return 0
    try:
        entries = json.loads(record.read_text())
    except (OSError, ValueError):
        return 0
    killed = 0
    for entry in entries:
        if _proc_start_time(int(entry["pid"])) == entry["start"]:
            with contextlib.suppress(OSError):
                os.kill(int(entry["pid"]), signal.SIGKILL)
                killed += 1
    record.unlink(missing_ok=True)
    return killed


@contextlib.contextmanager
def ray_session(run_dir: str | Path, workers: int, address: str | None = None, *, log: bool = True,
                gpus: int = 0, visible_gpus: str | None = None) -> Iterator[None]:
    """Ray for one run: a private local cluster of ``workers`` CPUs and ``gpus`` GPUs (the count the run found:
    `automl_prune.train.device.gpu_count`), or the cluster at ``address``.

    ``visible_gpus`` (``--device cuda:N``: ``"N"``) is the ``CUDA_VISIBLE_DEVICES`` Ray's processes start with, so
    Ray hands its workers only that GPU. A Ray already initialised in this process (a user's own session) is used
    as it is and left running.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address is not None:
        with scoped_environ({k: v for k, v in RAY_ENV.items() if k.startswith(("TUNE_", "RAY_AIR", "RAY_DEDUP"))}):
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at --address {address!r}: {exc}") from exc
        try:
            yield
        finally:
            ray.shutdown()
        return
    if workers < 1:
        raise ValueError(f"a local Ray needs `workers >= 1`, but got {workers=}")
    inside, link = ray_temp_dir(run_dir)
    inside.mkdir(parents=True, exist_ok=True)
    record = inside / "started_pids.json"
    leftovers = _stop_leftovers(record)
    if leftovers and log:
        print(f"stopped {leftovers} Ray processes left running by the interrupted run", file=sys.stderr, flush=True)
    temp = inside
    if link is not None:
        # Ray's files stay in the run directory; only this symbolic link (removed at the end) lies outside.
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(inside, target_is_directory=True)
        temp = link
        if log:
            print(f"Ray's sockets are reached through the short link {temp} -> {inside} (the run directory's path "
                  "is too long for them); removed when the run ends", file=sys.stderr, flush=True)
    # torch's compile caches default to the system temp folder: keep them in Ray's folder too.
    caches = {"TORCHINDUCTOR_CACHE_DIR": str(temp / "torchinductor"), "TRITON_CACHE_DIR": str(temp / "triton")}
    # Kept for the whole session, not only while Ray starts: Tune takes file locks under RAY_TMPDIR too.
    visible = {"CUDA_VISIBLE_DEVICES": visible_gpus} if visible_gpus is not None else {}
    with scoped_environ({**RAY_ENV, **caches, **visible, "RAY_TMPDIR": str(temp), "PYTHONPATH": _driver_pythonpath()}):
        ray.init(address="local", num_cpus=workers, num_gpus=max(0, int(gpus)), include_dashboard=False,
                 _temp_dir=str(temp), log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
        _record_started(record)
        try:
            yield
        finally:
            ray.shutdown()
            record.unlink(missing_ok=True)
            if link is not None and link.is_symlink():
                link.unlink()
