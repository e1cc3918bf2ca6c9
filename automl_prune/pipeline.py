"""The search application: base model -> search -> fine-tune -> test -> export -> summary.

Everything is written under the run directory (``config.out``) except the cached base model (``cache_dir``);
a run directory that already holds a search with the same settings is resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from automl_prune.atomic import atomic_write_text
from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.task import Task
from automl_prune.wall_clock import WallClock

__all__ = ["PYTHON_MODEL_PREFIX", "BaseModel", "base_from_model", "load_base", "run_search"]

#: ``config.model`` of a search started from Python with a model object (`automl_prune.api.search`).
PYTHON_MODEL_PREFIX = "python:"

# Settings that define what a run directory holds; the others may change on resume.
_IDENTITY_KEYS = ("model", "dataset", "flops", "agent", "seed", "criterion", "min_keep_ratio", "round_to",
                  "proxy", "proxy_finetune_steps", "bn_batches", "val_size", "pretrain_epochs", "reward",
                  "pretrain_seed", "agent_options", "exclude", "search", "size", "bops", "reconstruct",
                  "calibration_size", "latency", "latency_batch_size")


@dataclass
class BaseModel:
    """A trained base model with its data and search space, and the task candidates are trained and scored on
    (`automl_prune.task.Task`: cross-entropy and top-1 accuracy unless the Python API was given others)."""

    model: torch.nn.Module
    meta: dict[str, Any]
    splits: Any
    space: Any
    task: Task = field(default_factory=Task)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_base(config: SearchConfig) -> BaseModel:
    """Load the dataset and the base model (the user's ``--weights``, else pretrained or cached), build its space."""
    from automl_prune.checkpoints import pretrain_or_load
    from automl_prune.data import load_dataset

    if config.model.startswith(PYTHON_MODEL_PREFIX):
        raise ConfigError(f"{config.out} was started from Python with a model object ({config.model}); resume it "
                          "by calling automl_prune.search again with the same model and data")
    if config.weights is not None:
        from automl_prune.weights import check_weights_path

        check_weights_path(config.weights)
    # The split belongs to the base model: its validation images must be ones it never trained on.
    splits = load_dataset(config.dataset, config.data_root, seed=config.pretrain_seed, **config.dataset_options)
    if config.weights is not None:
        model, meta = _base_from_weights(config, splits)
    else:
        model, meta = pretrain_or_load(
            config.model,
            config.dataset,
            data_root=config.data_root,
            epochs=config.pretrain_epochs,
            seed=config.pretrain_seed,
            cache_dir=config.cache_dir,
            progress=config.progress,
            splits=splits,
        )
    return base_from_model(config, model, meta, splits)


def base_from_model(config: SearchConfig, model: torch.nn.Module, meta: dict[str, Any], splits: Any,
                    task: Task | None = None) -> BaseModel:
    """A `BaseModel` of a trained ``model`` on ``splits`` (its search space traced on one validation image), with
    ``task`` (default: cross-entropy and top-1 accuracy)."""
    from search_spaces import SearchSpace

    example = splits.val.images[:1]
    space = SearchSpace.from_model(
        model, example, min_keep_ratio=config.min_keep_ratio, round_to=config.round_to, model_name=config.model
    )
    if config.exclude:
        space = exclude_layers(space, config.exclude)
    return BaseModel(model=model, meta=meta, splits=splits, space=space, task=task or Task())


def exclude_layers(space: Any, patterns: tuple[str, ...]) -> Any:
    """The space without the width decisions of groups whose channels a matching layer outputs (kept full), and
    with every matching conv/linear layer pinned to float (32 bits) when bits are searched.

    A pattern matches a module path exactly, as a prefix (``layer1`` matches ``layer1.0.conv1``) or as a glob
    (``features.*``). A pattern that matches no prunable layer is an error that lists some of them.
    """
    from fnmatch import fnmatchcase

    from automl_prune.quant import FLOAT_BITS
    from search_spaces import SearchSpace

    def matches(layer: str, pattern: str) -> bool:
        return layer == pattern or layer.startswith(pattern + ".") or fnmatchcase(layer, pattern)

    producers = {d.name: [m.layer for m in space.graph.group(d.name).members if m.dim == "out"]
                 for d in space.decisions}
    for pattern in patterns:
        if not any(matches(layer, pattern) for layers in producers.values() for layer in layers):
            shown = sorted({layer for layers in producers.values() for layer in layers})[:8]
            raise ConfigError(f"--exclude {pattern!r} matches no prunable layer; prunable layers include {shown}")
    kept = [d for d in space.decisions if not any(matches(layer, p) for layer in producers[d.name] for p in patterns)]
    float_layers = [name for name in space.quantizable_layers if any(matches(name, p) for p in patterns)]
    if not kept:
        raise ConfigError(f"--exclude {list(patterns)} leaves no channel group to prune")
    _log(f"excluded from compression (full width, float): {len(space.decisions) - len(kept)} of "
         f"{len(space.decisions)} channel groups, {len(float_layers)} layers")
    pinned = {**space.pinned_bits, **{name: FLOAT_BITS for name in float_layers}}
    return SearchSpace(space.graph, kept, model_name=space.model_name, bit_choices=space.bit_choices,
                       pinned_bits=pinned)


def _base_from_weights(config: SearchConfig, splits: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The user's trained weights in the configured model definition; no pretraining, accuracy measured."""
    from automl_prune.checkpoints import checkpoint_hash
    from automl_prune.models import build_model
    from automl_prune.training import evaluate_accuracy
    from automl_prune.weights import load_state_dict_file, load_weights_into

    spec = splits.spec
    model = build_model(config.model, spec.in_channels, spec.num_classes, spec.input_size)
    state = load_state_dict_file(config.weights)
    load_weights_into(model, state, f"--weights {config.weights} (model {config.model})")
    model = model.eval()
    val_acc, _ = evaluate_accuracy(model, splits.val, batch_size=250)
    test_acc, _ = evaluate_accuracy(model, splits.test, batch_size=250)
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    _log(f"base model: {config.model} with the weights of {config.weights} (no pretraining): val "
         f"{100 * val_acc:.2f}%, test {100 * test_acc:.2f}%")
    path = Path(config.weights).resolve()
    return model, {
        "model": config.model, "dataset": config.dataset, "in_channels": spec.in_channels,
        "num_classes": spec.num_classes, "input_size": spec.input_size, "epochs": 0, "train_seconds": 0.0,
        "val_acc": val_acc, "test_acc": test_acc, "path": str(path), "sha256": checkpoint_hash(path), "cached": False,
        "weights": str(path),
    }


def evaluator_kwargs(config: SearchConfig, base: BaseModel) -> dict[str, Any]:
    """The arguments of the search's `Evaluator` (the chosen proxy), shared with parallel workers."""
    steps = config.search_finetune_steps
    return {
        "model": base.model,
        "space": base.space,
        "train_images": base.splits.train.images,
        "val_images": base.splits.val.images,
        "val_labels": base.splits.val.labels,
        "train_labels": base.splits.train.labels,
        "criterion": config.resolved_criterion,
        "bn_batches": config.bn_batches,
        "finetune_steps": steps,
        "seed": config.seed,
        # 250 images per forward pass scored about twice as fast as 1000 on these CPUs (cache-sized batches).
        "eval_batch_size": 250,
        "calibration": calibration_data(config, base),
        "reconstruct": config.reconstruct,
        "task": base.task,
    }


def calibration_data(config: SearchConfig, base: BaseModel) -> Any:
    """The training images (and labels) data-driven criteria and reconstruction see: a seeded subset."""
    from automl_prune.calibration import Calibration

    train = base.splits.train
    return Calibration.from_split(train.images, train.labels, samples=config.calibration_size, seed=config.seed)


def make_evaluator(config: SearchConfig, base: BaseModel) -> Any:
    """The candidate evaluator the search scores architectures with (the chosen proxy), in this process."""
    from automl_prune.evaluate import Evaluator

    kwargs = evaluator_kwargs(config, base)
    return Evaluator(kwargs.pop("model"), kwargs.pop("space"), kwargs.pop("train_images"), kwargs.pop("val_images"),
                     kwargs.pop("val_labels"), **kwargs)


def _check_run_dir(config: SearchConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds a compatible earlier run (resume); error when it holds another search."""
    previous = run_dir / "config.json"
    if not previous.exists():
        return False
    old = json.loads(previous.read_text())
    new = config.to_dict()
    changed = [k for k in _IDENTITY_KEYS if old.get(k, new.get(k)) != new.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{run_dir} holds a search with other settings ({diffs}); choose another --out to start a new "
            "search, or repeat the same settings to resume it"
        )
    return True


def bit_budgets(config: SearchConfig, space: Any) -> dict[str, Any]:
    """The searcher's bit settings: ``search`` and the size/BOPs budgets in bits and bit-operations ({} for
    a widths-only search)."""
    from automl_prune.config import parse_size

    mode = config.resolved_search
    if mode == "widths":
        return {}
    budgets: dict[str, Any] = {"search": mode}
    if config.size is not None:
        kind, value = parse_size(config.size)
        fraction = value if kind == "fraction" else value / space.full_size_bits
        if fraction > 1.0:
            raise ConfigError(f"--size {config.size} is more than the float32 model ({space.full_size_bits / 8:,.0f} "
                              "bytes); give a smaller size or a fraction")
        budgets["size_budget_bits"] = space.size_budget(fraction)
    if config.bops is not None:
        budgets["bops_budget"] = space.bops_budget(config.bops)
    return budgets


def _base_identity(base: BaseModel) -> dict[str, Any]:
    """What makes a run's base model itself: the hash of its weights and a fingerprint of its data (and the
    task's loss and metric, when they are not the defaults)."""
    from automl_prune.checkpoints import data_fingerprint, state_sha256

    sha = base.meta.get("sha256") or state_sha256(base.model)
    base.meta.setdefault("sha256", sha)
    identity = {"sha256": sha, "data_fingerprint": data_fingerprint(base.splits)}
    if base.task.custom:
        identity["task"] = base.task.identity()
    return identity


def _check_base_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a run on another base model or other data than it started with."""
    path = run_dir / "base.json"
    if not path.exists():
        return  # a run from before base.json existed
    old = json.loads(path.read_text())
    changed = [k for k in {**old, **identity} if old.get(k) != identity.get(k)]
    if changed:
        raise ConfigError(f"{run_dir} was searched on another base model or other data ({', '.join(changed)} "
                          "differ); choose another --out to start a new search, or give the same model and data "
                          "to resume it")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def _spend_leftover_budget(best: Any, space: Any, budget: int, options: dict[str, Any] | None = None) -> Any:
    """Widen ``best`` group by group (round robin) while FLOPs stay within budget: a superset of it. With bits,
    they are kept and then taken off the costliest layers if the wider model is over the size/BOPs budgets."""
    from agents import fill_budget
    from search_spaces import Architecture

    target = {name: float(width) for name, width in best.widths.items()}
    widened = Architecture(fill_budget(space, best.widths, budget, target), dict(best.bits))
    options = options or {}
    if options.get("search") == "bits":
        return best  # widths are not searched: the model stays at full width
    if best.bits and (options.get("size_budget_bits") is not None or options.get("bops_budget") is not None):
        from agents import project_bits

        widened = project_bits(space, widened, options.get("size_budget_bits"), options.get("bops_budget"))
    return widened


def run_search(config: SearchConfig, base: BaseModel | None = None) -> dict[str, Any]:
    """Run a whole search as configured; see `_run_search`. Leaves the caller's environment as it was.

    Args:
        config: The settings.
        base: The trained base model with its data (the Python API's); ``None``: loaded as configured.
    """
    from automl_prune.app.ray_session import scoped_environ

    # FLOP counting imports torch._dynamo, which creates a compile cache in the system temp folder: keep it in
    # the cache directory the user chose (set only for this call; an explicit setting of the user's wins).
    caches = {} if "TORCHINDUCTOR_CACHE_DIR" in os.environ else {
        "TORCHINDUCTOR_CACHE_DIR": str((Path(config.cache_dir) / "torchinductor").resolve())}
    with scoped_environ(caches):
        return _run_search(config, base)


def _run_search(config: SearchConfig, base: BaseModel | None = None) -> dict[str, Any]:
    """Run a whole search as configured; returns the summary (also written to ``RUN_DIR/summary.json``).

    Stages: base model -> search (proxy scores) -> re-ranking ladder (the top candidates, uniform and the
    widened best, fine-tuned in rungs; the top rung is the final fine-tune) -> test -> export -> summary.
    Every setting is checked and the data loaded before anything is written to the run directory.
    """

    from agents import SEARCHERS
    from automl_prune.criteria import get_criterion

    SEARCHERS.get(config.agent)  # fail on a bad name before any work
    get_criterion(config.resolved_criterion)
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is an existing file; give a directory (new or a run to resume)")
    resuming = _check_run_dir(config, run_dir)

    if base is None:
        base = load_base(config)
    base.task.check(config.resolved_workers)  # functions Ray workers cannot receive are refused before writing
    identity = _base_identity(base)
    if resuming:
        _check_base_identity(run_dir, identity)
    if config.latency is not None:
        from automl_prune.latency import latency_budget

        base = with_latency_cost(config, base)
        budget = latency_budget(base.space, config.latency)
    else:
        budget = base.space.flops_budget(config.flops)
    space = base.space
    from automl_prune.pruning import channel_order

    # A criterion that cannot score a group, or an unknown name, is refused now.
    channel_order(base.model, space.graph, config.resolved_criterion, calibration=calibration_data(config, base))
    evaluator = make_evaluator(config, base)
    options: dict[str, Any] = dict(config.agent_options)
    options.update(bit_budgets(config, space))
    if config.agent in ("ddpg", "ppo"):
        options["reward"] = config.reward
    if config.agent.startswith("optuna") and config.storage:
        options["storage"] = config.storage
    # Searchers are built against a scratch directory first, so a rejected option writes nothing to the run.
    try:
        SEARCHERS.create(config.agent, space, evaluator, budget, seed=config.seed, run_dir=None, **options)
    except TypeError as exc:  # an agent option the searcher does not take
        raise ConfigError(f"agent {config.agent!r} rejected its options {sorted(options)}: {exc}") from exc
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", config.to_dict())
    _write_json(run_dir / "base.json", identity)
    with contextlib.ExitStack() as stack:
        if config.resolved_workers > 0:
            from automl_prune.app.ray_eval import RayEvaluatorPool
            from automl_prune.app.ray_session import ray_session

            stack.enter_context(ray_session(run_dir, config.resolved_workers, config.address, log=config.progress))
            evaluator = RayEvaluatorPool(evaluator, config.resolved_workers, evaluator_kwargs(config, base))
            stack.callback(evaluator.close)
            _log(f"evaluating candidates in {config.resolved_workers} Ray workers")
        return _search_and_rerank(config, base, evaluator, options, budget, run_dir, resuming)


def _search_and_rerank(config: SearchConfig, base: BaseModel, evaluator: Any, options: dict[str, Any], budget: int,
                       run_dir: Path, resuming: bool) -> dict[str, Any]:
    """Search, re-rank, test, export (inside the run's Ray session when there is one)."""
    from tqdm import tqdm

    from agents import SEARCHERS

    space = base.space
    searcher = SEARCHERS.create(config.agent, space, evaluator, budget, seed=config.seed, run_dir=run_dir, **options)
    searcher.set_time_limit(config.time_limit_seconds)
    state_dir = run_dir / "agent_state"
    if resuming and state_dir.exists():
        searcher.restore(state_dir)
    done = len(searcher.history)
    if resuming:
        _log(f"resuming {run_dir}: {done} of {config.episodes} evaluations already done")
    steps = config.search_finetune_steps
    proxy = f"{steps} fine-tune steps + adaptive BN" if steps else "adaptive BN"
    what = (f"budget {budget / 1e3:,.1f} us of predicted latency ({config.latency:g} of {space.full_flops / 1e3:,.1f} "
            f"us at batch {config.latency_batch_size})" if config.latency is not None
            else f"budget {budget:,} FLOPs ({config.flops:g} of {space.full_flops:,})")
    _log(f"searching {config.model} on {config.dataset} with {config.agent}: {len(space)} channel groups, {what}, "
         f"candidates scored by {proxy}")

    bar = tqdm(total=config.episodes, initial=min(done, config.episodes), desc=f"search ({config.agent})",
               unit="eval", disable=not config.progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    best_acc = [max((e.metrics["accuracy"] for e in searcher.history.entries), default=0.0)]

    search_clock = WallClock(run_dir / "search_seconds.json")

    def on_evaluation(entry: Any) -> None:
        search_clock.save()
        best_acc[0] = max(best_acc[0], entry.metrics["accuracy"])
        bar.set_postfix(acc=f"{entry.metrics['accuracy']:.3f}", best=f"{best_acc[0]:.3f}",
                        flops=f"{entry.metrics['flops_ratio']:.3f}")
        bar.update(1)

    resume_hint = f"resume with: automl-prune resume {run_dir}"
    try:
        result = searcher.search(config.episodes, callback=on_evaluation)
    except KeyboardInterrupt:
        searcher.save(state_dir)
        search_clock.save()
        bar.close()
        _log(f"interrupted; progress is saved. {resume_hint}")
        raise
    except Exception:
        search_clock.save()
        bar.close()
        _log(f"the search failed; every finished evaluation is in {run_dir / 'history.jsonl'}. {resume_hint}")
        raise
    bar.close()
    searcher.save(state_dir)
    search_seconds = search_clock.save()  # summed over the processes that worked on it (resumes included)
    result.extra["stopped_by_time_limit"] = searcher.stopped_by_deadline
    if searcher.stopped_by_deadline:
        _log(f"the time limit ({config.time_limit}) ended the search after {len(result.history)} of "
             f"{config.episodes} evaluations; the run goes on with what it found")

    best = space.complete(result.best)
    flops = space.flops(best)
    if flops > budget:  # the searchers guarantee this; checked again because it is the product's promise
        raise RuntimeError(f"best architecture has {flops} FLOPs, over the budget {budget}")
    widened = None
    if config.fill_budget:
        filled = _spend_leftover_budget(best, space, budget, options)
        if filled != best:
            widened = (filled, evaluator.evaluate(filled).accuracy, space.flops(filled))
            _log(f"widened the best architecture to spend the leftover budget: {flops / budget:.3f} -> "
                 f"{space.flops(filled) / budget:.3f} of it")

    rerank_clock = WallClock(run_dir / "rerank_seconds.json")
    try:
        chosen, model, ladder, val_after = _rerank(config, base, evaluator, result, budget, widened, run_dir,
                                                   options, rerank_clock)
    except KeyboardInterrupt:
        rerank_clock.save()
        _log(f"interrupted during re-ranking; finished rungs are kept. {resume_hint}")
        raise
    except Exception:
        rerank_clock.save()
        _log(f"re-ranking failed; finished rungs are kept in {run_dir / 'ladder.json'}. {resume_hint}")
        raise
    rerank_seconds = rerank_clock.save()
    return _finish(config, base, run_dir, result, chosen, model, ladder, val_after, search_seconds,
                   rerank_seconds)


def _rerank(config: SearchConfig, base: BaseModel, evaluator: Any, result: Any, budget: int,
            widened: tuple[Any, float, int] | None, run_dir: Path,
            options: dict[str, Any] | None = None,
            clock: WallClock | None = None) -> tuple[Any, torch.nn.Module, Any, float]:
    """The re-ranking ladder; returns the chosen candidate, its fine-tuned model, the ladder, its val acc."""
    from agents import uniform_architecture
    from automl_prune.ladder_job import FineTuneRecipe, LadderJob, local_executor
    from automl_prune.rerank import Ladder, plan_rungs, select_candidates
    from automl_prune.training import evaluate_accuracy

    space = base.space
    uniform = uniform_architecture(space, budget)
    options = options or {}
    if options.get("search") in ("bits", "both"):
        from agents import uniform_bits_architecture

        widths = space.full() if options["search"] == "bits" else uniform
        uniform = uniform_bits_architecture(space, widths, options.get("size_budget_bits"),
                                            options.get("bops_budget"))
    size_budget, bops_budget = options.get("size_budget_bits"), options.get("bops_budget")
    ranked = [(space.complete(e.architecture), e.metrics["accuracy"], e.metrics["flops"]) for e in result.history
              if e.metrics["flops"] <= budget
              and (size_budget is None or space.size_bits(e.architecture) <= size_budget)
              and (bops_budget is None or space.bops(e.architecture) <= bops_budget)]
    candidates = select_candidates(
        ranked, top_k=config.rerank_top_k,
        uniform=(uniform, evaluator.evaluate(uniform).accuracy, space.flops(uniform)), widened=widened,
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
        _log("the re-ranking settings, the fine-tune recipe or the candidates changed since the last run: "
             "re-ranking afresh")
        import shutil

        for stale in ("ladder.json", "rerank", "tune/rerank"):
            path = run_dir / stale
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        ladder = Ladder(run_dir / "ladder.json", candidates, rungs, config.rerank_eta)
    _write_json(recipe_path, recipe_record)
    workers = config.resolved_workers
    _log(f"re-ranking {len(candidates)} candidates ({', '.join(c.origin for c in candidates)}) over fine-tune "
         f"rungs {list(rungs)} steps, keeping 1/{config.rerank_eta} per rung, "
         + (f"{workers} Ray Tune workers" if workers > 0 else "in this process"))

    def on_rung(rung: int, todo: list[Any]) -> None:
        if clock is not None:
            clock.save()
        entrants = ladder.entrants(rung)
        _log(f"rung {rung + 1}/{len(rungs)} ({rungs[rung]} steps): {len(entrants)} candidates"
             + (f", {len(entrants) - len(todo)} already done" if len(todo) < len(entrants) else ""))

    if workers == 0:
        winner = ladder.run(local_executor(job), on_rung)
    else:
        from automl_prune.app.tune_ladder import TuneLadderExecutor

        executor = TuneLadderExecutor(job, workers, verbose=config.progress)
        winner = executor.run(ladder)
        ladder = executor.ladder
    top = ladder.highest_rung_reached()
    _log(f"re-ranking chose {winner.id} ({winner.origin}): val "
         f"{job.task.format_score(ladder.results[(winner.id, top)].val_acc)} after the whole fine-tune")
    return winner, job.final_model(winner, top), ladder, ladder.results[(winner.id, top)].val_acc


def _finish(config: SearchConfig, base: BaseModel, run_dir: Path, result: Any, chosen: Any, model: torch.nn.Module,
            ladder: Any, val_after: float, search_seconds: float, rerank_seconds: float) -> dict[str, Any]:
    """Test the chosen model once, export it, write the summary and the pictures."""
    from automl_prune.evaluate import accuracy_and_loss
    from automl_prune.export import export
    from automl_prune.report import format_table, summary_rows

    space = base.space
    best = chosen.architecture
    test_acc = None
    if base.splits.test is not None:
        test_acc, _ = accuracy_and_loss(model, base.splits.test.images, base.splits.test.labels, 250,
                                        base.task.metric)
    else:
        _log("no test data was given: the summary has no test accuracy")
    costs, full = space.true_costs(best), space.flops_model.full  # FLOPs even under a latency budget
    finetune_seconds = 0.0
    if ladder is not None:
        finetune_seconds = sum(r.seconds for (cid, _), r in ladder.results.items() if cid == chosen.id)
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "agent": config.agent,
        "flops_budget": config.flops,
        "base": {"flops": full.flops, "params": full.params, "val_acc": base.meta["val_acc"],
                 "test_acc": base.meta["test_acc"], "size_bits": space.full_size_bits, "bops": space.full_bops},
        "compressed": {"flops": costs.flops, "params": costs.params, "size_bits": space.size_bits(best),
                       "bops": space.bops(best),
                       "val_acc_before_finetune": chosen.proxy_accuracy, "val_acc_after_finetune": val_after,
                       "test_acc": test_acc},
        "chosen": {"id": chosen.id, "origin": chosen.origin},
        "search_best": {"architecture": space.complete(result.best).widths,
                        "proxy_accuracy": result.best_metrics["accuracy"]},
        "search_proxy_finetune_steps": config.search_finetune_steps,
        "evaluations": len(result.history),
        "evaluations_planned": config.episodes,
        "stopped_by_time_limit": bool(result.extra.get("stopped_by_time_limit", False)),
        "search_seconds": search_seconds,
        "rerank_seconds": rerank_seconds,
        "finetune_seconds": finetune_seconds,
        "architecture": best.widths,
        **({"bits": {k: list(v) for k, v in best.bits.items()}, "accuracy_is": "simulated (fake-quantized)"}
           if best.bits else {}),
        **({"rerank": ladder.to_dict()} if ladder is not None else {}),
        **({"pareto_front": result.extra["pareto_front"]} if "pareto_front" in result.extra else {}),
        # A custom task (Python API): every "acc" number above is its metric, every fine-tune used its loss.
        **({"metric": base.task.score_name} if base.task.metric is not None else {}),
        **({"loss": base.task.loss_name} if base.task.loss is not None else {}),
    }
    if config.latency is not None:
        summary["latency"] = measure_final_latency(config, base, model, best)
    export(run_dir / "best", model=model, space=space, architecture=best, model_name=config.model,
           in_channels=base.meta["in_channels"], num_classes=base.meta["num_classes"], dataset=config.dataset,
           base_checkpoint_sha256=base.meta.get("sha256"), metrics=summary["compressed"], onnx=config.onnx,
           latency=summary.get("latency"))
    if best.bits:
        summary["int8"] = _int8_realisation(model, base, best, run_dir / "best")
    _draw(config, space, best, costs.flops / full.flops, ladder, run_dir,
          score_name=base.task.score_name if base.task.metric is not None else "accuracy")
    _write_json(run_dir / "summary.json", summary)
    rows = summary_rows(summary)
    if "latency" in summary:
        lat = summary["latency"]
        for batch, pair in lat["measured_ms"].items():
            rows.append([f"latency, batch {batch} ({lat['threads']} threads, median)",
                         f"{pair['base']['median_ms']:.3f} ms", f"{pair['compressed']['median_ms']:.3f} ms"])
        rows.append([f"latency budget ({lat['budget']:g}, batch {lat['batch_size']})", f"{lat['budget_ms']:.3f} ms",
                     f"{'met' if lat['met'] else 'met within noise' if lat['met_within_noise'] else 'NOT met'} "
                     f"({lat['ratio']:.3f}x, noise +/-{lat['noise_ms']:.3f} ms)"])
    rows.append(["chosen by re-ranking", "-", f"{chosen.id} ({chosen.origin})"])
    rows.append(["re-rank time (incl. fine-tune)", "-", f"{rerank_seconds:.1f} s"])
    table = format_table(["", "base", "compressed"], rows)
    atomic_write_text(run_dir / "summary.md", table + "\n")
    print(table)
    from automl_prune.run_report import write_report

    write_report(run_dir)
    pictures = "widths.png" + (", ../ladder.png" if ladder is not None else "") + ", ../report.md"
    print(f"\nexported to {run_dir / 'best'} (arch.json, weights.pt, {pictures})")
    return summary


def with_latency_cost(config: SearchConfig, base: BaseModel) -> BaseModel:
    """``base`` with a search space whose width cost is the predicted latency (ns) at ``latency_batch_size``, from
    the per-layer latency table of this device (`automl_prune.latency`; measured once, cached in ``cache_dir``)."""
    from automl_prune.latency import LatencyCostModel, latency_table

    space = base.space
    table, path = latency_table(base.model, space.graph, {d.name: d.choices() for d in space.decisions},
                                config.cache_dir, batch_size=config.latency_batch_size, log=_log)
    table.meta["file"] = str(path)
    return dataclasses.replace(base, space=space.with_width_cost(LatencyCostModel(space.graph, table)))


def measure_final_latency(config: SearchConfig, base: BaseModel, model: torch.nn.Module, best: Any,
                          rounds: int = 21) -> dict[str, Any]:
    """Measured latency of the base and the compressed model at batch 1 and ``latency_batch_size``, interleaved,
    and whether the compressed one meets the latency budget, strictly and within the measured noise.

    Noise is half the compressed model's interquartile range plus the budget fraction times half the base
    model's (the uncertainty of both medians the check compares). A model with bits is timed as its float
    realisation (the simulated quantization is not a deployment).
    """
    from automl_prune.latency import compare_latency, device_name

    space = base.space
    compressed = model
    if best.bits:
        from automl_prune.int8 import _as_float_model

        compressed = _as_float_model(model)
    batch = config.latency_batch_size
    batches = sorted({1, batch})
    _log(f"measuring the latency of the base and the compressed model ({rounds} interleaved rounds, batch "
         f"{', '.join(map(str, batches))}, {torch.get_num_threads()} threads)")
    measured = compare_latency({"base": base.model, "compressed": compressed}, tuple(space.graph.input_shape[1:]),
                               batches, rounds=rounds)
    b, c = measured[batch]["base"], measured[batch]["compressed"]
    budget_ms = config.latency * b["median_ms"]
    noise_ms = 0.5 * c["iqr_ms"] + config.latency * 0.5 * b["iqr_ms"]
    table = getattr(space.cost_model, "table", None)
    record: dict[str, Any] = {
        "budget": config.latency,
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "device": device_name(next(model.parameters()).device),
        "statistic": f"median of {rounds} interleaved rounds (base and compressed alternate, one forward pass or "
                     "more per round lasting >= 1 ms); noise = half the compressed model's IQR + budget x half "
                     "the base model's IQR",
        "measured_ms": {str(bs): measured[bs] for bs in batches},
        "ratio": c["median_ms"] / b["median_ms"],
        "ratio_of_minimums": c["min_ms"] / b["min_ms"],
        "budget_ms": budget_ms,
        "noise_ms": noise_ms,
        "met": c["median_ms"] <= budget_ms,
        "met_within_noise": c["median_ms"] <= budget_ms + noise_ms,
        "predicted_ms": {"base": space.full_flops / 1e6, "compressed": space.flops(best) / 1e6,
                         "budget": math.floor(config.latency * space.full_flops) / 1e6},
    }
    if table is not None:
        record["table"] = {"file": table.meta.get("file"), "fit": table.meta.get("fit"), "device": table.device,
                           "threads": table.threads, "batch_size": table.batch_size}
    verdict = ("met" if record["met"] else "met within the measured noise" if record["met_within_noise"]
               else "NOT met")
    _log(f"latency at batch {batch}: base {b['median_ms']:.3f} ms, compressed {c['median_ms']:.3f} ms "
         f"({record['ratio']:.3f}x; budget {config.latency:g}, {budget_ms:.3f} ms, noise +/-{noise_ms:.3f} ms): "
         f"{verdict}")
    return record


def _int8_realisation(model: torch.nn.Module, base: BaseModel, best: Any, out: Path) -> dict[str, Any]:
    """The layers at 8/8 bits as real int8 kernels (ONNX Runtime), with measured latency next to the same graph
    in float; layers below 8 bits have no CPU kernel, stay float there, and no speed-up is claimed for them."""
    try:
        from automl_prune.int8 import export_int8_onnx, int8_layers_from_bits, int8_node_counts, measure_latency
    except ImportError as exc:
        return {"skipped": f"needs the onnx extra (pip install 'automl-prune[onnx]'): {exc}"}
    layers = int8_layers_from_bits(best.bits)
    below = sorted(name for name, (w, a) in best.bits.items() if min(w, a) < 8)
    record: dict[str, Any] = {"int8_layers": layers, "layers_without_a_cpu_kernel": below,
                              "note": "latency of the int8 layers only; layers below 8 bits run in float here, "
                                      "their size counts as packed and their cost as BOPs, no speed-up claimed"}
    if not layers:
        record["skipped"] = "no layer at 8/8 bits: no int8 kernel applies"
        return record
    train = base.splits.train.images
    batches = [train[i:i + 64] for i in range(0, min(len(train), 512), 64)]
    path = export_int8_onnx(model, batches, out / "model.int8.onnx", int8_layers=layers)
    float_path = path.with_name(path.name.replace(".int8.onnx", ".int8.float.onnx"))
    if not float_path.exists():
        float_path = next(p for p in out.glob("*.float.onnx"))
    shape = tuple(train.shape[1:])
    float_latency = measure_latency(float_path, shape, batch_sizes=(1, 64), threads=1)
    int8_latency = measure_latency(path, shape, batch_sizes=(1, 64), threads=1)
    record.update({
        "int8_nodes": int8_node_counts(path),
        "threads": 1,
        "latency_ms": {str(b): {"float_onnxruntime": float_latency["batches"][b]["median_ms"],
                                "int8_onnxruntime": int8_latency["batches"][b]["median_ms"]} for b in (1, 64)},
        "files": [path.name, float_path.name],
    })
    _log("int8 realisation: " + ", ".join(
        f"batch {b}: {v['float_onnxruntime']:.2f} ms float -> {v['int8_onnxruntime']:.2f} ms int8"
        for b, v in record["latency_ms"].items()) + " (ONNX Runtime, 1 thread, median)")
    return record


def _draw(config: SearchConfig, space: Any, best: Any, ratio: float, ladder: Any, run_dir: Path, *,
          score_name: str = "accuracy") -> None:
    from automl_prune.app.ray_session import scoped_environ
    from automl_prune.report import plot_widths

    # matplotlib would put its font cache in the home directory: keep it in the run directory.
    with scoped_environ({"MPLCONFIGDIR": str((run_dir / ".cache" / "matplotlib").resolve())}):
        plot_widths({d.name: d.size for d in space.decisions}, best.widths, run_dir / "best" / "widths.png",
                    f"{config.model}: channels kept at {ratio:.2f}x FLOPs ({config.agent})")
        if ladder is not None:
            from automl_prune.app.ladder_plot import plot_ladder

            plot_ladder(ladder.to_dict(), run_dir / "ladder.png",
                        f"{config.model} at {config.flops:g} FLOPs ({config.agent}): re-ranking ladder",
                        score_name=score_name)
