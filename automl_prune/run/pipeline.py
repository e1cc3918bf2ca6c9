"""The search application: base model -> search -> re-rank -> finish and export -> summary.

Everything is written under the run directory (``config.out``) except the cached base model (``cache_dir``);
a run directory that already holds a search with the same settings is resumed. Each stage is a module of
`automl_prune.run`; this one strings them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.run.base_model import (
    LATENCY_TABLE_FILE,
    BaseModel,
    base_identity,
    check_base_identity,
    load_base,
    log,
    with_latency_cost,
)
from automl_prune.run.finish import finish_run
from automl_prune.run.lock import run_dir_lock
from automl_prune.run.rerank_stage import rerank_candidates
from automl_prune.run.run_dir import check_run_dir, write_json
from automl_prune.run.search_stage import (
    calibration_data,
    evaluator_kwargs,
    make_evaluator,
    profile_options,
    run_budget,
    spend_leftover_budget,
    start_options,
)
from automl_prune.run.wall_clock import WallClock

if TYPE_CHECKING:
    from agents import SearchContext

__all__ = ["run_search"]


def run_search(config: SearchConfig, base: BaseModel | None = None) -> dict[str, Any]:
    """Run a whole search as configured; see `_run_search`. Leaves the caller's environment as it was.

    Args:
        config: The settings.
        base: The trained base model with its data (the Python API's); ``None``: loaded as configured.
    """
    from automl_prune.train.device import deterministic_run, resolve_device, use_device
    from automl_prune.train.runtime import scoped_environ

    # One device for every stage, decided before anything is written (a CUDA setting without a GPU: one line).
    decision = resolve_device(config.device)
    _check_gpu_workers(config)
    # FLOP counting imports torch._dynamo, which creates a compile cache in the system temp folder: keep it in
    # the cache directory the user chose (set only for this call; an explicit setting of the user's wins).
    caches = {} if "TORCHINDUCTOR_CACHE_DIR" in os.environ else {
        "TORCHINDUCTOR_CACHE_DIR": str((Path(config.cache_dir) / "torchinductor").resolve())}
    with scoped_environ(caches), deterministic_run(config.deterministic), \
            use_device(decision, precision=config.precision, gpus_per_worker=config.resolved_gpus_per_worker,
                       deterministic=config.deterministic):
        return _run_search(config, base)


def _device_line(config: SearchConfig) -> str:
    """The log line that says where the run computes and why (said once every setting has been checked)."""
    from automl_prune.train.device import resolve_device, resolve_precision

    decision = resolve_device(config.device)
    return (f"device: {decision}; precision {resolve_precision(config.precision, decision.device).name}"
            + ("; deterministic" if config.deterministic else ""))


def _check_gpu_workers(config: SearchConfig) -> None:
    """Ray workers asking for GPU shares must fit the GPUs of a local Ray (an actor that does not fit would wait
    forever); a cluster (``address``, or a Ray the caller started) has GPUs of its own, not checked here."""
    share = config.resolved_gpus_per_worker
    if config.resolved_workers == 0 or share == 0 or config.address is not None:
        return
    import ray

    if ray.is_initialized():
        return
    gpus = config.gpu_count
    if gpus == 0:
        raise ConfigError(f"`gpus_per_worker` {share:g} asks for GPUs, but this machine has none that works "
                          f"(--device {config.device}); give --gpus-per-worker 0 or --device cpu")
    if config.resolved_workers * share > gpus + 1e-9:
        raise ConfigError(f"{config.resolved_workers} workers x {share:g} GPU each need "
                          f"{config.resolved_workers * share:g} GPUs, but the run has {gpus}; give fewer --workers "
                          "or a smaller --gpus-per-worker")


def _run_search(config: SearchConfig, base: BaseModel | None = None) -> dict[str, Any]:
    """Run a whole search as configured; returns the summary (also written to ``RUN_DIR/summary.json``).

    Stages: base model -> search (proxy scores) -> re-ranking ladder (the top candidates, uniform and the
    widened best, fine-tuned in rungs; the top rung is the final fine-tune) -> test -> export -> summary.
    Every setting is checked and the data loaded before anything is written to the run directory.
    """

    from agents import SEARCHERS, SearchContext
    from automl_prune.prune.criteria import get_criterion

    SEARCHERS.get(config.agent)  # fail on a bad name before any work
    get_criterion(config.resolved_criterion)
    if config.resolved_workers > 0:
        from automl_prune.parallel.address import check_cluster_address

        check_cluster_address(config.address)  # seconds, not the minute ray.init would wait
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is an existing file; give a directory (new or a run to resume)")
    resuming = check_run_dir(config, run_dir)

    if base is None:
        base = load_base(config)
    base.task.check(config.resolved_workers)  # functions Ray workers cannot receive are refused before writing
    from automl_prune.scoring.rung_job import FineTuneRecipe

    batch = FineTuneRecipe.batch_size
    from automl_prune.data.loader_split import LoaderSplit

    if isinstance(base.splits.train, LoaderSplit):
        if config.finetune_epochs > 0 and not base.splits.train.num_batches:
            raise ConfigError("the `train` loader has no length (len(loader)), so fine-tune epochs cannot be counted "
                              "in steps; give a DataLoader over a dataset with __len__ (or finetune_epochs 0)")
    elif config.finetune_epochs > 0 and len(base.splits.train) < batch:
        raise ConfigError(f"the training split has {len(base.splits.train)} images, fewer than one fine-tune batch "
                          f"of {batch}; give more training data (or finetune_epochs 0 to skip the fine-tunes)")
    identity = base_identity(base)
    if resuming:
        check_base_identity(run_dir, identity)
    if config.latency is not None:
        # The latency budget limits the space's width cost, so the space's width cost is the predicted latency.
        base = with_latency_cost(config, base, run_dir if resuming else None)
    space = base.space
    budget = run_budget(config, space)
    from automl_prune.prune.pruning import channel_order

    # A criterion that cannot score a group, or an unknown name, is refused now.
    channel_order(base.model, space.graph, config.resolved_criterion, calibration=calibration_data(config, base))
    evaluator = make_evaluator(config, base)
    options: dict[str, Any] = dict(config.agent_options)
    if config.agent in ("ddpg", "ppo"):
        options["reward"] = config.reward
    if config.agent.startswith("optuna") and config.storage:
        options["storage"] = config.storage
    if config.agent == "sensitivity":  # one profile per base model and proxy, shared by runs of any budget
        options = {**profile_options(config, identity), **options}
    options = {**start_options(config, identity), **options}  # search_start one-shot: DDPG, PPO, Optuna
    # Searchers are built against a scratch directory first, so a rejected option writes nothing to the run.
    context = SearchContext(space, evaluator, budget, seed=config.seed, search=config.resolved_search)
    try:
        SEARCHERS.create(config.agent, context, **options)
    except TypeError as exc:  # an agent option the searcher does not take
        raise ConfigError(f"agent {config.agent!r} rejected its options {sorted(options)}: {exc}") from exc
    with contextlib.ExitStack() as stack:
        stack.enter_context(run_dir_lock(run_dir))  # one process per run directory, from here to the end
        log(_device_line(config))
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "base.json", identity)
        table = getattr(space.cost_model, "table", None)
        if table is not None and not (run_dir / LATENCY_TABLE_FILE).exists():
            write_json(run_dir / LATENCY_TABLE_FILE, table.to_dict())
        if config.resolved_workers > 0:
            from automl_prune.parallel.ray_eval import RayEvaluatorPool
            from automl_prune.parallel.ray_session import ray_session

            gpus, share = config.gpu_count, config.resolved_gpus_per_worker
            visible = config.device.split(":")[1] if ":" in config.device else None  # cuda:N: Ray gets GPU N only
            stack.enter_context(ray_session(run_dir, config.resolved_workers, config.address, log=config.progress,
                                            gpus=gpus, visible_gpus=visible))
            evaluator = RayEvaluatorPool(evaluator, config.resolved_workers, evaluator_kwargs(config, base),
                                         gpus_per_worker=share, deterministic=config.deterministic)
            stack.callback(evaluator.close)
            log(f"evaluating candidates in {config.resolved_workers} Ray workers"
                + (f", {share:g} GPU each" if share > 0 else ""))
        context = dataclasses.replace(context, evaluator=evaluator, run_dir=run_dir)
        return _search_and_rerank(config, base, context, run_dir, options, resuming)


def _search_and_rerank(config: SearchConfig, base: BaseModel, context: SearchContext, run_dir: Path,
                       options: dict[str, Any], resuming: bool) -> dict[str, Any]:
    """Search, re-rank, test, export (inside the run's Ray session when there is one)."""
    from tqdm import tqdm

    from agents import SEARCHERS

    space, evaluator, budget = base.space, context.evaluator, context.budget
    searcher = SEARCHERS.create(config.agent, context, **options)
    state_dir = run_dir / "agent_state"
    if resuming and state_dir.exists():
        searcher.restore(state_dir)
    done = len(searcher.history)
    if resuming:
        log(f"resuming {run_dir}: {done} of {config.episodes} evaluations already done")
    search_clock = WallClock(run_dir / "search_seconds.json")
    episodes, spent_before = config.episodes, False
    limit = config.time_limit_seconds
    if limit is not None:  # the limit is the run's: the search seconds of earlier processes count
        left = limit - search_clock.before
        if left <= 0 and done > 0:
            episodes, spent_before = done, True
            log(f"the time limit ({config.time_limit}) was spent by the earlier processes of this run "
                f"({search_clock.before:.0f} s); the run goes on with the {done} evaluations it has")
        searcher.set_time_limit(max(left, 0.0))
    steps = config.search_finetune_steps
    proxy = f"{steps} fine-tune steps + adaptive BN" if steps else "adaptive BN"
    what = (f"budget {budget.flops / 1e3:,.1f} us of predicted latency ({config.latency:g} of "
            f"{space.full_flops / 1e3:,.1f} us at batch {config.latency_batch_size})" if budget.latency
            else f"budget {budget.flops:,} FLOPs ({config.flops:g} of {space.full_flops:,})")
    log(f"searching {config.model} on {config.dataset} with {config.agent}: {len(space)} channel groups, {what}, "
        f"candidates scored by {proxy}")

    bar = tqdm(total=config.episodes, initial=min(done, config.episodes), desc=f"search ({config.agent})",
               unit="eval", disable=not config.progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    best_acc = [max((e.metrics["accuracy"] for e in searcher.history.entries), default=0.0)]

    def on_evaluation(entry: Any) -> None:
        search_clock.save()
        best_acc[0] = max(best_acc[0], entry.metrics["accuracy"])
        bar.set_postfix(acc=f"{entry.metrics['accuracy']:.3f}", best=f"{best_acc[0]:.3f}",
                        flops=f"{entry.metrics['flops_ratio']:.3f}")
        bar.update(1)

    resume_hint = f"resume with: automl-prune resume {run_dir}"
    try:
        result = searcher.search(episodes, callback=on_evaluation)
    except KeyboardInterrupt:
        searcher.save(state_dir)
        search_clock.save()
        bar.close()
        log(f"interrupted; progress is saved. {resume_hint}")
        raise
    except Exception:
        search_clock.save()
        bar.close()
        log(f"the search failed; every finished evaluation is in {run_dir / 'history.jsonl'}. {resume_hint}")
        raise
    bar.close()
    searcher.save(state_dir)
    search_seconds = search_clock.save()  # summed over the processes that worked on it (resumes included)
    result.extra["stopped_by_time_limit"] = searcher.stopped_by_deadline or spent_before
    if searcher.stopped_by_deadline:
        log(f"the time limit ({config.time_limit}) ended the search after {len(result.history)} of "
            f"{config.episodes} evaluations; the run goes on with what it found")

    best = space.complete(result.best)
    flops = space.flops(best)
    over = budget.violations(space, best)
    if over:  # the searchers guarantee this; checked again because it is the product's promise
        raise RuntimeError(f"best architecture is over budget: {'; '.join(over)}")
    widened = None
    if config.fill_budget:
        filled = spend_leftover_budget(best, space, budget, config.resolved_search)
        if filled != best:
            widened = (filled, evaluator.evaluate(filled).accuracy, space.flops(filled))
            log(f"widened the best architecture to spend the leftover budget: {flops / budget.flops:.3f} -> "
                f"{space.flops(filled) / budget.flops:.3f} of it")

    rerank_clock = WallClock(run_dir / "rerank_seconds.json")
    try:
        chosen, model, ladder, val_after = rerank_candidates(config, base, evaluator, result, budget, widened, run_dir,
                                                             rerank_clock)
    except KeyboardInterrupt:
        rerank_clock.save()
        log(f"interrupted during re-ranking; finished rungs are kept. {resume_hint}")
        raise
    except Exception:
        rerank_clock.save()
        log(f"re-ranking failed; finished rungs are kept in {run_dir / 'ladder.json'}. {resume_hint}")
        raise
    rerank_seconds = rerank_clock.save()
    return finish_run(config, base, run_dir, result, chosen, model, ladder, val_after, search_seconds,
                   rerank_seconds)
