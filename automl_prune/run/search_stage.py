"""The search stage's parts: the evaluator every searcher scores with, the bit budgets, the leftover budget."""

from __future__ import annotations

from typing import Any

from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.run.base_model import BaseModel

__all__ = ["bit_budgets", "calibration_data", "evaluator_kwargs", "make_evaluator", "spend_leftover_budget"]


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
    from automl_prune.prune.calibration import Calibration

    train = base.splits.train
    return Calibration.from_split(train.images, train.labels, samples=config.calibration_size, seed=config.seed)


def make_evaluator(config: SearchConfig, base: BaseModel) -> Any:
    """The candidate evaluator the search scores architectures with (the chosen proxy), in this process."""
    from automl_prune.scoring.evaluator import Evaluator

    kwargs = evaluator_kwargs(config, base)
    return Evaluator(kwargs.pop("model"), kwargs.pop("space"), kwargs.pop("train_images"), kwargs.pop("val_images"),
                     kwargs.pop("val_labels"), **kwargs)


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


def spend_leftover_budget(best: Any, space: Any, budget: int, options: dict[str, Any] | None = None) -> Any:
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
