"""Process-wide torch settings chosen by measurement, applied by the CLI and the tests."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["configure_torch", "default_device"]


def default_device() -> torch.device:
    """The run's device (`automl_prune.train.device.current_device`: CUDA when a kernel runs there, else CPU)."""
    from automl_prune.train.device import current_device

    return current_device()


def configure_torch(threads: int | None = None) -> int:
    """Set torch's intra-op threads; returns the number set.

    On the CPU the default is one thread (``AUTOML_PRUNE_THREADS`` overrides). Measured on the 2-core
    machines this project runs on: training ResNet-20 on 28x28 inputs ran at 366 images/s on one thread and
    39 images/s on two, and a depthwise conv took 0.09 ms vs 32 ms, because OpenMP workers spin against each
    other on small kernels. Parallelism comes from running trials side by side instead.
    """
    if threads is None:
        env = os.environ.get("AUTOML_PRUNE_THREADS")
        threads = int(env) if env else 1
    if threads < 1:
        raise ValueError(f"`threads >= 1` must hold, but got {threads=}")
    torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the previous values."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
