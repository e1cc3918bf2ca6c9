"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and a pretraining cache.

File format: ``{"format": 1, "meta": {...plain data...}, "state_dict": {name: tensor}}``.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from automl_prune.atomic import atomic_write
from automl_prune.data.datasets import Split, Splits
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.data.streaming import LazyImages
from automl_prune.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "cache_path",
    "checkpoint_hash",
    "data_fingerprint",
    "load_checkpoint",
    "load_into",
    "pretrain_or_load",
    "save_checkpoint",
    "state_sha256",
]

FORMAT_VERSION = 1
DEFAULT_LR = 0.1
DEFAULT_BATCH_SIZE = 128


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model``'s state dict and ``meta`` to ``path`` atomically (temp file, then ``os.replace``).

    Args:
        path: Destination; its folder is created if needed.
        model: The model whose ``state_dict()`` is saved (tensors copied to CPU, contiguous).
        meta: Plain data (str, int, float, bool, None, lists, dicts): it must load with ``weights_only``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    payload = {"format": FORMAT_VERSION, "meta": dict(meta), "state_dict": state}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save_checkpoint`.

    Returns:
        ``(state_dict, meta)``.

    Raises:
        CheckpointError: The file is missing, truncated, corrupt, or not in this format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError, ... for bad files
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"checkpoint {path} is not an automl-prune checkpoint of format {FORMAT_VERSION} (found format {found!r})"
        )
    state, meta = payload.get("state_dict"), payload.get("meta")
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} lacks a `state_dict` or `meta` dictionary")
    return state, meta


def load_into(
    model: nn.Module,
    state_dict: dict[str, Tensor],
    meta: dict[str, Any],
    expected_model_name: str | None = None,
) -> nn.Module:
    """Load ``state_dict`` into ``model`` after checking that it belongs to that model.

    Args:
        model: The freshly built model to fill.
        state_dict: From `load_checkpoint`.
        meta: From `load_checkpoint`; its ``"model"`` entry is compared with ``expected_model_name``.
        expected_model_name: The model name the checkpoint must have been saved for; ``None`` skips it.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        CheckpointError: Another model's checkpoint, missing or unexpected keys, or a shape mismatch (the
            message names the first offending key).
    """
    saved_name = meta.get("model")
    if expected_model_name is not None and saved_name != expected_model_name:
        raise CheckpointError(
            f"checkpoint is for model {saved_name!r}, but model {expected_model_name!r} was asked for"
        )
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint keys do not match model {expected_model_name or saved_name!r}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in own.items():
        if tuple(value.shape) != tuple(state_dict[key].shape):
            raise CheckpointError(
                f"checkpoint tensor {key!r} has shape {tuple(state_dict[key].shape)}, but model "
                f"{expected_model_name or saved_name!r} expects {tuple(value.shape)}"
            )
    model.load_state_dict(state_dict)
    return model


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of the checkpoint file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes and values): a model object's identity."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(splits: Splits) -> str:
    """A short hash of everything in ``splits`` that training or validation sees (16 hex digits).

    Covers the training and validation images and labels (so the data root's content, the validation size and
    the seed of the split) and the dataset spec (normalization, input size). Two folders with identical
    content share a fingerprint, which is right: they give the same weights. Streamed images
    (`automl_prune.data.streaming.LazyImages`) are not read: their file names, sizes and modification times stand
    for their content.
    """
    digest = hashlib.blake2b(digest_size=8)
    spec = splits.spec
    digest.update(repr((spec.name, spec.in_channels, spec.num_classes, spec.input_size, spec.mean, spec.std,
                        spec.crop_padding, spec.hflip)).encode())
    for split in (splits.train, splits.val):
        if isinstance(split, LoaderSplit):  # the user's loader: its types, lengths and first batch
            digest.update(split.fingerprint().encode())
            continue
        for tensor in (split.images, split.labels):
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            if isinstance(tensor, LazyImages):  # streamed from disk: its files (names, sizes, times) and transform
                digest.update(tensor.fingerprint().encode())
                continue
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_path(
    cache_dir: str | Path,
    model_name: str,
    dataset_name: str,
    *,
    seed: int,
    epochs: float,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    data: str | None = None,
    source: str | None = None,
) -> Path:
    """Where `pretrain_or_load` keeps a pretrained model: ``<model>__<dataset>__s<seed>__e<epochs>__d<data>.pt``.

    Non-default ``lr``/``batch_size`` are appended (``__lr0.05__b256``) since they change the weights, and so is
    the ``data`` fingerprint (`data_fingerprint`), since the images and the train/validation split do;
    characters outside ``[A-Za-z0-9._-]`` (such as the ``:`` of ``torchvision:resnet18``) become ``-``.
    """
    name = f"{model_name}__{dataset_name}__s{seed}__e{epochs:g}"
    if lr != DEFAULT_LR:
        name += f"__lr{lr:g}"
    if batch_size != DEFAULT_BATCH_SIZE:
        name += f"__b{batch_size}"
    if data is not None:
        name += f"__d{data}"
    if source is not None:
        name += f"__m{source}"
    return Path(cache_dir) / (re.sub(r"[^A-Za-z0-9._-]", "-", name) + ".pt")


def pretrain_or_load(
    model_name: str,
    dataset_name: str,
    *,
    data_root: str | Path | None = None,
    epochs: float,
    seed: int,
    cache_dir: str | Path,
    lr: float = DEFAULT_LR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
    progress: bool = True,
    splits: Splits | None = None,
    val_size: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Return a pretrained model, from the cache when this exact run was done before, else by training it.

    The cache key is model, dataset, seed, epochs, lr, batch size and a fingerprint of the training and
    validation data (`data_fingerprint`: a base trained with one validation split is never scored on another
    split whose images it trained on, and each data folder gets its own file; see `cache_path`). On a miss the model
    is trained with `automl_prune.train.training.train`, its validation and test accuracy measured, and the
    checkpoint saved atomically.

    Args:
        model_name: Name for `automl_prune.models.build_model`.
        dataset_name: Name for `automl_prune.data.datasets.load_dataset`.
        data_root: Dataset root (see `load_dataset`).
        epochs: Training epochs.
        seed: Seed of the data split, the initial weights and the batch order.
        cache_dir: Folder of cached checkpoints (created if needed).
        lr: Peak learning rate.
        batch_size: Training batch size.
        device: Training device; ``None`` is `automl_prune.train.training.default_device`.
        progress: Show training progress bars.
        splits: Already loaded `automl_prune.data.datasets.Splits` of ``dataset_name`` (skips loading them).
        val_size: Validation images held out when ``splits`` is not given (see `load_dataset`).

    Returns:
        ``(model in eval mode on CPU, meta)``; meta holds ``model``, ``dataset``, ``in_channels``,
        ``num_classes``, ``input_size``, ``epochs``, ``seed``, ``lr``, ``batch_size``, ``val_acc``,
        ``test_acc``, ``train_seconds``, plus ``path``, ``sha256`` and ``cached`` (whether it was loaded).

    Raises:
        CheckpointError: A cached file that is corrupt or does not match the model.
    """
    from automl_prune.data.datasets import load_dataset
    from automl_prune.models import build_model
    from automl_prune.models.import_path import is_import_path, source_fingerprint
    from automl_prune.train.training import evaluate_accuracy, train

    if splits is None:
        splits = load_dataset(dataset_name, data_root, seed=seed, val_size=val_size)
    fingerprint = data_fingerprint(splits)
    source = None
    if is_import_path(model_name):  # the user's own code: its file's content is part of the key
        with torch.random.fork_rng():
            build_model(model_name, splits.spec.in_channels, splits.spec.num_classes, splits.spec.input_size)
        source = source_fingerprint(model_name)
    path = cache_path(cache_dir, model_name, dataset_name, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size,
                      data=fingerprint, source=source)
    if path.is_file():
        state, meta = load_checkpoint(path)
        model = build_model(model_name, meta["in_channels"], meta["num_classes"], meta["input_size"])
        load_into(model, state, meta, model_name)
        return model.eval(), {**meta, "path": str(path), "sha256": checkpoint_hash(path), "cached": True}

    spec = splits.spec
    torch.manual_seed(seed)
    model = build_model(model_name, spec.in_channels, spec.num_classes, spec.input_size)
    start = time.perf_counter()
    stats = train(
        model,
        splits,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
    )
    train_seconds = time.perf_counter() - start
    assert isinstance(splits.val, Split) and splits.test is not None, "a zoo dataset's splits are in memory or on disk"
    val_acc, _ = evaluate_accuracy(model, splits.val)
    test_acc, _ = evaluate_accuracy(model, splits.test)
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # torch's stub lacks to(device, memory_format=)
    meta = {
        "model": model_name,
        "dataset": dataset_name,
        "in_channels": spec.in_channels,
        "num_classes": spec.num_classes,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "data_fingerprint": fingerprint,
        "data_root": None if data_root is None else str(Path(data_root).resolve()),
        "val_size": len(splits.val),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "train_seconds": train_seconds,
        "images_per_second": stats["images_per_second"],
        "torch_version": str(torch.__version__),
    }
    save_checkpoint(path, model, meta)
    return model, {**meta, "path": str(path), "sha256": checkpoint_hash(path), "cached": False}
