"""The search application: base model -> search -> fine-tune -> test -> export -> summary.

Everything is written under the run directory (``config.out``) except the cached base model (``cache_dir``);
a run directory that already holds a search with the same settings is resumed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from automl_prune.atomic import atomic_write_text
from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError

__all__ = ["BaseModel", "load_base", "run_search"]

# Settings that define what a run directory holds; the others may change on resume.
_IDENTITY_KEYS = ("model", "dataset", "flops", "agent", "seed", "criterion", "min_keep_ratio", "round_to",
                  "proxy", "proxy_finetune_steps", "bn_batches", "val_size", "pretrain_epochs", "reward")


@dataclass
class BaseModel:
    """A trained base model with its data and search space."""

    model: torch.nn.Module
    meta: dict[str, Any]
    splits: Any
    space: Any


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_base(config: SearchConfig) -> BaseModel:
    """Load the dataset, pretrain or load the cached base model, and build its search space."""
    from automl_prune.checkpoints import pretrain_or_load
    from automl_prune.data import load_dataset
    from search_spaces import SearchSpace

    splits = load_dataset(config.dataset, config.data_root, seed=config.seed, val_size=config.val_size)
    model, meta = pretrain_or_load(
        config.model,
        config.dataset,
        data_root=config.data_root,
        epochs=config.pretrain_epochs,
        seed=config.seed,
        cache_dir=config.cache_dir,
        progress=config.progress,
        splits=splits,
    )
    example = splits.val.images[:1]
    space = SearchSpace.from_model(
        model, example, min_keep_ratio=config.min_keep_ratio, round_to=config.round_to, model_name=config.model
    )
    return BaseModel(model=model, meta=meta, splits=splits, space=space)


def make_evaluator(config: SearchConfig, base: BaseModel) -> Any:
    """The candidate evaluator the search scores architectures with (the chosen proxy)."""
    from automl_prune.evaluate import Evaluator

    steps = config.proxy_finetune_steps if config.proxy == "finetune" else 0
    return Evaluator(
        base.model,
        base.space,
        base.splits.train.images,
        base.splits.val.images,
        base.splits.val.labels,
        train_labels=base.splits.train.labels,
        criterion=config.criterion,
        bn_batches=config.bn_batches,
        finetune_steps=steps,
        seed=config.seed,
    )


def _check_run_dir(config: SearchConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds a compatible earlier run (resume); error when it holds another search."""
    previous = run_dir / "config.json"
    if not previous.exists():
        return False
    old = json.loads(previous.read_text())
    new = config.to_dict()
    changed = [k for k in _IDENTITY_KEYS if old.get(k) != new.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{run_dir} holds a search with other settings ({diffs}); choose another --out to start a new "
            "search, or repeat the same settings to resume it"
        )
    return True


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def _spend_leftover_budget(best: Any, space: Any, budget: int) -> Any:
    """Widen ``best`` group by group (round robin) while FLOPs stay within budget: a superset of it."""
    from agents import fill_budget
    from search_spaces import Architecture

    target = {name: float(width) for name, width in best.widths.items()}
    return Architecture(fill_budget(space, best.widths, budget, target))


def run_search(config: SearchConfig) -> dict[str, Any]:
    """Run a whole search as configured; returns the summary (also written to ``RUN_DIR/summary.json``)."""
    from tqdm import tqdm

    from agents import SEARCHERS
    from automl_prune.evaluate import accuracy_and_loss
    from automl_prune.export import export
    from automl_prune.report import format_table, plot_widths, summary_rows
    from automl_prune.training import train

    SEARCHERS.get(config.agent)  # fail on a bad name before any work
    run_dir = Path(config.out)
    resuming = _check_run_dir(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # matplotlib would otherwise put its font cache in the home directory: keep every file in the run dir.
    os.environ.setdefault("MPLCONFIGDIR", str((run_dir / ".cache" / "matplotlib").resolve()))
    _write_json(run_dir / "config.json", config.to_dict())

    base = load_base(config)
    space = base.space
    budget = space.flops_budget(config.flops)
    evaluator = make_evaluator(config, base)
    options: dict[str, Any] = dict(config.agent_options)
    if config.agent in ("ddpg", "ppo"):
        options["reward"] = config.reward
    if config.agent.startswith("optuna") and config.storage:
        options["storage"] = config.storage
    try:
        searcher = SEARCHERS.create(config.agent, space, evaluator, budget, seed=config.seed, run_dir=run_dir,
                                    **options)
    except TypeError as exc:  # an agent option the searcher does not take
        raise ConfigError(f"agent {config.agent!r} rejected its options {sorted(options)}: {exc}") from exc
    state_dir = run_dir / "agent_state"
    if resuming and state_dir.exists():
        searcher.restore(state_dir)
    done = len(searcher.history)
    if resuming:
        _log(f"resuming {run_dir}: {done} of {config.episodes} evaluations already done")
    _log(
        f"searching {config.model} on {config.dataset} with {config.agent}: {len(space)} channel groups, "
        f"budget {budget:,} FLOPs ({config.flops:g} of {space.full_flops:,})"
    )

    bar = tqdm(total=config.episodes, initial=min(done, config.episodes), desc=f"search ({config.agent})",
               unit="eval", disable=not config.progress, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    best_acc = [max((e.metrics["accuracy"] for e in searcher.history.entries), default=0.0)]

    def on_evaluation(entry: Any) -> None:
        best_acc[0] = max(best_acc[0], entry.metrics["accuracy"])
        bar.set_postfix(acc=f"{entry.metrics['accuracy']:.3f}", best=f"{best_acc[0]:.3f}",
                        flops=f"{entry.metrics['flops_ratio']:.3f}")
        bar.update(1)

    start = time.perf_counter()
    try:
        result = searcher.search(config.episodes, callback=on_evaluation)
    except KeyboardInterrupt:
        searcher.save(state_dir)
        bar.close()
        _log(f"interrupted; progress is saved. Resume with the same command (--out {run_dir}).")
        raise
    bar.close()
    search_seconds = time.perf_counter() - start
    searcher.save(state_dir)

    best = space.complete(result.best)
    flops = space.flops(best)
    if flops > budget:  # the searchers guarantee this; checked again because it is the product's promise
        raise RuntimeError(f"best architecture has {flops} FLOPs, over the budget {budget}")
    val_before = result.best_metrics["accuracy"]
    filled_from = None
    if config.fill_budget:
        widened = _spend_leftover_budget(best, space, budget)
        if widened != best:
            filled_from = {"architecture": best.widths, "flops": flops, "val_acc": val_before}
            best, val_before = widened, evaluator.evaluate(widened).accuracy
            _log(f"widened the best architecture to spend the leftover budget: {flops / budget:.3f} -> "
                 f"{space.flops(best) / budget:.3f} of it")

    _log(f"fine-tuning the best architecture for {config.finetune_epochs:g} epoch(s)")
    pruned = evaluator.build(best)
    ft_start = time.perf_counter()
    if config.finetune_epochs > 0:
        train(pruned, base.splits, epochs=config.finetune_epochs, lr=config.finetune_lr, seed=config.seed,
              progress=config.progress)
    finetune_seconds = time.perf_counter() - ft_start
    pruned = pruned.to("cpu", memory_format=torch.contiguous_format).eval()
    val_after, _ = accuracy_and_loss(pruned, base.splits.val.images, base.splits.val.labels, 1000)
    test_acc, _ = accuracy_and_loss(pruned, base.splits.test.images, base.splits.test.labels, 1000)

    costs, full = space.costs(best), space.cost_model.full
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "agent": config.agent,
        "flops_budget": config.flops,
        "base": {"flops": full.flops, "params": full.params, "val_acc": base.meta["val_acc"],
                 "test_acc": base.meta["test_acc"]},
        "compressed": {"flops": costs.flops, "params": costs.params, "val_acc_before_finetune": val_before,
                       "val_acc_after_finetune": val_after, "test_acc": test_acc},
        "evaluations": len(result.history),
        "search_seconds": search_seconds,
        "finetune_seconds": finetune_seconds,
        "architecture": best.widths,
        **({"widened_from": filled_from} if filled_from else {}),
        **({"pareto_front": result.extra["pareto_front"]} if "pareto_front" in result.extra else {}),
    }
    export(run_dir / "best", model=pruned, space=space, architecture=best, model_name=config.model,
           in_channels=base.meta["in_channels"], num_classes=base.meta["num_classes"], dataset=config.dataset,
           base_checkpoint_sha256=base.meta.get("sha256"), metrics=summary["compressed"], onnx=config.onnx)
    plot_widths({d.name: d.size for d in space.decisions}, best.widths, run_dir / "best" / "widths.png",
                f"{config.model}: channels kept at {costs.flops / full.flops:.2f}x FLOPs ({config.agent})")
    _write_json(run_dir / "summary.json", summary)
    table = format_table(["", "base", "compressed"], summary_rows(summary))
    atomic_write_text(run_dir / "summary.md", table + "\n")
    print(table)
    print(f"\nexported to {run_dir / 'best'} (arch.json, weights.pt, widths.png)")
    return summary
