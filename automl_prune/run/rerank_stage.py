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


def one_shot_entrant(config: SearchConfig, base: BaseModel, evaluator: Any, result: Any, budget: Budget,
                     run_dir: Path) -> tuple[Any, float, int] | None:
    """The sensitivity profile's one-shot answer as a ladder entrant ``(architecture, proxy accuracy, FLOPs)``.

    A sensitivity search recorded it (``result.extra["one_shot"]``); any other search gets it from the profile
    cached by an earlier sensitivity run of the same base model, data and proxy (`agents.one_shot.cached_one_shot`:
    no evaluation but the answer's own score). Without a complete cached profile it is skipped, and the log says
    why: measuring the profile would cost hundreds of evaluations, more than the whole search may have had.
    """
    from search_spaces import Architecture

    space = base.space
    recorded = (getattr(result, "extra", None) or {}).get("one_shot")
    if recorded is not None:
        arch, origin = space.complete(Architecture.from_dict(recorded)), "from this search's profile"
    else:
        from agents.one_shot import cached_one_shot
        from automl_prune.errors import BudgetError
        from automl_prune.run.base_model import base_identity
        from automl_prune.run.search_stage import profile_options

        path = run_dir / "base.json"
        identity = json.loads(path.read_text()) if path.exists() else base_identity(base)
        float_choice = bool(config.agent_options.get("float_choice", False)) if config.agent == "sensitivity" else False
        try:
            found, origin = cached_one_shot(space, budget, config.resolved_search, float_choice=float_choice,
                                            **profile_options(config, identity))
        except (BudgetError, ValueError, KeyError) as exc:  # an optional entrant must not end the run
            found, origin = None, f"the cached profile could not be used ({exc})"
        if found is None:
            log(f"re-ranking without the sensitivity one-shot answer: {origin}")
            return None
        arch = space.complete(found)
    over = budget.violations(space, arch)
    if over:
        log(f"re-ranking without the sensitivity one-shot answer: it is over budget ({'; '.join(over)})")
        return None
    log(f"the sensitivity one-shot answer enters the re-ranking ({origin})")
    known = [e.metrics for e in getattr(result, "history", []) if space.complete(e.architecture) == arch]
    accuracy = float(known[0]["accuracy"]) if known else evaluator.evaluate(arch).accuracy
    return arch, accuracy, space.flops(arch)


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
