"""The caller's process as it was: what a search may change in a Python process, snapshotted and put back.

Ray's start-up and shutdown, Tune, stable-baselines3 and tqdm change process-wide state that belongs to the
caller of `automl_prune.search`: environment variables (``PYTHONBREAKPOINT`` sends a later ``breakpoint()`` to
Ray's debugger), ``sys.path``, the exception hooks, the SIGINT/SIGTERM handlers, faulthandler, the root logger's
handlers, the random generators, and the multiprocessing start method (tqdm's lock fixes it to ``fork``, after
which ``set_start_method("spawn")`` raises). `process_left_as_it_was` restores all of them when the block ends,
however it ends.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import multiprocessing
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ProcessState", "process_left_as_it_was"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class ProcessState:
    """What `process_left_as_it_was` restores (comparable with ``==`` in tests, for everything but the RNGs)."""

    environ: dict[str, str]
    path: list[str]
    excepthook: Any
    threading_excepthook: Any
    signals: dict[int, Any]
    faulthandler: bool
    root_handlers: list[logging.Handler]
    root_level: int
    start_method: str | None
    python_random: Any
    numpy_random: Any
    torch_random: torch.Tensor

    @classmethod
    def take(cls) -> ProcessState:
        """The state of this process now."""
        main = threading.current_thread() is threading.main_thread()
        root = logging.getLogger()
        return cls(
            environ=dict(os.environ),
            path=list(sys.path),
            excepthook=sys.excepthook,
            threading_excepthook=threading.excepthook,
            signals={int(s): signal.getsignal(s) for s in _SIGNALS} if main else {},
            faulthandler=faulthandler.is_enabled(),
            root_handlers=list(root.handlers),
            root_level=root.level,
            start_method=multiprocessing.get_start_method(allow_none=True),
            python_random=random.getstate(),
            numpy_random=np.random.get_state(),
            torch_random=torch.get_rng_state(),
        )

    def restore(self) -> None:
        """Put this state back."""
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        sys.path[:] = self.path
        sys.excepthook = self.excepthook
        threading.excepthook = self.threading_excepthook
        if threading.current_thread() is threading.main_thread():
            for number, handler in self.signals.items():
                if signal.getsignal(number) is not handler and handler is not None:
                    signal.signal(number, handler)
        if self.faulthandler and not faulthandler.is_enabled():
            faulthandler.enable()
        elif not self.faulthandler and faulthandler.is_enabled():
            faulthandler.disable()
        root = logging.getLogger()
        root.handlers[:] = self.root_handlers
        root.setLevel(self.root_level)
        if multiprocessing.get_start_method(allow_none=True) != self.start_method:
            multiprocessing.set_start_method(self.start_method, force=True)
        random.setstate(self.python_random)
        np.random.set_state(self.numpy_random)
        torch.set_rng_state(self.torch_random)


@contextlib.contextmanager
def process_left_as_it_was() -> Iterator[ProcessState]:
    """Snapshot the process-wide state, run the block, restore it (also when the block raises)."""
    state = ProcessState.take()
    try:
        yield state
    finally:
        state.restore()
