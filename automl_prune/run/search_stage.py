"""The search stage's parts: the evaluator every searcher scores with, the run's budget, the leftover budget."""

from __future__ import annotations

from typing import Any

from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.run.base_model import BaseModel
from search_spaces import Budget

__all__ = ["calibration_data", "evaluator_kwargs", "make_evaluator", "profile_options", "run_budget",
           "spend_leftover_budget", "start_options"]


def evaluator_kwargs(config: SearchConfig, base: BaseModel) -> dict[str, Any]:
    """The arguments of the search's `Evaluator` (the chosen proxy), shared with parallel workers (which replace
    ``device`` with their own)."""
    from automl_prune.data.loader_split import LoaderSplit
    from automl_prune.train.device import resolve_device

    steps = config.search_finetune_steps
    train, val = base.splits.train, base.splits.val
    return {
        "model": base.model,
        "space": base.space,
        # The user's loaders travel as they are (pickled to Ray workers): nothing is read to start a worker.
        "train_images": train if isinstance(train, LoaderSplit) else train.images,
        "val_images": val if isinstance(val, LoaderSplit) else val.images,
        "val_labels": None if isinstance(val, LoaderSplit) else val.labels,
        "train_labels": None if isinstance(train, LoaderSplit) else train.labels,
        "val_batches": config.val_batches,
        "criterion": config.resolved_criterion,
        "bn_batches": config.bn_batches,
        "finetune_steps": steps,
        "seed": config.seed,
        # 250 images per forward pass scored about twice as fast as 1000 on these CPUs (cache-sized batches).
        "eval_batch_size": 250,
        "calibration": calibration_data(config, base),
        "reconstruct": config.reconstruct,
        "task": base.task,
        "device": resolve_device(config.device).device,
        "precision": config.precision,
    }


def calibration_data(config: SearchConfig, base: BaseModel) -> Any:
    """The training images (and labels) data-driven criteria and reconstruction see: a seeded subset (None when
    neither the criterion nor ``reconstruct`` reads data)."""
    from automl_prune.data.loader_split import LoaderSplit
    from automl_prune.prune.calibration import Calibration
    from automl_prune.prune.criteria import get_criterion

    if not config.reconstruct and not getattr(get_criterion(config.resolved_criterion), "requires_data", False):
        return None
    train = base.splits.train
    if isinstance(train, LoaderSplit):
        return Calibration.from_loader(train, samples=config.calibration_size)
    return Calibration.from_split(train.images, train.labels, samples=config.calibration_size, seed=config.seed)


def make_evaluator(config: SearchConfig, base: BaseModel) -> Any:
    """The candidate evaluator the search scores architectures with (the chosen proxy), in this process."""
    from automl_prune.scoring.evaluator import Evaluator

    kwargs = evaluator_kwargs(config, base)
    return Evaluator(kwargs.pop("model"), kwargs.pop("space"), kwargs.pop("train_images"), kwargs.pop("val_images"),
                     kwargs.pop("val_labels"), **kwargs)


def run_budget(config: SearchConfig, space: Any) -> Budget:
    """Every limit of the run: the width limit (FLOPs, or predicted latency with ``latency``; ``space`` then has
    the latency width cost) and, when bits are searched, the size and BOPs limits."""
    from automl_prune.config import parse_size

    size, bops = None, None
    if config.resolved_search != "widths":
        if config.size is not None:
            kind, value = parse_size(config.size)
            size = value if kind == "fraction" else value / space.full_size_bits
            if size > 1.0:
                raise ConfigError(f"--size {config.size} is more than the float32 model "
                                  f"({space.full_size_bits / 8:,.0f} bytes); give a smaller size or a fraction")
        bops = config.bops
    return Budget.from_fractions(space, config.flops, size=size, bops=bops, latency=config.latency)


def spend_leftover_budget(best: Any, space: Any, budget: Budget, search: str = "widths") -> Any:
    """Widen ``best`` group by group (round robin) while FLOPs stay within budget: a superset of it. With bits,
    they are kept and then taken off the costliest layers if the wider model is over the size/BOPs budgets;
    with ``search="bits"`` (widths not searched) ``best`` is returned as it is."""
    from agents import fill_budget
    from search_spaces import Architecture

    target = {name: float(width) for name, width in best.widths.items()}
    widened = Architecture(fill_budget(space, best.widths, budget.flops, target), dict(best.bits))
    if search == "bits":
        return best  # widths are not searched: the model stays at full width
    if best.bits and budget.has_bit_limits:
        from agents import project_bits

        widened = project_bits(space, widened, budget.size_bits, budget.bops)
    return widened


def profile_options(config: SearchConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """Where sensitivity profiles are kept across runs (``cache_dir``) and what makes two runs' profiles the same
    (`agents.profile_cache`): the base model's weights and data (``identity``, `base_model.base_identity`), the
    criterion, the calibration and the proxy the candidates are scored with, and the width decisions' settings.
    The budget is not part of it: one profile serves every budget."""
    import json
    from pathlib import Path

    key = {
        "base": identity.get("sha256"), "data": identity.get("data_fingerprint"), "task": identity.get("task"),
        "criterion": config.resolved_criterion, "reconstruct": config.reconstruct,
        "calibration": {"samples": config.calibration_size, "seed": config.seed, "bn_batches": config.bn_batches},
        "proxy": {"finetune_steps": config.search_finetune_steps,
                  "precision": str(getattr(config, "precision", "float32"))},
        "space": {"min_keep_ratio": config.min_keep_ratio, "round_to": config.round_to,
                  "exclude": list(config.exclude)},
    }
    return {"profile_cache": str(Path(config.cache_dir)),
            "profile_key": json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)}


def start_options(config: SearchConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """The searcher's options for ``search_start``: none for ``uniform`` (every searcher's own start); for
    ``one-shot`` (DDPG, PPO, Optuna: `agents.start`) the start and where its sensitivity profile is cached
    (`profile_options`), so that a profile measured by any earlier run of this base model and proxy is reused."""
    if config.search_start == "uniform":
        return {}
    return {"start": config.search_start, **profile_options(config, identity)}
