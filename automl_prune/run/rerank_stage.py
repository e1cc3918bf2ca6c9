"""The re-ranking stage: the search's best candidates and the uniform answer climb the ladder of fine-tunes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.run.base_model import BaseModel, log
from automl_prune.run.run_dir import write_json
from automl_prune.run.search_stage import calibration_data
from automl_prune.run.wall_clock import WallClock
from search_spaces import Budget

__all__ = ["one_shot_entrant", "rerank_candidates"]


#: Where the ladder's one-shot entrant is recorded (a resumed run enters the same one, at no new cost).
_ONE_SHOT_RECORD = "ladder_one_shot.json"
#: The profile points measured for it by this run (an interrupted run measures none of them twice).
_ONE_SHOT_PROFILE = "ladder_one_shot"
#: Its seconds, summed over the processes that worked on it.
_ONE_SHOT_CLOCK = "ladder_one_shot_seconds.json"


def one_shot_entrant(config: SearchConfig, base: BaseModel, evaluator: Any, result: Any, budget: Budget,
                     run_dir: Path) -> tuple[Any, float, int] | None:
    """The sensitivity profile's one-shot answer as a ladder entrant ``(architecture, proxy accuracy, FLOPs)``.

    Where it comes from, cheapest first:

    - the search recorded it (``result.extra["one_shot"]``: a sensitivity search, or a one-shot search start);
    - an earlier process of this run entered it (``RUN_DIR/ladder_one_shot.json``): the same answer again;
    - the profile cached by an earlier run of the same base model, data and proxy
      (`agents.one_shot.cached_one_shot`): no evaluation but the answer's own score;
    - else its coarsest profile (20% steps, and the bits profile when bits are searched) is measured with the
      search's own evaluator, as a one-shot search start does (`agents.start.measure_one_shot`); the points go
      to the cache folder (every later run reuses them) and to ``RUN_DIR/ladder_one_shot/`` (a resumed run
      measures none twice). ``one_shot_entrant`` sets when: ``always`` (the default), ``if-cheaper`` (only when
      that costs at most the search's own evaluations, ``episodes``) or ``never``; ``--agent uniform`` (the naive
      answer, the baseline every benchmark compares with) never enters it. Without a ladder
      (``finetune_epochs`` 0), or when the setting rules it out, it is skipped with the reason.

    One log line says where it came from and what it cost (profile evaluations, seconds); so does
    ``result.extra["ladder_one_shot"]``, which the summary shows as ``one_shot``.
    """
    from search_spaces import Architecture

    space, search = base.space, config.resolved_search
    if config.one_shot_entrant == "never" or config.agent == "uniform":
        why = ("one_shot_entrant is never" if config.one_shot_entrant == "never"
               else "--agent uniform asks for the uniform answer alone")
        log(f"re-ranking without the sensitivity one-shot answer: {why}")
        _note(getattr(result, "extra", None), {"skipped": why})
        return None
    clock = WallClock(run_dir / _ONE_SHOT_CLOCK)
    record_path = run_dir / _ONE_SHOT_RECORD
    extra = getattr(result, "extra", None)
    known: tuple[float, int] | None = None
    evaluations, again = 0, False
    recorded = (extra or {}).get("one_shot")
    kept = _kept_entrant(record_path, search, budget)
    if recorded is not None:
        arch, origin = space.complete(Architecture.from_dict(recorded)), "from this search's profile"
    elif kept is not None:
        arch = space.complete(Architecture.from_dict(kept["architecture"]))
        origin, evaluations, again = str(kept["origin"]), int(kept["evaluations"]), True
        known = float(kept["accuracy"]), int(kept["flops"])
    else:
        found, origin = _cached_entrant(config, base, budget, run_dir)
        if found is None and config.finetune_epochs <= 0:  # no ladder to enter: nothing is measured for it
            log(f"re-ranking without the sensitivity one-shot answer: {origin}")
            _note(extra, {"skipped": origin})
            return None
        if found is None:
            try:
                found, origin, evaluations = _measured_entrant(config, base, evaluator, budget, run_dir)
            finally:
                clock.save()
        if found is None:
            log(f"re-ranking without the sensitivity one-shot answer: {origin}")
            _note(extra, {"skipped": origin})
            return None
        arch = space.complete(found)
    over = budget.violations(space, arch)
    if over:  # cannot happen: the one-shot answer is solved within every limit
        log(f"re-ranking without the sensitivity one-shot answer: it is over budget ({'; '.join(over)})")
        _note(extra, {"skipped": f"over budget ({'; '.join(over)})"})
        return None
    if known is None:
        scored = [e.metrics for e in getattr(result, "history", []) if space.complete(e.architecture) == arch]
        known = (float(scored[0]["accuracy"]) if scored else float(evaluator.evaluate(arch).accuracy),
                 space.flops(arch))
    seconds = clock.save()
    cost = (f"{evaluations} profile evaluations" if evaluations else "no profile evaluation") + f", {seconds:.1f} s"
    log(f"the sensitivity one-shot answer enters the re-ranking {origin}; cost: {cost}"
        + (" (an earlier process of this run entered it: nothing measured now)" if again else ""))
    entry = {"origin": origin, "evaluations": evaluations, "seconds": seconds}
    _note(extra, entry)
    write_json(record_path, {**entry, "search": search, "budget": dataclasses.asdict(budget),
                             "architecture": arch.to_dict(), "accuracy": known[0], "flops": known[1]})
    return arch, known[0], known[1]


def _note(extra: dict[str, Any] | None, entry: dict[str, Any]) -> None:
    """Where the ladder's one-shot entrant came from and what it cost, for the summary (``one_shot``)."""
    if extra is not None:
        extra["ladder_one_shot"] = entry


def _kept_entrant(path: Path, search: str, budget: Budget) -> dict[str, Any] | None:
    """The entrant an earlier process of this run recorded, when it was for the same search and budget."""
    if not path.exists():
        return None
    try:
        kept = json.loads(path.read_text())
        same = kept["search"] == search and kept["budget"] == json.loads(json.dumps(dataclasses.asdict(budget)))
        return dict(kept) if same and kept.get("architecture") else None
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable record counts as none: the entrant is found again (its points are kept)


def _cached_entrant(config: SearchConfig, base: BaseModel, budget: Budget, run_dir: Path) -> tuple[Any, str]:
    """The one-shot answer of a complete cached profile (free), or ``None`` and why not."""
    from agents.one_shot import cached_one_shot
    from automl_prune.errors import BudgetError
    from automl_prune.run.search_stage import profile_options

    float_choice = bool(config.agent_options.get("float_choice", False)) if config.agent == "sensitivity" else False
    try:
        found, origin = cached_one_shot(base.space, budget, config.resolved_search, float_choice=float_choice,
                                        **profile_options(config, _identity(base, run_dir)))
    except (BudgetError, ValueError, KeyError) as exc:  # an optional entrant must not end the run
        return None, f"the cached profile could not be used ({exc})"
    return found, origin


def _measured_entrant(config: SearchConfig, base: BaseModel, evaluator: Any, budget: Budget,
                      run_dir: Path) -> tuple[Any, str, int]:
    """The one-shot answer after measuring its coarsest profile's missing points with the search's evaluator."""
    from agents.start import measure_one_shot
    from automl_prune.run.search_stage import profile_options

    search = config.resolved_search

    def announce(pending: int, total: int) -> None:
        if config.one_shot_entrant == "if-cheaper" and pending > config.episodes:  # a later, longer run measures it
            raise _TooCostly(f"its profile would cost {pending} evaluations, more than the search's "
                             f"{config.episodes} (--episodes) and one_shot_entrant is if-cheaper; a sensitivity "
                             "run, --search-start one-shot, --one-shot-entrant always or a search of at least "
                             "that many evaluations measures it, and every later run of this base model and "
                             "proxy reads it from the cache")
        log(f"measuring the sensitivity profile for the ladder's one-shot entrant: {pending} of {total} points "
            f"(20% steps{' and the bits profile' if search != 'widths' else ''}) with the search's evaluator")

    try:
        found = measure_one_shot(base.space, evaluator, budget, search, folder=run_dir / _ONE_SHOT_PROFILE,
                                 announce=announce, **profile_options(config, _identity(base, run_dir)))
    except _TooCostly as reason:
        return None, str(reason), 0
    return found.architecture, found.origin, found.evaluations


class _TooCostly(Exception):
    """The ladder's one-shot entrant would cost more evaluations than the search itself."""


def _identity(base: BaseModel, run_dir: Path) -> dict[str, Any]:
    from automl_prune.run.base_model import base_identity

    path = run_dir / "base.json"
    return json.loads(path.read_text()) if path.exists() else base_identity(base)


def rerank_candidates(config: SearchConfig, base: BaseModel, evaluator: Any, result: Any, budget: Budget,
                      widened: tuple[Any, float, int] | None, run_dir: Path,
                      clock: WallClock | None = None) -> tuple[Any, torch.nn.Module, Any, float]:
    """The re-ranking ladder; returns the chosen candidate, its fine-tuned model, the ladder, its val acc."""
    from agents import uniform_architecture
    from automl_prune.scoring.ladder import Ladder, plan_rungs, select_candidates
    from automl_prune.scoring.rung_job import FineTuneRecipe, LadderJob, local_executor
    from automl_prune.train.training import evaluate_accuracy

    space = base.space
    uniform = uniform_architecture(space, budget.flops)
    search = config.resolved_search
    if search in ("bits", "both"):
        from agents import uniform_bits_architecture

        widths = space.full() if search == "bits" else uniform
        uniform = uniform_bits_architecture(space, widths, budget.size_bits, budget.bops)
    ranked = [(space.complete(e.architecture), e.metrics["accuracy"], e.metrics["flops"]) for e in result.history
              if budget.fits(space, e.architecture)]
    candidates = select_candidates(
        ranked, top_k=config.rerank_top_k,
        uniform=(uniform, evaluator.evaluate(uniform).accuracy, space.flops(uniform)), widened=widened,
        one_shot=one_shot_entrant(config, base, evaluator, result, budget, run_dir),
    )
    if hasattr(evaluator, "close"):
        evaluator.close()  # the evaluation workers hand their CPUs to the fine-tune trials
    recipe = FineTuneRecipe(epochs=config.finetune_epochs, lr=config.finetune_lr, seed=config.seed,
                            distill=config.distill, distill_temperature=config.distill_temperature,
                            distill_weight=config.distill_weight, regularize=config.regularize,
                            regularize_steps=config.regularize_steps, regularize_strength=config.regularize_strength)
    if config.finetune_epochs <= 0:
        # No fine-tune: the proxy is all there is; still never worse than uniform by it.
        chosen = max(candidates, key=lambda c: (c.proxy_accuracy or 0.0, -candidates.index(c)))
        model = evaluator.build(chosen.architecture).to("cpu", memory_format=torch.contiguous_format).eval()
        return chosen, model, None, evaluate_accuracy(model, base.splits.val, batch_size=250,
                                                      metric=base.task.metric)[0]
    rungs = plan_rungs(recipe.total_steps(base.splits), config.rerank_rungs, config.rerank_eta)
    job = LadderJob(run_dir, base.model, space, base.splits, recipe, rungs, criterion=config.resolved_criterion,
                    calibration=calibration_data(config, base), reconstruct=config.reconstruct,
                    bn_batches=config.bn_batches, task=base.task)
    recipe_record = {"recipe": dataclasses.asdict(recipe)}
    recipe_path = run_dir / "rerank_recipe.json"
    same_recipe = not recipe_path.exists() or json.loads(recipe_path.read_text()) == recipe_record
    try:
        if not same_recipe:
            raise ConfigError("the fine-tune recipe changed")
        ladder = Ladder(run_dir / "ladder.json", candidates, rungs, config.rerank_eta)
    except ConfigError:
        # More evaluations or other fine-tune/re-rank settings than the recorded ladder: its results do not apply.
        log("the re-ranking settings, the fine-tune recipe or the candidates changed since the last run: "
            "re-ranking afresh")
        import shutil

        for stale in ("ladder.json", "rerank", "tune/rerank"):
            path = run_dir / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        ladder = Ladder(run_dir / "ladder.json", candidates, rungs, config.rerank_eta)
    write_json(recipe_path, recipe_record)
    workers = config.resolved_workers
    log(f"re-ranking {len(candidates)} candidates ({', '.join(c.origin for c in candidates)}) over fine-tune "
        f"rungs {list(rungs)} steps, keeping 1/{config.rerank_eta} per rung, "
        + (f"{workers} Ray Tune workers" if workers > 0 else "in this process"))

    def on_rung(rung: int, todo: list[Any]) -> None:
        if clock is not None:
            clock.save()
        entrants = ladder.entrants(rung)
        log(f"rung {rung + 1}/{len(rungs)} ({rungs[rung]} steps): {len(entrants)} candidates"
            + (f", {len(entrants) - len(todo)} already done" if len(todo) < len(entrants) else ""))

    if workers == 0:
        winner = ladder.run(local_executor(job), on_rung)
    else:
        from automl_prune.parallel.tune_ladder import TuneLadderExecutor

        executor = TuneLadderExecutor(job, workers, verbose=config.progress)
        winner = executor.run(ladder)
        ladder = executor.ladder
    top = ladder.highest_rung_reached()
    log(f"re-ranking chose {winner.id} ({winner.origin}): val "
        f"{job.task.format_score(ladder.results[(winner.id, top)].val_acc)} after the whole fine-tune")
    return winner, job.final_model(winner, top), ladder, ladder.results[(winner.id, top)].val_acc
