"""Image folders read from disk batch by batch: `LazyImages`, what a streamed `Split` holds as its images.

`automl_prune.data.datasets.load_dataset("imagefolder", ...)` decodes a small folder into memory (fastest) and
streams a large one: the choice compares an estimate of the decoded size with a limit (`stream_limit_bytes`)
and is stated in one log line. A streamed split keeps only file paths and the transform; its labels stay in
memory (8 bytes an image). Code that reads images indexes them (``images[a:b]``, ``images[index_tensor]``)
and gets a normal float tensor of just those images, or asks for whole batches (`LazyImages.iter_batches`,
which `automl_prune.data.datasets.iterate_batches` uses): a ``DataLoader`` with worker processes, pinned memory on CUDA.
Nothing ever holds the whole split, and operations on the whole split (``.to(device)``) are refused.

Overrides (environment, read when a dataset is loaded): ``AUTOML_PRUNE_STREAM`` = ``auto`` (default), ``1``
(always stream) or ``0`` (never); ``AUTOML_PRUNE_STREAM_LIMIT_MB`` (the limit, default a quarter of physical
memory, at most 4 GiB); ``AUTOML_PRUNE_LOADER_WORKERS`` (``DataLoader`` worker processes, default
``min(4, CPUs - 1)``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsInt

import numpy as np
import torch
from torch import Tensor

from automl_prune.errors import ConfigError, DatasetNotFoundError

__all__ = [
    "ImageFolderFiles",
    "ImageTransform",
    "LazyImages",
    "choose_streaming",
    "default_loader_workers",
    "estimate_decoded_bytes",
    "is_lazy",
    "read_rgb",
    "sample_mean_std",
    "scan_imagefolder",
    "stream_limit_bytes",
]

#: Indexed sets up to this size are decoded one after another, larger ones by a few threads.
_INLINE_IMAGES = 8
_MAX_DEFAULT_LIMIT = 4 << 30


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to ``resize``, center-crop ``size`` x ``size``, scale to [0, 1], standardize.

    With ``resize == size`` (the default) a square image is resized whole; ``resize = size / 0.875`` is the
    usual ImageNet evaluation crop. Plain data: it travels with pickled splits and rebuilds the torchvision
    transform where it is used.
    """

    size: int
    resize: int
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.size < 1 or self.resize < self.size:
            raise ConfigError(f"`1 <= input_size <= resize` must hold, but got input_size={self.size}, "
                              f"resize={self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean and std need 3 values each, std > 0, but got mean={self.mean}, std={self.std}")

    def pil(self) -> Any:
        """The torchvision transform from a PIL image to a uint8 C x size x size tensor."""
        from torchvision import transforms

        return transforms.Compose([
            transforms.Resize(self.resize, antialias=True),
            transforms.CenterCrop(self.size),
            transforms.PILToTensor(),
        ])

    def normalize(self, pixels: Tensor) -> Tensor:
        """uint8 (N x) C x H x W -> float32, scaled to [0, 1] and standardized per channel."""
        shape = (-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return pixels.float().div_(255.0).sub_(mean).div_(std)


def read_rgb(path: str) -> Any:
    """The image at ``path`` as RGB; an unreadable file is a `DatasetNotFoundError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError for some broken headers
        raise DatasetNotFoundError(f"{path} is not a readable image ({type(error).__name__}: {error})") from error


@dataclass(frozen=True)
class ImageFolderFiles:
    """The files of ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (torchvision's `ImageFolder` order)."""

    root: str
    classes: tuple[str, ...]
    train_paths: tuple[str, ...]
    train_labels: np.ndarray
    test_paths: tuple[str, ...]
    test_labels: np.ndarray

    def __len__(self) -> int:
        return len(self.train_paths) + len(self.test_paths)


def scan_imagefolder(root: str | Path | None) -> ImageFolderFiles:
    """List an image folder's files and classes without opening any image.

    Raises:
        DatasetNotFoundError: No ``train/`` or ``test/`` folder, no class folder or image in one, or classes
            that differ between them.
    """
    usage = "imagefolder needs `--data-root PATH` with train/ and test/ folders of class subfolders"
    if root is None or not (Path(root) / "train").is_dir() or not (Path(root) / "test").is_dir():
        raise DatasetNotFoundError(f"{usage}, but got {None if root is None else str(root)!r}")
    from torchvision.datasets import ImageFolder

    parts = []
    for part in ("train", "test"):
        folder = Path(root) / part
        try:
            # The dataset object only lists files; a loader that is never called keeps it that way.
            found = ImageFolder(str(folder), loader=read_rgb)
        except (FileNotFoundError, OSError) as error:
            first = str(error).strip().splitlines()[0]
            raise DatasetNotFoundError(f"imagefolder {folder}: {first}") from error
        paths = tuple(os.path.relpath(path, folder) for path, _ in found.samples)
        parts.append((tuple(found.classes), paths, np.asarray(found.targets, dtype=np.int64)))
    if parts[0][0] != parts[1][0]:
        raise DatasetNotFoundError(f"imagefolder {root}: train/ classes {list(parts[0][0])} differ from test/ "
                                   f"classes {list(parts[1][0])}")
    return ImageFolderFiles(str(Path(root).resolve()), parts[0][0], parts[0][1], parts[0][2], parts[1][1], parts[1][2])


def estimate_decoded_bytes(n_images: int, size: int, channels: int = 3) -> int:
    """Memory the in-memory path needs: the uint8 pixels it decodes plus the float32 tensors it keeps."""
    return n_images * channels * size * size * (1 + 4)


def stream_limit_bytes() -> int:
    """Decoded size above which a folder is streamed: ``AUTOML_PRUNE_STREAM_LIMIT_MB``, else a quarter of
    physical memory capped at 4 GiB."""
    text = os.environ.get("AUTOML_PRUNE_STREAM_LIMIT_MB")
    if text is not None:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ConfigError(f"AUTOML_PRUNE_STREAM_LIMIT_MB must be a number of megabytes >= 0, but got {text!r}")
        return int(value * (1 << 20))
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 4 * _MAX_DEFAULT_LIMIT
    return min(_MAX_DEFAULT_LIMIT, physical // 4)


def _stream_setting(stream: bool | None) -> bool | None:
    """The caller's choice, else ``AUTOML_PRUNE_STREAM`` (``None``: decide by size)."""
    if stream is not None:
        return stream
    text = os.environ.get("AUTOML_PRUNE_STREAM", "auto").strip().lower()
    choices = {"auto": None, "": None, "1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if text not in choices:
        raise ConfigError(f"AUTOML_PRUNE_STREAM must be one of auto, 1, 0, but got {text!r}")
    return choices[text]


def default_loader_workers() -> int:
    """``AUTOML_PRUNE_LOADER_WORKERS``, else ``min(4, CPUs - 1)`` DataLoader worker processes."""
    text = os.environ.get("AUTOML_PRUNE_LOADER_WORKERS")
    if text is not None:
        if not text.strip().isdigit():
            raise ConfigError(f"AUTOML_PRUNE_LOADER_WORKERS must be an integer >= 0, but got {text!r}")
        return int(text)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def choose_streaming(
    files: ImageFolderFiles, size: int, *, stream: bool | None = None, limit_bytes: int | None = None,
    workers: int | None = None,
) -> bool:
    """Whether to stream ``files`` at ``size`` x ``size``; states the choice and why in one line on stderr.

    Args:
        files: The scanned folder.
        size: Input side the images are cropped to.
        stream: Force the choice; ``None``: ``AUTOML_PRUNE_STREAM``, else by size.
        limit_bytes: The decoded-size limit; ``None``: `stream_limit_bytes`.
        workers: DataLoader workers named in the message.
    """
    estimate = estimate_decoded_bytes(len(files), size)
    limit = stream_limit_bytes() if limit_bytes is None else limit_bytes
    forced = _stream_setting(stream)
    chosen = estimate > limit if forced is None else forced
    if chosen:
        n_workers = default_loader_workers() if workers is None else workers
        how = f"streaming from disk ({n_workers} DataLoader worker{'s' if n_workers != 1 else ''})"
    else:
        how = "decoded into memory"
    why = (f"{'over' if chosen else 'within'} the {_mb(limit)} limit: {how} "
           f"(AUTOML_PRUNE_STREAM={0 if chosen else 1} {'holds it in memory' if chosen else 'streams it'})"
           if forced is None else f"{how}, as requested")
    print(f"imagefolder {files.root}: {len(files)} images at 3x{size}x{size}, about {_mb(estimate)} decoded, {why}",
          file=sys.stderr, flush=True)
    return chosen


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1 << 30):.1f} GiB" if n_bytes >= 1 << 30 else f"{n_bytes / (1 << 20):.1f} MiB"


class _Files(torch.utils.data.Dataset[Tensor]):
    """Image ``i`` of a `LazyImages`, decoded and transformed (what DataLoader workers run)."""

    def __init__(self, images: LazyImages) -> None:
        self.images = images
        self._pil: Any = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tensor:
        if self._pil is None:
            self._pil = self.images.transform.pil()
        return self.images.transform.normalize(self._pil(read_rgb(self.images.path(index))))


class LazyImages:
    """Normalized float32 N x 3 x H x W images that live on disk until indexed; a stand-in for a `Split`'s tensor.

    ``images[i]`` is one C x H x W tensor, ``images[a:b]`` and ``images[index]`` (a sequence or 1-D integer
    tensor) an N x C x H x W tensor of just those files, decoded in this process (a few threads);
    `iter_batches` decodes whole batches in DataLoader worker processes. It pickles as its paths and transform
    (Ray's object store gets a few bytes per image). Operations on the whole set (``.to(device)``) raise
    `ConfigError`.

    Args:
        root: Folder the paths are relative to.
        paths: The files, in order.
        transform: Resize, crop and normalization.
        workers: DataLoader worker processes for batches; ``None``: `default_loader_workers`.
    """

    def __init__(self, root: str, paths: Sequence[str], transform: ImageTransform, workers: int | None = None) -> None:
        self.root = str(root)
        self.paths = tuple(paths)
        self.transform = transform
        self.workers = default_loader_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ConfigError(f"`workers >= 0` must hold, but got workers={self.workers}")

    # ----------------------------------------------------------------------- the tensor-like surface
    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        """``(N, 3, size, size)``."""
        return torch.Size((len(self.paths), 3, self.transform.size, self.transform.size))

    @property
    def ndim(self) -> int:
        """Always 4 (N x C x H x W)."""
        return 4

    def dim(self) -> int:
        """Always 4 (N x C x H x W)."""
        return 4

    @property
    def dtype(self) -> torch.dtype:
        """``torch.float32``: what indexing returns."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        """The CPU: where indexed batches are made."""
        return torch.device("cpu")

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images under {self.root}, shape={list(self.shape)})"

    def path(self, index: int) -> str:
        """Full path of image ``index``."""
        return os.path.join(self.root, self.paths[index])

    def __getitem__(self, index: int | slice | Tensor | np.ndarray | Sequence[int]) -> Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.dim() == 0):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} images")
            return self._load([i % len(self)])[0]
        if isinstance(index, slice):
            return self._load(range(*index.indices(len(self))))
        if isinstance(index, Tensor):
            if index.dtype == torch.bool or index.dtype.is_floating_point or index.dim() != 1:
                raise TypeError(f"LazyImages takes a 1-D integer index tensor, not {index.dtype} of shape "
                                f"{list(index.shape)}")
            return self._load(index.tolist())
        if isinstance(index, (np.ndarray, list, tuple, range)):
            return self._load([int(i) for i in index])
        raise TypeError(f"LazyImages cannot be indexed by {type(index).__name__}")

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """Refused: moving every image at once is what streaming avoids."""
        raise ConfigError(
            f"this step needs all {len(self)} images of {self.root} in memory at once, but the folder is streamed "
            "from disk; set AUTOML_PRUNE_STREAM=0 to decode it into memory if it fits"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "paths": self.paths, "transform": self.transform, "workers": self.workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ----------------------------------------------------------------------- loading
    def _load(self, indices: Iterable[int]) -> Tensor:
        index = list(indices)
        n = len(self)
        for i in index:
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for {n} images")
        index = [i % n for i in index] if n else index
        if not index:
            return torch.empty((0, *self.shape[1:]), dtype=torch.float32)
        # Decoded in this process: Pillow releases the GIL while decoding and resizing, so threads help, and
        # a few indexed images (calibration, a trace example) never pay for starting worker processes.
        files = _Files(self)
        if len(index) <= _INLINE_IMAGES:
            return torch.stack([files[i] for i in index])
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            return torch.stack(list(pool.map(files.__getitem__, index)))

    def iter_batches(
        self, batches: Iterable[Iterable[SupportsInt]], *, pin_memory: bool | None = None
    ) -> Iterator[Tensor]:
        """One N x C x H x W tensor per index batch, in order, decoded by ``workers`` DataLoader processes.

        Args:
            batches: Index lists or 1-d index tensors (every one non-empty), e.g. consecutive slices of a shuffled
                order.
            pin_memory: Page-locked batches for fast copies to the GPU; ``None``: when CUDA is available.
        """
        from torch.utils.data import DataLoader

        batch_list = [[int(i) for i in batch] for batch in batches]
        if not batch_list:
            return
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        workers = min(self.workers, len(batch_list))
        loader = DataLoader(_Files(self), batch_sampler=batch_list, num_workers=workers, pin_memory=pin)
        iterator = iter(loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DatasetNotFoundError as error:
                # A worker's error comes back with its traceback in the message: keep the one line that says it.
                lines = [line for line in str(error).strip().splitlines() if line.strip()]
                raise DatasetNotFoundError(lines[-1].split("DatasetNotFoundError: ", 1)[-1]) from None
            yield batch

    def fingerprint(self) -> str:
        """A hash of what the images are: the root, each file's name, size and modification time, the transform."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((self.root, self.transform)).encode())
        for relative in self.paths:
            try:
                stat = os.stat(os.path.join(self.root, relative))
                digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError as error:
                raise DatasetNotFoundError(f"{os.path.join(self.root, relative)} is gone ({error})") from error
        return digest.hexdigest()


def is_lazy(images: object) -> bool:
    """Whether ``images`` is streamed from disk (`LazyImages`) rather than a tensor."""
    return isinstance(images, LazyImages)


def sample_mean_std(
    images: LazyImages, samples: int = 512, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of [0, 1] pixels over a seeded random sample of ``samples`` images.

    ``images`` must have the identity normalization (mean 0, std 1); the sample is read in batches of 64.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=generator)[: min(samples, len(images))].sort().values.tolist()
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for batch in images.iter_batches([chosen[i:i + 64] for i in range(0, len(chosen), 64)], pin_memory=False):
        pixels = batch.double().transpose(0, 1).reshape(3, -1)
        total += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = total / max(count, 1)
    std = (squares / max(count, 1) - mean * mean).clamp_min(0).sqrt()
    return tuple(float(v) for v in mean), tuple(max(float(v), 1e-3) for v in std)
