"""`LoaderSplit`: the user's ``DataLoader`` (or any re-iterable of batches) as a split, read only when needed.

Nothing collects it whole: a fine-tune draws batches from it with the loader's own shuffling and augmentation,
epoch after epoch; batch-norm recalibration and calibration criteria take its first batches; candidates are
scored on (the first ``val_batches`` batches of) a validation loader. Its batches may have any structure
(`automl_prune.data.batches`). Ray workers receive the loader pickled (a dataset that reads files pickles as
its paths), so the driver never reads the data to start them.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from automl_prune.data.batches import count_items, first_items, split_batch
from automl_prune.errors import ConfigError

__all__ = ["LoaderSplit", "is_loader_split"]


class LoaderSplit:
    """A split that is a re-iterable of ``(inputs, targets)`` batches.

    Args:
        loader: A ``DataLoader`` or any object whose every ``iter()`` starts a new pass (not a generator).
        name: The argument it came from (``train``, ``val``, ``test``), named in errors.

    Raises:
        ConfigError: A one-pass iterator (a generator), or an object that cannot be iterated.
    """

    def __init__(self, loader: Iterable[Any], name: str) -> None:
        try:
            iterator = iter(loader)
        except TypeError as error:
            raise ConfigError(f"`{name}` must be a DataLoader or another re-iterable of (inputs, targets) batches, "
                              f"but got {type(loader).__name__}") from error
        if iterator is loader:
            raise ConfigError(f"`{name}` is a one-pass iterator ({type(loader).__name__}); the search reads its data "
                              "many times: give a DataLoader or another re-iterable (a list of batches)")
        del iterator  # a DataLoader's iterator may hold worker processes: let them go now
        self.loader = loader
        self.name = name

    def __repr__(self) -> str:
        return f"LoaderSplit({self.name}: {type(self.loader).__name__}, {self.num_batches} batches)"

    @property
    def num_batches(self) -> int | None:
        """Batches in one pass, when the loader says (``len``); ``None`` for an iterable of unknown length."""
        try:
            return len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None

    @property
    def num_items(self) -> int | None:
        """Items in one pass when the loader's dataset says (``len(loader.dataset)``), else ``None``."""
        dataset = getattr(self.loader, "dataset", None)
        try:
            return len(dataset) if dataset is not None else None
        except TypeError:
            return None

    def batches(self, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        """``(inputs, targets)`` of one new pass over the loader (the first ``limit`` batches when given)."""
        if limit is not None and limit < 1:
            return
        seen = 0
        for index, batch in enumerate(self.loader):
            yield split_batch(batch, self.name, index)
            seen += 1
            if limit is not None and seen >= limit:
                return
        if seen == 0:
            raise ConfigError(f"`{self.name}` yielded no batches")

    def first_batch(self) -> tuple[Any, Any]:
        """The first batch of a pass read under a fixed seed (a shuffling loader gives the same one every time)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return next(self.batches(limit=1))

    def example_inputs(self) -> Any:
        """The first item's inputs, keeping their structure (traces the graph, counts FLOPs, exports)."""
        return first_items(self.first_batch()[0], 1)

    def take(self, items: int) -> list[tuple[Any, Any]]:
        """Whole batches from the start of a pass until they hold at least ``items`` items."""
        taken: list[tuple[Any, Any]] = []
        count = 0
        for inputs, targets in self.batches():
            taken.append((inputs, targets))
            count += count_items(inputs)
            if count >= items:
                break
        return taken

    def fingerprint(self) -> str:
        """What identifies the data without reading it all: the loader's and dataset's types, lengths and batch
        size, and the bytes of the first batch under a fixed seed. Data changed behind the same loader beyond its
        first batch is not detected."""
        digest = hashlib.blake2b(digest_size=16)
        dataset = getattr(self.loader, "dataset", None)
        digest.update(repr((type(self.loader).__qualname__, type(dataset).__qualname__, self.num_items,
                            self.num_batches, getattr(self.loader, "batch_size", None))).encode())
        _hash_value(digest, self.first_batch())
        return digest.hexdigest()

    def check_picklable(self, workers: int) -> None:
        """Refuse a loader that cannot reach ``workers`` Ray worker processes (one line naming why)."""
        if workers <= 0:
            return
        try:
            pickle.dumps(self.loader)
        except Exception as exc:  # PicklingError, AttributeError, TypeError: whatever the object holds
            raise ConfigError(
                f"the `{self.name}` loader cannot be sent to the {workers} Ray worker processes ({type(exc).__name__}: "
                f"{exc}); define its dataset, collate_fn and transforms at module level (no lambdas, generators or "
                "open files), or pass workers=0") from exc


def is_loader_split(split: object) -> bool:
    """Whether ``split`` is the user's loader (`LoaderSplit`) rather than tensors in memory or on disk."""
    return isinstance(split, LoaderSplit)


def _hash_value(digest: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _hash_value(digest, value[key])
    elif isinstance(value, (tuple, list)):
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(repr(value).encode())
