"""Wall-clock timing of a model or a call on a device: warm-up, repeats, synchronisation, and side-by-side latency."""

from __future__ import annotations

import functools
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_prune.errors import ConfigError

__all__ = ["compare_latency", "device_name", "on_target", "time_call"]


# timing ------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(run: Callable[[], object], calls: int, device: torch.device) -> float:
    """Mean seconds of ``calls`` calls of ``run``: CUDA events around them on a GPU (the kernels' time on the
    device's stream, read after synchronizing), the wall clock elsewhere."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / calls
    begin = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - begin) / calls


def time_call(run: Callable[[], object], *, repeats: int = 7, warmup: int = 2, min_seconds: float = 2e-3,
              device: torch.device | str = "cpu") -> list[float]:
    """Seconds per call of ``run``: ``repeats`` samples, each the mean over enough calls to last ``min_seconds``.

    Args:
        run: What is timed (called with no arguments).
        repeats: Timed samples.
        warmup: Untimed calls first.
        min_seconds: Each sample repeats ``run`` until it lasts at least this long (short kernels are timed in
            bulk, which keeps the timer's resolution out of the result).
        device: On a CUDA device each sample is timed by CUDA events, after a synchronize.
    """
    device = torch.device(device)
    for _ in range(max(1, warmup)):
        run()
    _sync(device)
    once = max(_seconds_per_call(run, 1, device), 1e-7)
    calls = max(1, min(10_000, math.ceil(min_seconds / once)))
    samples = []
    for _ in range(repeats):
        samples.append(_seconds_per_call(run, calls, device))
    return samples


def device_name(device: torch.device | str = "cpu") -> str:
    """What identifies this device for a latency table: the CPU model (or the GPU's name) and torch's version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{device.type}: {name}; torch {torch.__version__}"


def on_target(model: nn.Module, device: torch.device | str | None = None,
              precision: str | None = None) -> tuple[nn.Module, str]:
    """``model`` as it is timed on the target: on ``device`` (default: the run's) with its weights in the dtype of
    ``precision`` there (default: the run's; fp32 on the CPU, so a CPU model is returned as it is), and the
    precision's name. A model elsewhere is copied, never moved."""
    import copy

    from automl_prune.train.device import current_device, resolve_precision

    device = torch.device(device) if device is not None else current_device()
    resolved = resolve_precision(precision, device)
    dtype = resolved.dtype or torch.float32
    param = next(model.parameters(), None)
    if param is None:
        return model, resolved.name
    same_device = param.device == device or (device.index is None and param.device.type == device.type)
    if same_device and param.dtype == dtype:
        return model, resolved.name
    return copy.deepcopy(model).to(device=device, dtype=dtype), resolved.name


def _stats_ms(samples: Sequence[float]) -> dict[str, float]:
    """Median and quartiles (each the median of its half of the sorted samples) in milliseconds."""
    ordered = sorted(1e3 * s for s in samples)
    half = len(ordered) // 2
    q1 = statistics.median(ordered[:half]) if half else ordered[0]
    q3 = statistics.median(ordered[len(ordered) - half:]) if half else ordered[0]
    return {"median_ms": statistics.median(ordered), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": ordered[0], "samples": len(ordered)}


def compare_latency(models: Mapping[str, nn.Module], sample_shape: Sequence[int], batch_sizes: Sequence[int], *,
                    rounds: int = 15, min_seconds: float = 1e-3, seed: int = 0) -> dict[int, dict[str, Any]]:
    """Latency of several models on the same input, measured interleaved (round robin), so that a change of load
    on a shared machine hits every model alike.

    Each round times every model once (`time_call` with one sample of at least ``min_seconds``); the result per
    model is the median over rounds with its quartiles. Runs at the caller's thread count (`torch.get_num_threads`),
    on each model's device, in inference mode; the models are not modified (eval mode is restored).

    Returns:
        ``{batch_size: {name: {"median_ms", "q1_ms", "q3_ms", "iqr_ms", "min_ms", "samples"}}}``.
    """
    if rounds < 3 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"latency needs rounds >= 3 and positive batch sizes, but got {rounds=}, {batch_sizes=}")
    generator = torch.Generator().manual_seed(seed)
    results: dict[int, dict[str, Any]] = {}
    modes = {name: m.training for name, m in models.items()}
    try:
        for m in models.values():
            m.eval()
        for batch in batch_sizes:
            x = torch.randn(int(batch), *sample_shape, generator=generator)
            inputs = {}
            for name, m in models.items():
                param = next(m.parameters(), None)
                inputs[name] = x if param is None else x.to(param.device, param.dtype)
            samples: dict[str, list[float]] = {name: [] for name in models}
            with torch.inference_mode():
                for name, m in models.items():  # warm up each model once before the rounds
                    time_call(functools.partial(m, inputs[name]), repeats=1, warmup=2, min_seconds=min_seconds,
                              device=inputs[name].device)
                for _ in range(rounds):
                    for name, m in models.items():
                        samples[name] += time_call(functools.partial(m, inputs[name]), repeats=1, warmup=0,
                                                   min_seconds=min_seconds, device=inputs[name].device)
            results[int(batch)] = {name: _stats_ms(s) for name, s in samples.items()}
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return results
