"""Datasets from local files, as normalized tensors in memory, with a validation split from train.

A large ``imagefolder`` is streamed from disk instead (`automl_prune.data.streaming.LazyImages` in place of the
images tensor, read in batches by DataLoader workers); the choice is automatic and logged in one line.

The search scores architectures on ``val`` (held out from the training set with a fixed seed) and never
sees ``test``. Parsed arrays are cached in this process only; nothing is ever written or downloaded.

Augmentation (`iterate_batches(augment=True)`): random crop with zero padding (``spec.crop_padding``
pixels, after normalization) and, where ``spec.hflip``, a horizontal flip. It is off by default everywhere,
Fashion-MNIST included: runs here are 1-5 epochs, where augmentation costs accuracy rather than buying it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from automl_prune.data.batches import count_items
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.data.streaming import ImageFolderFiles, ImageTransform, LazyImages
from automl_prune.errors import ConfigError, DatasetNotFoundError
from automl_prune.registry import Registry

__all__ = [
    "DATASETS",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DatasetSpec",
    "RawDataset",
    "Split",
    "Splits",
    "dataset_names",
    "iterate_batches",
    "load_dataset",
]

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset; plain data, stored in checkpoint metadata."""

    name: str
    in_channels: int
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    hflip: bool = False


@dataclass(frozen=True)
class Split:
    """One split: ``images`` float32 normalized NCHW, ``labels`` int64 (in memory).

    ``images`` is a tensor, or for a streamed image folder a `LazyImages` that decodes only what is indexed:
    read it in batches (`iterate_batches`, ``images[a:b]``, ``images[index]``), never as a whole.
    """

    images: Tensor | LazyImages
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Splits:
    """Train, validation (held out from the training files) and test splits of one dataset."""

    train: Split | LoaderSplit
    val: Split | LoaderSplit
    test: Split | LoaderSplit | None
    spec: DatasetSpec


@dataclass(frozen=True)
class RawDataset:
    """What a loader returns: uint8 NCHW images and int64 labels of the train and test files."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    spec: DatasetSpec
    default_val_size: int


DATASETS: Registry[RawDataset] = Registry("dataset")


def dataset_names() -> list[str]:
    """Every dataset name `load_dataset` accepts."""
    return DATASETS.names()


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    val_size: int | None = None,
    seed: int = 0,
    subset: int | None = None,
    input_size: int | None = None,
    resize: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    stream: bool | None = None,
    stream_limit_bytes: int | None = None,
    loader_workers: int | None = None,
) -> Splits:
    """Load a dataset, normalized, with a validation split held out from the training set.

    Args:
        name: ``fashion-mnist``, ``cifar10``, ``imagefolder``, ``synthetic`` (1x16x16) or
            ``synthetic-rgb`` (3x32x32).
        root: Where the files are. ``fashion-mnist`` defaults to ``/usr/share/datasets/fashion-mnist``;
            ``cifar10`` wants the folder holding ``cifar-10-batches-py``; ``imagefolder`` wants a folder with
            ``train/`` and ``test/`` class subfolders; the synthetic sets ignore it.
        val_size: Images held out from the training set for validation; ``None``: 5000 for the real
            datasets, 10% of the training images for ``imagefolder``, 200 for the synthetic ones.
        seed: Seed of the train/val partition (and of the ``subset`` choice).
        subset: Keep only this many training images (chosen at random with ``seed``) for quick runs;
            validation and test are not reduced.
        input_size: Side images are resized to; only ``imagefolder`` uses it (default 32).
        resize: ``imagefolder``: the shorter side is resized to this before the center crop of ``input_size``
            (default ``input_size``: a square image is resized whole).
        mean, std: ``imagefolder``: per-channel normalization; by default measured on the training images
            (all of them in memory, a seeded sample of 512 when streamed).
        stream: ``imagefolder``: stream from disk (True), decode into memory (False), or decide by the
            decoded size (None, also ``AUTOML_PRUNE_STREAM``); see `automl_prune.data.streaming`.
        stream_limit_bytes: Decoded size above which ``imagefolder`` is streamed (default
            `automl_prune.data.streaming.stream_limit_bytes`).
        loader_workers: DataLoader worker processes of a streamed folder (default
            `automl_prune.data.streaming.default_loader_workers`).

    Returns:
        The `Splits`; ``val`` and ``train`` are disjoint. A streamed folder's splits hold `LazyImages`.

    Raises:
        UnknownNameError: Unknown ``name``.
        DatasetNotFoundError: Missing or unreadable files; the message says how to get them.
        ConfigError: A ``val_size`` or ``subset`` that does not fit the training set.
    """
    loader = DATASETS.get(name)
    root_text = str(root) if root is not None else None
    if name == "imagefolder":
        from automl_prune.data.streaming import choose_streaming, scan_imagefolder

        if (mean is None) != (std is None):
            raise ConfigError(f"give both `mean` and `std` or neither, but got mean={mean}, std={std}")
        if mean is not None and std is not None:
            mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        size = input_size or 32
        transform = ImageTransform(size, resize or size, *(() if mean is None or std is None else (mean, std)))
        files = scan_imagefolder(root_text)
        if choose_streaming(files, size, stream=stream, limit_bytes=stream_limit_bytes, workers=loader_workers):
            return _streamed_imagefolder(files, transform, val_size, seed, subset, mean, std, loader_workers)
        raw = _load_raw_cached(loader, root_text, size, transform.resize)
        if mean is not None and std is not None:
            raw = dataclasses.replace(raw, spec=dataclasses.replace(raw.spec, mean=mean, std=std))
    else:
        raw = _load_raw_cached(loader, root_text, input_size)
    val_idx, train_idx = _partition(len(raw.train_labels), raw.default_val_size, name, val_size, seed, subset)
    spec = raw.spec

    def make(images: np.ndarray, labels: np.ndarray) -> Split:
        return Split(_normalize(images, spec), torch.from_numpy(labels.astype(np.int64)))

    return Splits(
        train=make(raw.train_images[np.sort(train_idx)], raw.train_labels[np.sort(train_idx)]),
        val=make(raw.train_images[np.sort(val_idx)], raw.train_labels[np.sort(val_idx)]),
        test=make(raw.test_images, raw.test_labels),
        spec=spec,
    )


def _partition(
    n_train: int, default_val_size: int, name: str, val_size: int | None, seed: int, subset: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(val, train)`` indices of the training files: a seeded permutation, validation first."""
    val_size = default_val_size if val_size is None else val_size
    if not 0 <= val_size < n_train:
        raise ConfigError(f"`0 <= val_size < {n_train}` must hold for {name!r}, but got val_size={val_size}")
    order = np.random.default_rng(seed).permutation(n_train)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if subset is not None:
        if subset < 1:
            raise ConfigError(f"`subset` must be a positive number of images, but got {subset}")
        train_idx = train_idx[:subset]
    return val_idx, train_idx


def _streamed_imagefolder(
    files: ImageFolderFiles,
    transform: ImageTransform,
    val_size: int | None,
    seed: int,
    subset: int | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    workers: int | None,
) -> Splits:
    """`Splits` of an image folder whose images stay on disk (the same partition as the in-memory path)."""
    from automl_prune.data.streaming import sample_mean_std

    n_train = len(files.train_paths)
    val_idx, train_idx = _partition(n_train, max(1, n_train // 10), "imagefolder", val_size, seed, subset)
    train_root, test_root = str(Path(files.root) / "train"), str(Path(files.root) / "test")
    if mean is None or std is None:
        every = LazyImages(train_root, files.train_paths, dataclasses.replace(transform, mean=(0.0,) * 3,
                                                                              std=(1.0,) * 3), workers)
        sample_mean, sample_std = sample_mean_std(every, seed=seed)
        transform = dataclasses.replace(transform, mean=sample_mean, std=sample_std)

    def make(root: str, paths: tuple[str, ...], labels: np.ndarray, index: np.ndarray | None) -> Split:
        if index is not None:
            index = np.sort(index)
            paths, labels = tuple(paths[i] for i in index), labels[index]
        return Split(LazyImages(root, paths, transform, workers), torch.from_numpy(labels.astype(np.int64)))

    size = transform.size
    spec = DatasetSpec("imagefolder", 3, len(files.classes), size, transform.mean, transform.std,
                       crop_padding=size // 8, hflip=True)
    return Splits(
        train=make(train_root, files.train_paths, files.train_labels, train_idx),
        val=make(train_root, files.train_paths, files.train_labels, val_idx),
        test=make(test_root, files.test_paths, files.test_labels, None),
        spec=spec,
    )


def iterate_batches(
    split: Split | LoaderSplit,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None,
    augment: bool = False,
    spec: DatasetSpec | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(images, labels)`` batches: slices of an in-memory split, or DataLoader batches of a streamed one.

    Args:
        split: The split to iterate.
        batch_size: Images per batch (the last one may be smaller unless ``drop_last``).
        shuffle: Visit the images in a random order.
        seed: Seed of the order and the augmentation; ``None`` draws from torch's global generator.
        augment: Random crop with padding and, where the dataset allows, horizontal flips. Needs ``spec``.
        spec: The dataset's spec (padding and flip settings), required when ``augment``.
        drop_last: Skip a last, smaller batch (BatchNorm dislikes a batch of one).

    Yields:
        Batches of float32 NCHW images and int64 labels; for the user's loader (`LoaderSplit`) its own batches,
        ``(inputs, targets)`` of any structure, in its own order and size, with its own augmentation
        (``batch_size``, ``shuffle``, ``seed`` and ``augment`` are the loader's business then; ``drop_last``
        skips a last batch smaller than the first).

    Raises:
        ConfigError: A non-positive ``batch_size``, or ``augment`` without ``spec``.
    """
    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be a positive integer, but got {batch_size}")
    if isinstance(split, LoaderSplit):
        yield from _loader_batches(split, drop_last)
        return
    if augment and spec is None:
        raise ConfigError("`iterate_batches(augment=True)` needs the dataset's `spec` (padding and flips)")
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    if isinstance(split.images, LazyImages):
        index_batches = [order[s : s + batch_size] if order is not None else torch.arange(s, min(s + batch_size, n))
                         for s in range(0, stop, batch_size)]
        for index, x in zip(index_batches, split.images.iter_batches(index_batches), strict=True):
            yield (_augment(x, spec, generator) if augment and spec is not None else x), split.labels[index]
        return
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = split.images[start : start + batch_size], split.labels[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            x, y = split.images[index], split.labels[index]
        if augment and spec is not None:
            x = _augment(x, spec, generator)
        yield x, y


def _loader_batches(split: LoaderSplit, drop_last: bool) -> Iterator[tuple[Any, Any]]:
    first = None
    for inputs, targets in split.batches():
        size = count_items(inputs)
        first = size if first is None else first
        if drop_last and size < first:
            continue
        yield inputs, targets


def _augment(x: Tensor, spec: DatasetSpec, generator: torch.Generator) -> Tensor:
    """Random crop of the zero-padded batch, per image, plus horizontal flips where ``spec.hflip``."""
    n, _, h, w = x.shape
    pad = spec.crop_padding
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (n, 1, 1, w)
        batch = torch.arange(n)[:, None, None, None]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if spec.hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def _normalize(images: np.ndarray, spec: DatasetSpec) -> Tensor:
    """uint8 NCHW -> float32 NCHW, scaled to [0, 1] then standardized per channel."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)).float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


@functools.lru_cache(maxsize=4)
def _load_raw_cached(loader: Callable[..., RawDataset], root: str | None, input_size: int | None,
                     *extra: object) -> RawDataset:
    """Parse a dataset's files once per process (in memory only)."""
    return loader(root, input_size, *extra)


# ---------------------------------------------------------------------------------------------------- loaders

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@DATASETS.register("fashion-mnist")
def _load_fashion_mnist(root: str | None, input_size: int | None = None) -> RawDataset:
    """Fashion-MNIST from its four gzipped IDX files (Debian's ``dataset-fashion-mnist`` installs them)."""
    folder = Path(root or DEFAULT_FASHION_MNIST_ROOT)
    missing = [name for name in _FASHION_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: {folder} lacks {missing}. Install it with "
            f"`sudo apt-get install dataset-fashion-mnist` (files go to {DEFAULT_FASHION_MNIST_ROOT}), "
            "or pass "
            "`--data-root PATH` pointing at a folder with the four *-ubyte.gz files."
        )
    arrays = {key: _read_idx(folder / name) for key, name in _FASHION_FILES.items()}
    spec = DatasetSpec("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,), crop_padding=2, hflip=True)
    return RawDataset(
        arrays["train_images"][:, None],
        arrays["train_labels"],
        arrays["test_images"][:, None],
        arrays["test_labels"],
        spec,
        default_val_size=5000,
    )


def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (uint8 data): magic ``0 0 8 ndim``, big-endian int32 dims, then bytes."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
            raise ValueError("bad magic number")
        ndim = data[3]
        dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if array.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values for shape {dims}, found {array.size}")
        return array.reshape(dims)
    except (OSError, EOFError, ValueError) as error:
        raise DatasetNotFoundError(
            f"{path} is not a valid gzipped IDX file ({error}); reinstall `dataset-fashion-mnist` or "
            "pass `--data-root PATH` with intact files."
        ) from error


@DATASETS.register("cifar10")
def _load_cifar10(root: str | None, input_size: int | None = None) -> RawDataset:
    """CIFAR-10 from the python pickles of a torchvision-format folder (``ROOT/cifar-10-batches-py``)."""
    help_text = (
        "download the CIFAR-10 python version (cifar-10-python.tar.gz) on a machine with internet, "
        "extract it so that PATH/cifar-10-batches-py/data_batch_1 exists, and pass `--data-root PATH`."
    )
    if root is None:
        raise DatasetNotFoundError(f"cifar10 needs a data root: {help_text}")
    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(f"CIFAR-10 not found: {folder} lacks {missing}; {help_text}")
    batches = []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batches.append((images, np.asarray(entry["labels"], dtype=np.int64)))
        except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
            raise DatasetNotFoundError(f"{folder / name} is not a readable CIFAR-10 batch ({error})") from error
    spec = DatasetSpec(
        "cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), crop_padding=4, hflip=True
    )
    return RawDataset(
        np.concatenate([b[0] for b in batches[:5]]),
        np.concatenate([b[1] for b in batches[:5]]),
        batches[5][0],
        batches[5][1],
        spec,
        default_val_size=5000,
    )


@DATASETS.register("imagefolder")
def _load_imagefolder(root: str | None, input_size: int | None = None, resize: int | None = None) -> RawDataset:
    """RGB images in ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, decoded into memory: the shorter
    side resized to ``resize`` (default ``input_size``), center-cropped to ``input_size`` (default 32), the
    transform of the streamed path (`automl_prune.data.streaming.ImageTransform`)."""
    from automl_prune.data.streaming import read_rgb, scan_imagefolder

    files = scan_imagefolder(root)
    size = input_size or 32
    pil = ImageTransform(size, resize or size).pil()
    loaded = [
        np.stack([pil(read_rgb(str(Path(files.root) / part / p))).numpy() for p in paths]).astype(np.uint8)
        for part, paths in (("train", files.train_paths), ("test", files.test_paths))
    ]
    train = loaded[0].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in train.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in train.std(axis=(0, 2, 3)))
    spec = DatasetSpec("imagefolder", 3, len(files.classes), size, mean, std, crop_padding=size // 8, hflip=True)
    return RawDataset(
        loaded[0],
        files.train_labels,
        loaded[1],
        files.test_labels,
        spec,
        default_val_size=max(1, len(train) // 10),
    )


def _synthetic(name: str, channels: int, size: int, num_classes: int = 10) -> RawDataset:
    """Class prototypes (smooth random patterns) plus noise and small shifts; always the same images."""
    rng = np.random.default_rng(1234)
    coarse = rng.normal(size=(num_classes, channels, 4, 4))
    prototypes = np.kron(coarse, np.ones((size // 4, size // 4)))  # blocky, learnable by small convs

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, size=n)
        images = prototypes[labels] + rng.normal(scale=1.0, size=(n, channels, size, size))
        shifts = rng.integers(-1, 2, size=(n, 2))
        for i, (dy, dx) in enumerate(shifts):
            images[i] = np.roll(images[i], (int(dy), int(dx)), axis=(1, 2))
        pixels = np.clip(127.5 + 40.0 * images, 0, 255).astype(np.uint8)
        return pixels, labels.astype(np.int64)

    train_images, train_labels = sample(2000)
    test_images, test_labels = sample(500)
    spec = DatasetSpec(name, channels, num_classes, size, (0.5,) * channels, (0.22,) * channels, crop_padding=1)
    return RawDataset(train_images, train_labels, test_images, test_labels, spec, default_val_size=200)


@DATASETS.register("synthetic")
def _load_synthetic(root: str | None = None, input_size: int | None = None) -> RawDataset:
    """Deterministic 1x16x16, 10-class synthetic dataset for tests (2000 train + 500 test images)."""
    return _synthetic("synthetic", 1, 16)


@DATASETS.register("synthetic-rgb")
def _load_synthetic_rgb(root: str | None = None, input_size: int | None = None) -> RawDataset:
    """Deterministic 3x32x32, 10-class synthetic dataset for tests (2000 train + 500 test images)."""
    return _synthetic("synthetic-rgb", 3, 32)
