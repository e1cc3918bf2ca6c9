"""Where a run computes, and in which precision: the one place that decides it.

``device`` is a setting (`automl_prune.config.SearchConfig.device`, ``--device``):

- ``auto`` (default): CUDA when a tiny kernel actually runs there, else the CPU. ``torch.cuda.is_available()``
  alone is not enough: on a GPU older than the compute capabilities a torch build ships kernels for (7.5 for
  recent CUDA builds), it is true and the first kernel fails. The decision carries the reason, which the log
  prints.
- ``cpu``; ``cuda`` (the current CUDA device, GPU 0 unless ``CUDA_VISIBLE_DEVICES`` says otherwise; inside a Ray
  worker with a GPU share, the GPU Ray assigned); ``cuda:N``. A CUDA setting without a usable GPU is one
  `ConfigError` line.

A run enters `use_device` with its decision, so every stage that is not handed a device explicitly
(`current_device`: the trainer, the evaluator, the RL agents, DMCP, pretraining) takes the same one.

``precision`` (``auto|fp32|bf16|fp16``) is resolved against the device by `resolve_precision`: always fp32 on
the CPU; on CUDA ``auto`` is bf16 autocast where the GPU supports it, else fp16 autocast with a gradient scaler.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from automl_prune.data.batches import move
from automl_prune.errors import ConfigError

__all__ = ["DEVICE_SETTINGS", "FP32", "PRECISIONS", "DeviceDecision", "Precision", "RunDevice",
           "check_device_setting", "cudnn_benchmark", "current_deterministic", "current_device",
           "current_gpus_per_worker", "current_precision", "deterministic_run", "get_rng_states", "gpu_count",
           "resolve_device", "resolve_precision", "set_rng_states", "to_device", "use_device", "worker_device"]

#: What ``device`` may be (``cuda:N``: any GPU index).
DEVICE_SETTINGS = ("auto", "cpu", "cuda", "cuda:N")
#: What ``precision`` may be.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceDecision:
    """A decided device and why (``setting``: what was asked; ``reason``: one line for the log)."""

    device: torch.device
    reason: str
    setting: str = "auto"

    def __str__(self) -> str:
        return f"{self.device} ({self.reason})"


def check_device_setting(value: str) -> str:
    """``value`` when it is a valid ``device`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else one
    `ConfigError` line."""
    match = _DEVICE.match(value.strip().lower()) if isinstance(value, str) else None
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ConfigError(f"`device` must be one of auto, cpu, cuda or cuda:N (N a GPU index such as cuda:1), "
                          f"but got {value!r}")
    return value.strip().lower()


@functools.cache
def _kernel_runs(index: int) -> tuple[bool, str]:
    """Whether a tiny kernel runs on GPU ``index`` (cached per process): ``(ok, what happened)``."""
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is false"
    count = torch.cuda.device_count()
    if index >= count:
        return False, f"GPU {index} does not exist ({count} visible)"
    try:
        x = torch.arange(4.0, device=f"cuda:{index}")
        value = float((x * 2).sum())
        torch.cuda.synchronize(index)
    except Exception as exc:  # a GPU torch has no kernels for fails here, not at is_available()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"a test kernel failed on GPU {index}: {first}"
    if value != 12.0:
        return False, f"a test kernel on GPU {index} computed {value}, not 12"
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    return True, f"{name}, compute capability {major}.{minor}"


def resolve_device(setting: str = "auto") -> DeviceDecision:
    """Decide the device of ``setting`` (see the module docstring).

    Raises:
        ConfigError: An invalid setting, or ``cuda``/``cuda:N`` without a usable GPU.
    """
    setting = check_device_setting(setting)
    if setting == "cpu":
        return DeviceDecision(torch.device("cpu"), "asked for the CPU", setting)
    if setting == "auto":
        ok, what = _kernel_runs(_current_index())
        if ok:
            return DeviceDecision(torch.device("cuda"), f"auto: CUDA works ({what})", setting)
        return DeviceDecision(torch.device("cpu"), f"auto: no usable GPU ({what})", setting)
    index = int(setting.split(":")[1]) if ":" in setting else _current_index()
    ok, what = _kernel_runs(index)
    if not ok:
        raise ConfigError(f"--device {setting}: no usable GPU ({what}); use --device auto or cpu")
    return DeviceDecision(torch.device(setting), f"asked for {setting} ({what})", setting)


def _current_index() -> int:
    """The CUDA device ``cuda`` means (0 unless the process changed it), without initialising CUDA needlessly."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return torch.cuda.current_device()


def gpu_count(setting: str = "auto") -> int:
    """GPUs a run with ``setting`` may use: 0 on the CPU, 1 for ``cuda:N``, every visible one for ``auto``
    (when CUDA works) and ``cuda``. Raises `ConfigError` as `resolve_device` does."""
    decision = resolve_device(setting)
    if decision.device.type != "cuda":
        return 0
    return 1 if decision.device.index is not None else torch.cuda.device_count()


def worker_device(gpu_ids: list[Any]) -> DeviceDecision:
    """The device of a Ray worker given the GPUs Ray assigned it: none -> the CPU (Ray leaves such a worker
    every GPU visible, so ``auto`` there would land on GPU 0 unaccounted); some -> ``auto`` (the assigned GPU,
    which ``CUDA_VISIBLE_DEVICES`` makes ``cuda``; the CPU if no kernel runs there, e.g. logical GPUs)."""
    if not gpu_ids:
        return DeviceDecision(torch.device("cpu"), "this Ray worker has no GPU share", "cpu")
    return resolve_device("auto")


@dataclass(frozen=True)
class RunDevice:
    """A run's device decision with its precision setting, each Ray worker's GPU share and determinism."""

    decision: DeviceDecision
    precision: str = "auto"
    gpus_per_worker: float = 0.0
    deterministic: bool = False


_CURRENT: list[RunDevice] = []


@contextlib.contextmanager
def use_device(decision: DeviceDecision, *, precision: str = "auto", gpus_per_worker: float = 0.0,
               deterministic: bool = False) -> Iterator[RunDevice]:
    """Make ``decision`` (and the precision setting, the workers' GPU share, determinism) what `current_device`,
    `current_precision`, `current_gpus_per_worker` and `current_deterministic` return inside the block: a run's,
    for every stage (it sets no torch flag itself: `deterministic_run` does)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"`precision` must be one of {list(PRECISIONS)}, but got {precision!r}")
    run = RunDevice(decision, precision, float(gpus_per_worker), bool(deterministic))
    _CURRENT.append(run)
    try:
        yield run
    finally:
        _CURRENT.pop()


def current_device() -> torch.device:
    """The device of the run in progress (`use_device`), else the ``auto`` decision."""
    return _CURRENT[-1].decision.device if _CURRENT else resolve_device("auto").device


def current_precision() -> str:
    """The precision setting of the run in progress (`use_device`), else ``auto``."""
    return _CURRENT[-1].precision if _CURRENT else "auto"


def current_gpus_per_worker() -> float:
    """Each Ray worker's GPU share in the run in progress (`use_device`), else 0."""
    return _CURRENT[-1].gpus_per_worker if _CURRENT else 0.0


def current_deterministic() -> bool:
    """Whether the run in progress (`use_device`) is deterministic (its Ray workers apply `deterministic_run`)."""
    return _CURRENT[-1].deterministic if _CURRENT else False


# precision ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32, bf16 or fp16), the autocast dtype (``None``: fp32, no autocast) and
    the device type autocast applies to."""

    name: str
    dtype: torch.dtype | None
    device_type: str = "cpu"

    @property
    def needs_scaler(self) -> bool:
        """fp16 gradients underflow without a loss scale."""
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``dtype`` on its device; nothing at fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16, else ``None``."""
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


FP32 = Precision("fp32", None)


def resolve_precision(setting: str | Precision | None, device: torch.device | str) -> Precision:
    """The precision ``setting`` means on ``device``: fp32 on the CPU whatever was asked; on CUDA ``auto`` is
    bf16 where the GPU supports it, else fp16. ``None``: the run's setting (`current_precision`)."""
    if isinstance(setting, Precision):
        return setting
    if setting is None:
        setting = current_precision()
    if setting not in PRECISIONS:
        raise ConfigError(f"`precision` must be one of {list(PRECISIONS)}, but got {setting!r}")
    device = torch.device(device)
    if device.type != "cuda" or setting == "fp32":
        return FP32
    if setting == "auto":  # bf16 needs Ampere (compute capability 8.0) or newer
        setting = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return Precision(setting, torch.bfloat16 if setting == "bf16" else torch.float16, "cuda")


# moving data -------------------------------------------------------------------------------------------------
def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``: to a GPU through pinned memory without blocking; elsewhere as ``x.to`` does
    (`automl_prune.data.batches.move`, which also moves the tensors inside a structured batch)."""
    moved: torch.Tensor = move(x, device)
    return moved


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning inside the block on CUDA (for loops whose inputs keep one shape), unless the run is
    deterministic; the previous setting is restored."""
    if device.type != "cuda" or torch.are_deterministic_algorithms_enabled() or torch.backends.cudnn.deterministic:
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@contextlib.contextmanager
def deterministic_run(enabled: bool) -> Iterator[None]:
    """With ``enabled``: cuDNN deterministic (no autotuning) and ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` (and cuBLAS's workspace setting it needs) inside the block; the caller's values after."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if cublas is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# random state ------------------------------------------------------------------------------------------------
def get_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's CPU generator state, and the CUDA generator's of ``device`` when it is a GPU (for checkpoints)."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: Mapping[str, torch.Tensor | None], device: torch.device) -> None:
    """Restore `get_rng_states`'s ``states`` (a CUDA state only onto a GPU ``device``, when there is one)."""
    cpu, cuda = states["cpu"], states.get("cuda")
    if cpu is None:
        raise ValueError("a random state without the CPU generator's")
    torch.set_rng_state(cpu)
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
