"""The re-ranking ladder as one Ray Tune experiment: a trial per (candidate, rung), in parallel workers.

The ladder is one Tune experiment ``RUN_DIR/tune/rerank``. Its trials are (candidate, rung) pairs suggested
by `LadderSearcher`, Tune's ask/tell interface over `automl_prune.scoring.ladder.Ladder`; each fine-tunes one
candidate to the rung's step (`automl_prune.scoring.rung_job.LadderJob.run_rung`), reporting and checkpointing every
``checkpoint_every`` steps. Promotion between rungs is decided by the ladder from the results recorded in the
run directory, not by a Tune scheduler such as ``ASHAScheduler``, because Tune does not restore a scheduler's
state after a crash (ray-project/ray#30838) and asynchronous promotion would depend on which worker finished
first. What Tune gives us: parallel single-thread workers, a trial that raises is retried from its last
checkpoint (``FailureConfig``), and a killed driver's experiment is restored (``Tuner.restore``) with
unfinished trials continuing from their checkpoints; finished ones are never re-run (each trial checks its
"done" file first, and Tune's own state is written on every trial event).

GPUs: each trial asks for ``gpus_per_worker`` of a GPU (fractions share one); the job in the object store is on
the CPU, and each trial runs on the device its worker was given (`automl_prune.train.device.worker_device`).
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from automl_prune.data.task import Task
from automl_prune.errors import AutoMLPruneError
from automl_prune.parallel.ray_session import RAY_ENV
from automl_prune.scoring.ladder import Candidate, Ladder, RungResult
from automl_prune.scoring.rung_job import LadderJob
from automl_prune.train.runtime import scoped_environ

__all__ = ["LadderSearcher", "TuneLadderExecutor"]

_TRAINER_FILE = "trainer.pt"


#: Jobs already fetched by this worker process (Tune reuses actors from trial to trial): the base model and the
#: data are deserialised once per worker, not once per trial.
_JOBS: dict[str, LadderJob] = {}


def _job(handle: list[Any]) -> LadderJob:
    import ray

    ref = handle[0]  # nested in a list so that Tune passes the reference itself, not the fetched object
    key = ref.hex()
    if key not in _JOBS:
        _JOBS.clear()
        _JOBS[key] = ray.get(ref)
    return _JOBS[key]


def _ladder_trial(config: dict[str, Any], job: list[Any], candidates: dict[str, Candidate]) -> None:
    """A Tune function trainable: one candidate, one rung (``job``: a list holding the job's object ref)."""
    import os

    import ray
    import torch
    from ray import tune

    from automl_prune.train.device import deterministic_run, use_device, worker_device
    from automl_prune.train.runtime import configure_torch

    configure_torch(1)
    ladder_job = _job(job)
    decision = worker_device(ray.get_gpu_ids())
    ladder_job.device = decision.device  # this worker's copy of the job: its GPU (Ray's), or the CPU
    placement = {"device": str(decision.device), "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    candidate = candidates[config["candidate"]]
    rung = int(config["rung"])
    progress_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            file = Path(folder) / _TRAINER_FILE
            if file.exists():
                progress_state = torch.load(file, map_location="cpu", weights_only=True)

    def save_progress(state: dict[str, Any]) -> None:
        # In the run directory, not the system temp folder: a worker killed mid-save leaves nothing outside it.
        scratch = ladder_job.folder(candidate.id)
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".checkpoint-") as folder:
            torch.save(state, Path(folder) / _TRAINER_FILE)
            tune.report({"steps": int(state["step"]), "done": False},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    with use_device(decision, precision=ladder_job.precision, deterministic=ladder_job.deterministic), \
            deterministic_run(ladder_job.deterministic):
        result = ladder_job.run_rung(candidate, rung, progress_state=progress_state, save_progress=save_progress)
    tune.report({**result.to_dict(), "resumed_from_step": int(progress_state["step"]) if progress_state else -1,
                 "done": True, **placement})


class LadderSearcher(Searcher):
    """Tune's ask/tell interface over a `Ladder`: suggests the next (candidate, rung) trial, records results.

    Trials of a rung are suggested while any are pending; the next rung's start once every entrant of the
    current one is recorded (``None`` = wait). Promotions are read from ``ladder.json``, so a restored
    experiment promotes exactly as an uninterrupted one would.
    """

    def __init__(self, ladder: Ladder) -> None:
        super().__init__()  # no metric: progress reports carry none; results are read by the ladder
        self.ladder = ladder
        self.live: dict[str, tuple[str, int]] = {}
        self.failed: list[tuple[str, int]] = []

    def _current_rung(self) -> int | None:
        for rung in range(len(self.ladder.rungs)):
            if self.ladder.pending(rung):
                return rung
        return None

    # Ray annotates `Searcher.suggest` as returning ``dict | None`` but documents returning `Searcher.FINISHED` too.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        """The next trial's config, ``None`` to wait for running trials, or FINISHED."""
        if self.failed:
            return Searcher.FINISHED
        rung = self._current_rung()
        if rung is None:
            return Searcher.FINISHED
        running = set(self.live.values())
        todo = [c for c in self.ladder.pending(rung) if (c.id, rung) not in running]
        if not todo:
            return None
        self.live[trial_id] = (todo[0].id, rung)
        return {"candidate": todo[0].id, "rung": rung}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Record a finished rung (before anything else is decided), or remember a failure."""
        key = self.live.pop(trial_id, None)
        if key is None:
            return
        if error or not result or not result.get("done"):
            self.failed.append(key)
            return
        self.ladder.record(RungResult(result["candidate"], int(result["rung"]), int(result["steps"]),
                                      float(result["val_acc"]), float(result["seconds"])))

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment state: the trials in flight (results are in ``ladder.json`` already)."""
        Path(checkpoint_path).write_text(json.dumps({"live": self.live}))

    def restore(self, checkpoint_path: str) -> None:
        """Continue: reread the records, keep the trials in flight (Tune resumes them)."""
        self.live = {k: (v[0], int(v[1])) for k, v in json.loads(Path(checkpoint_path).read_text())["live"].items()}
        self.ladder = Ladder(self.ladder.path, self.ladder.candidates, self.ladder.rungs, self.ladder.eta,
                             self.ladder.always_climb)
        self.failed = []


class TuneLadderExecutor:
    """Runs a whole ladder as one Tune experiment ``RUN_DIR/tune/rerank`` (Ray must be initialised).

    Args:
        job: The rung runner (put in Ray's object store once).
        workers: Trials at once (one CPU each); their actors are reused from trial to trial and rung to rung.
        max_failures: Retries of a trial that raises, each from its last checkpoint.
        verbose: Print a line per finished trial.
        gpus_per_worker: Each trial's share of a GPU (fractions allowed; 0: CPU trials); default: the run's
            (`automl_prune.train.device.current_gpus_per_worker`).
    """

    def __init__(self, job: LadderJob, workers: int, *, max_failures: int = 2, verbose: bool = True,
                 gpus_per_worker: float | None = None) -> None:
        from automl_prune.train.device import current_gpus_per_worker

        self.job = job
        self.workers = max(1, workers)
        self.gpus_per_worker = current_gpus_per_worker() if gpus_per_worker is None else float(gpus_per_worker)
        self.max_failures = max_failures
        self.verbose = verbose
        self.storage = (job.run_dir / "tune").resolve()
        self.path = self.storage / "rerank"

    def _job_ref(self) -> Any:
        import ray

        if getattr(self, "_ref", None) is None:
            import copy

            from automl_prune.parallel.ray_eval import on_cpu

            job = copy.copy(self.job)
            job.model = on_cpu(job.model)  # the object store holds CPU tensors only
            self._ref = ray.put(job)
        return self._ref

    @property
    def resources(self) -> dict[str, float]:
        """What each trial asks Ray for: one CPU, and its GPU share when there is one."""
        return {"cpu": 1, "gpu": self.gpus_per_worker} if self.gpus_per_worker > 0 else {"cpu": 1}

    def run(self, ladder: Ladder) -> Candidate:
        """Climb the ladder (continuing a killed experiment) and return the winner."""
        from ray import tune

        candidates = {c.id: c for c in ladder.candidates}
        trainable = tune.with_resources(
            tune.with_parameters(_ladder_trial, job=[self._job_ref()], candidates=candidates), self.resources
        )
        start = time.perf_counter()
        # Tune pickles its callbacks into the experiment's tuner.pkl: this one holds the task, not the job (whose
        # base model and data would make the run directory as large as the dataset).
        callbacks: list[Callback] = [_TrialLines(self.job.task, candidates, start)] if self.verbose else []
        restored = tune.Tuner.can_restore(str(self.path))
        with scoped_environ(RAY_ENV):
            if restored:
                self._log(f"restoring the re-ranking experiment {self.path}")
                tuner = tune.Tuner.restore(str(self.path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
            else:
                searcher = LadderSearcher(ladder)
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=searcher, max_concurrent_trials=self.workers,
                                                num_samples=len(candidates) * len(ladder.rungs),
                                                reuse_actors=True),
                    run_config=tune.RunConfig(
                        name=self.path.name,
                        storage_path=str(self.storage),
                        failure_config=tune.FailureConfig(max_failures=self.max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                        callbacks=callbacks,
                        verbose=0,
                    ),
                )
            # Tune installs its own Ctrl-C handler and leaves it behind: a later search in this process (the
            # Python API, a benchmark) would then swallow Ctrl-C. Put the caller's back.
            main_thread = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGINT) if main_thread else None
            try:
                grid = tuner.fit()
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
        results = [grid[i] for i in range(len(grid))]  # a ResultGrid is indexed, not declared iterable
        errors = [r.error for r in results if r.error is not None]
        # The records on disk are the truth (the searcher in a restored experiment is a copy).
        ladder = Ladder(ladder.path, ladder.candidates, ladder.rungs, ladder.eta, ladder.always_climb)
        pending = any(ladder.pending(rung) for rung in range(len(ladder.rungs)))
        if pending and not errors and restored and all((r.metrics or {}).get("done") for r in results):
            # The experiment had stopped on a trial that failed for good: Tune restores its search as finished,
            # so it re-runs the failed trials (from their checkpoints) but schedules nothing after them. The
            # ladder's records hold every finished rung: go on in a new experiment.
            print("the restored re-ranking experiment has nothing left to schedule (it had stopped on a failed "
                  "trial): going on in a new Tune experiment; finished rungs are kept", file=sys.stderr, flush=True)
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
            return self.run(ladder)
        for rung in range(len(ladder.rungs)):
            missing = [c.id for c in ladder.pending(rung)]
            if missing and not errors:
                # Tune stops an experiment on Ctrl-C and returns: the rung is unfinished, nothing failed.
                raise KeyboardInterrupt(f"re-ranking interrupted in rung {rung}")
            if missing:
                known = _user_facing(errors[0])
                if known is not None:  # a diverged fine-tune, a bad setting: one line, not a Tune traceback
                    raise known
                detail = f": {errors[0]}"
                raise RuntimeError(f"re-ranking rung {rung} has no result for {missing}{detail}")
        self.ladder = ladder
        return ladder.winner()

    def _log(self, message: str) -> None:
        if self.verbose:
            print(message, file=sys.stderr, flush=True)


class _TrialLines(Callback):
    """One progress line per finished trial (on stderr)."""

    def __init__(self, task: Task, candidates: dict[str, Candidate], start: float) -> None:
        self.task, self.candidates, self.start = task, candidates, start

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if not result.get("done"):
            return
        candidate = self.candidates[result["candidate"]]
        print(f"  rung {result['rung'] + 1}: {candidate.id} ({candidate.origin}) val "
              f"{self.task.format_score(result['val_acc'])} "
              f"after {result['steps']} steps [{time.perf_counter() - self.start:.0f} s]", file=sys.stderr, flush=True)


def _user_facing(error: BaseException) -> AutoMLPruneError | None:
    """The project's own error inside a failed trial's (Ray wraps it in its task and Tune errors), if any."""
    seen: set[int] = set()
    found: AutoMLPruneError | None = None
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, AutoMLPruneError):
            found = current  # the deepest one is the original (Ray's wrapper also passes isinstance)
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return found
