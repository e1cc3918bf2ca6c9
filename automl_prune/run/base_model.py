"""The base model of a run: the user's or a cached pretrained network, its data, its search space, its identity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from automl_prune.config import SearchConfig
from automl_prune.data.datasets import Splits
from automl_prune.data.task import Task
from automl_prune.errors import ConfigError
from search_spaces import SearchSpace

__all__ = ["LATENCY_TABLE_FILE", "PYTHON_MODEL_PREFIX", "BaseModel", "base_from_model", "base_identity",
           "check_base_identity", "exclude_layers", "load_base", "log", "with_latency_cost"]


#: The run's copy of its latency table (a latency budget), read on resume instead of the cache's.
LATENCY_TABLE_FILE = "latency_table.json"

#: ``config.model`` of a search started from Python with a model object (`automl_prune.api.search`).
PYTHON_MODEL_PREFIX = "python:"


@dataclass
class BaseModel:
    """A trained base model with its data and search space, and the task candidates are trained and scored on
    (`automl_prune.data.task.Task`: cross-entropy and top-1 accuracy unless the Python API was given others)."""

    model: torch.nn.Module
    meta: dict[str, Any]
    splits: Splits
    space: SearchSpace
    task: Task = field(default_factory=Task)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_base(config: SearchConfig) -> BaseModel:
    """Load the dataset and the base model (the user's ``--weights``, else pretrained or cached), build its space."""
    from automl_prune.data.datasets import load_dataset
    from automl_prune.models.checkpoints import pretrain_or_load

    if config.model.startswith(PYTHON_MODEL_PREFIX):
        raise ConfigError(f"{config.out} was started from Python with a model object ({config.model}); resume it "
                          "by calling automl_prune.search again with the same model and data")
    if config.weights is not None:
        from automl_prune.models.weights import check_weights_path

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
    from automl_prune.data.loader_split import LoaderSplit
    from search_spaces import SearchSpace

    example = splits.val.example_inputs() if isinstance(splits.val, LoaderSplit) else splits.val.images[:1]
    if not isinstance(example, torch.Tensor):
        # Channel groups, FLOPs, export and reload trace ``model(x)`` on one tensor: a batch's first input tensor,
        # in eval mode (a detector wrapper whose targets are optional takes it as it is).
        from automl_prune.data.batches import call_model, first_tensor

        example = first_tensor(example)
        try:
            with torch.no_grad():
                call_model(model.eval(), example)
        except Exception as exc:
            raise ConfigError(
                f"the model's channels are traced by calling it on one tensor, the first of a batch's inputs "
                f"(shape {list(example.shape)}), in eval mode; it failed ({type(exc).__name__}: {exc}); give the "
                "model a forward whose other inputs are optional (see the detection example in the docs)") from exc
    space = SearchSpace.from_model(
        model, example, min_keep_ratio=config.min_keep_ratio, round_to=config.round_to, model_name=config.model
    )
    if config.exclude:
        space = exclude_layers(space, config.exclude, bits=config.resolved_search != "widths")
    return BaseModel(model=model, meta=meta, splits=splits, space=space, task=task or Task())


def exclude_layers(space: SearchSpace, patterns: tuple[str, ...], *, bits: bool = False) -> SearchSpace:
    """The space without the width decisions of groups whose channels a matching layer outputs (kept full), and
    with every matching conv/linear layer pinned to float (32 bits) when bits are searched.

    A pattern matches a module path exactly, as a prefix (``layer1`` matches ``layer1.0.conv1``) or as a glob
    (``features.*``). A pattern that matches no prunable layer (nor, when ``bits`` are searched, no quantizable
    layer) is an error that lists some of them.
    """
    from fnmatch import fnmatchcase

    from automl_prune.quantize.fake import FLOAT_BITS
    from search_spaces import SearchSpace

    def matches(layer: str, pattern: str) -> bool:
        return layer == pattern or layer.startswith(pattern + ".") or fnmatchcase(layer, pattern)

    producers = {d.name: [m.layer for m in space.graph.group(d.name).members if m.dim == "out"]
                 for d in space.decisions}
    candidates = {layer for layers in producers.values() for layer in layers}
    if bits:
        candidates |= set(space.quantizable_layers)
    for pattern in patterns:
        if not any(matches(layer, pattern) for layer in candidates):
            what = "prunable or quantizable" if bits else "prunable"
            raise ConfigError(f"--exclude {pattern!r} matches no {what} layer; {what} layers include "
                              f"{sorted(candidates)[:8]}")
    kept = [d for d in space.decisions if not any(matches(layer, p) for layer in producers[d.name] for p in patterns)]
    float_layers = [name for name in space.quantizable_layers if any(matches(name, p) for p in patterns)]
    if not kept:
        raise ConfigError(f"--exclude {list(patterns)} leaves no channel group to prune")
    log(f"excluded from compression (full width, float): {len(space.decisions) - len(kept)} of "
        f"{len(space.decisions)} channel groups, {len(float_layers)} layers")
    pinned = {**space.pinned_bits, **{name: FLOAT_BITS for name in float_layers}}
    return SearchSpace(space.graph, kept, model_name=space.model_name, bit_choices=space.bit_choices,
                       pinned_bits=pinned)


def _base_from_weights(config: SearchConfig, splits: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The user's trained weights in the configured model definition; no pretraining, accuracy measured."""
    from automl_prune.models import build_model
    from automl_prune.models.checkpoints import checkpoint_hash
    from automl_prune.models.weights import load_state_dict_file, load_weights_into
    from automl_prune.train.training import evaluate_accuracy

    assert config.weights is not None, "called only for a run with --weights"
    spec = splits.spec
    model = build_model(config.model, spec.in_channels, spec.num_classes, spec.input_size)
    state = load_state_dict_file(config.weights)
    load_weights_into(model, state, f"--weights {config.weights} (model {config.model})")
    model = model.eval()
    val_acc, _ = evaluate_accuracy(model, splits.val, batch_size=250)
    test_acc, _ = evaluate_accuracy(model, splits.test, batch_size=250)
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    log(f"base model: {config.model} with the weights of {config.weights} (no pretraining): val "
        f"{100 * val_acc:.2f}%, test {100 * test_acc:.2f}%")
    path = Path(config.weights).resolve()
    return model, {
        "model": config.model, "dataset": config.dataset, "in_channels": spec.in_channels,
        "num_classes": spec.num_classes, "input_size": spec.input_size, "epochs": 0, "train_seconds": 0.0,
        "val_acc": val_acc, "test_acc": test_acc, "path": str(path), "sha256": checkpoint_hash(path), "cached": False,
        "weights": str(path),
    }


def base_identity(base: BaseModel) -> dict[str, Any]:
    """What makes a run's base model itself: the hash of its weights and a fingerprint of its data (and the
    task's loss and metric, when they are not the defaults)."""
    from automl_prune.models.checkpoints import data_fingerprint, state_sha256

    sha = base.meta.get("sha256") or state_sha256(base.model)
    base.meta.setdefault("sha256", sha)
    identity = {"sha256": sha, "data_fingerprint": _order_free_fingerprint(base.splits)
                or data_fingerprint(base.splits)}
    if base.task.custom:
        identity["task"] = base.task.identity()
    return identity


def check_base_identity(run_dir: Path, identity: dict[str, Any]) -> None:
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


def with_latency_cost(config: SearchConfig, base: BaseModel, run_dir: Path | None = None) -> BaseModel:
    """``base`` with a search space whose width cost is the predicted latency (ns) at ``latency_batch_size``, from
    the per-layer latency table of this device (`automl_prune.cost.latency`; measured once, cached in ``cache_dir``).

    A run keeps its own copy (``RUN_DIR/latency_table.json``, `LATENCY_TABLE_FILE`): a resumed run reads that one,
    so a cleared cache cannot change the costs (and the feasibility) of the run's budget.
    """
    from automl_prune.cost.latency import LatencyCostModel, LatencyTable, latency_table

    space = base.space
    own = run_dir / LATENCY_TABLE_FILE if run_dir is not None else None
    if own is not None and own.is_file():
        table, path = LatencyTable.from_dict(json.loads(own.read_text())), own
        log(f"latency table: the run's own {own}")
    else:
        table, path = latency_table(base.model, space.graph, {d.name: d.choices() for d in space.decisions},
                                    config.cache_dir, batch_size=config.latency_batch_size, log=log)
    table.meta["file"] = str(path)
    return dataclasses.replace(base, space=space.with_width_cost(LatencyCostModel(space.graph, table)))


def _order_free_fingerprint(splits: Splits) -> str | None:
    """A fingerprint of the training and validation images and labels that does not depend on their order (a
    shuffling DataLoader read again gives the same data in another order), or None for streamed images and for the
    user's loaders (`automl_prune.models.checkpoints.data_fingerprint` stands for those).

    Each image (its float32 bits) and label is hashed to a 64-bit integer by a fixed random linear map and a
    mixing step, and the hashes are summed modulo 2**64: integer addition is exact, so any order gives the same
    sum, while changing any value changes it.
    """
    from automl_prune.data.loader_split import LoaderSplit
    from automl_prune.data.streaming import LazyImages

    digest = hashlib.blake2b(digest_size=8)
    spec = splits.spec
    digest.update(repr((spec.name, spec.in_channels, spec.num_classes, spec.input_size, spec.mean,
                        spec.std)).encode())
    for split in (splits.train, splits.val):
        if isinstance(split, LoaderSplit) or isinstance(split.images, LazyImages):
            return None
        flat = split.images.detach().to("cpu", torch.float32).reshape(len(split.images), -1).contiguous()
        generator = torch.Generator().manual_seed(20261207)
        weights = torch.randint(-(2**62), 2**62, (flat.shape[1] + 1,), generator=generator, dtype=torch.int64)
        total = 0
        for start in range(0, len(flat), 4096):
            rows = torch.cat([flat[start:start + 4096].view(torch.int32).to(torch.int64),
                              split.labels[start:start + 4096].reshape(-1, 1).to(torch.int64)], dim=1)
            hashed = rows @ weights
            hashed = (hashed ^ (hashed >> 29)) * -7046029254386353131  # a 64-bit mixing constant (wraps)
            total += int((hashed ^ (hashed >> 32)).sum())
        digest.update(repr((tuple(flat.shape), total % 2**64)).encode())
    return digest.hexdigest()
