"""Training and evaluation on in-memory splits: SGD + Nesterov, linear warm-up then cosine decay.

On CPU the model and batches use the ``channels_last`` memory format by default (measured faster for the
zoo here: see ``benchmarks/train_speed.py``). Torch's thread count is left at its default.

On CUDA (`automl_prune.train.device`): mixed precision (``precision``: bf16 autocast where the GPU supports it,
else fp16 with a gradient scaler), batches copied from pinned memory without blocking, the step's loss and
accuracy summed on the GPU (no host sync per step), cuDNN autotuning (every batch has one shape), and the CUDA
random state kept with the CPU one in `Trainer.state_dict`. The CPU path computes exactly what it did before.

With only 2 cores, set ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported: when another process holds
a core, OpenMP's spinning barriers made every elementwise op ~40x slower here (a 3-epoch tiny-cnn test:
64 s with the default policy, 3 s with PASSIVE).
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from automl_prune.data.batches import call_model, count_items, move
from automl_prune.data.datasets import Split, Splits, iterate_batches
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.errors import ConfigError, TrainingDivergedError
from automl_prune.train.device import (
    Precision,
    cudnn_benchmark,
    current_device,
    get_rng_states,
    resolve_precision,
    set_rng_states,
)

__all__ = ["Trainer", "default_device", "evaluate_accuracy", "score_batches", "train"]

WARMUP_FRACTION = 0.05


def default_device() -> torch.device:
    """The run's device (`automl_prune.train.device.current_device`: CUDA when a kernel runs there, else CPU)."""
    return current_device()


def train(
    model: nn.Module,
    data: Splits | Split,
    *,
    epochs: float,
    lr: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str | None = None,
    weight_decay: float = 5e-4,
    progress: bool = True,
    max_steps: int | None = None,
    label_smoothing: float = 0.0,
    augment: bool = False,
    channels_last: bool | None = None,
    precision: str | Precision | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with SGD (momentum 0.9, Nesterov) and a warm-up + cosine schedule.

    Args:
        model: The model; moved to ``device`` and left in training mode.
        data: `Splits` (its ``train`` split is used) or a single `Split`.
        epochs: Passes over the training split; fractions allowed (``0.5`` = half an epoch of steps).
        lr: Peak learning rate, reached after a linear warm-up of 5% of the steps.
        batch_size: Images per step; a last batch smaller than this is dropped.
        seed: Seeds the initial torch RNG state and the batch order: same seed, same result on one machine.
        device: Where to train; ``None`` is `default_device`.
        weight_decay: L2 penalty of SGD.
        progress: Show a tqdm bar per epoch (with ETA) on stderr.
        max_steps: Stop after this many optimizer steps (the schedule is planned for them).
        label_smoothing: Cross-entropy label smoothing.
        augment: Random crop + flip (needs ``data`` to be `Splits`, for its spec).
        channels_last: Use the channels-last memory format; ``None``: on CPU yes, elsewhere no.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (`automl_prune.train.device.resolve_precision`: fp32
            on the CPU whatever is asked); ``None``: the run's setting (`automl_prune.train.device.use_device`).

    Returns:
        ``{"steps", "epochs", "images", "seconds", "images_per_second", "train_loss", "train_acc"}``, the last
        two averaged over the final epoch.

    Raises:
        ConfigError: Non-positive ``epochs``/``lr``/``batch_size``, or a split smaller than one batch.
    """
    trainer = Trainer(
        model, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
        weight_decay=weight_decay, max_steps=max_steps, label_smoothing=label_smoothing, augment=augment,
        channels_last=channels_last, precision=precision,
    )
    return trainer.run(progress=progress)


class Trainer:
    """One training run planned for ``total_steps``, that can stop at any step and continue exactly.

    The learning-rate schedule (warm-up + cosine) is planned over the whole run, so running it in segments
    (``run(until=...)`` several times, or ``state_dict`` -> a new `Trainer` -> ``load_state_dict``) gives the
    same weights as one call. The re-ranking ladder relies on this: a candidate's rungs are prefixes of the
    final fine-tune, so the top rung *is* the final fine-tune. Arguments are those of `train`, and:
    ``teacher`` (distil from it), ``penalty`` (a regularizer added to each step's loss, called with the model and
    the step) and ``loss`` (``loss(outputs, targets)`` in place of cross-entropy: `automl_prune.data.task.Task`).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Splits | Split,
        *,
        epochs: float,
        lr: float = 0.1,
        batch_size: int = 128,
        seed: int = 0,
        device: torch.device | str | None = None,
        weight_decay: float = 5e-4,
        max_steps: int | None = None,
        label_smoothing: float = 0.0,
        augment: bool = False,
        channels_last: bool | None = None,
        teacher: nn.Module | None = None,
        distill_temperature: float = 4.0,
        distill_weight: float = 0.5,
        penalty: Callable[[nn.Module, int], torch.Tensor] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        precision: str | Precision | None = None,
    ) -> None:
        split, spec = (data.train, data.spec) if isinstance(data, Splits) else (data, None)
        _check_positive(epochs=epochs, lr=lr, batch_size=batch_size)
        if augment and spec is None:
            raise ConfigError("`train(augment=True)` needs `Splits` (for the dataset spec), not a single `Split`")
        if isinstance(split, LoaderSplit):
            # The user's loader sets the batch size and the order; an epoch is one pass over it.
            if augment:
                raise ConfigError("`augment` applies to in-memory images; the `train` loader augments as it likes")
            batches = split.num_batches
            if batches is None:
                raise ConfigError(f"the `{split.name}` loader has no length (len(loader)), so epochs cannot be "
                                  "counted in steps; give a DataLoader over a dataset with __len__")
            self.steps_per_epoch = batches
            if batches == 0:
                raise ConfigError(f"the `{split.name}` loader has no batches")
        else:
            self.steps_per_epoch = len(split) // batch_size
            if self.steps_per_epoch == 0:
                raise ConfigError(f"the training split has {len(split)} images, fewer than one batch of {batch_size}")
        total = max(1, math.ceil(epochs * self.steps_per_epoch))
        self.total_steps = min(total, max_steps) if max_steps is not None else total
        self.split, self.spec = split, spec
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.device = torch.device(device) if device is not None else default_device()
        channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.precision = resolve_precision(precision, self.device)
        self.scaler = self.precision.scaler()
        self.model = model
        # The initial RNG state is seeded inside a fork, so a caller's global stream is left as it was. On CUDA
        # the device's generator (dropout) is forked, seeded and checkpointed with the CPU one.
        self._rng_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(seed)
            self._save_rng()
        model.to(device=self.device, memory_format=self.memory_format).train()  # type: ignore[call-overload]  # torch's stub lacks to(device, memory_format=)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                         weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(self.total_steps))
        # The user's loss (`automl_prune.data.task.Task`) replaces cross-entropy; label smoothing is cross-entropy's.
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        if teacher is not None:
            if distill_temperature <= 0 or not 0.0 <= distill_weight <= 1.0:
                raise ConfigError(f"distillation needs a temperature > 0 and a weight in [0, 1], but got "
                                  f"{distill_temperature} and {distill_weight}")
            # A private copy: the caller's model (the base model, which others trace) is left exactly as it was.
            teacher = copy.deepcopy(teacher).to(self.device).eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)
        self.teacher = teacher
        self.distill_temperature = distill_temperature
        self.distill_weight = distill_weight
        # A regularizer added to every step's loss, called with the model and the step (`prune.sparsity`).
        self.penalty = penalty
        self.step = 0
        self.images = 0
        self.seconds = 0.0
        self._last_epoch_stats = (0.0, 0, 0)
        self._classified = 0  # items of the epoch part whose outputs are class scores (top-1 is reported then)
        self._stream: Any = None  # the user's loader: one endless stream of its passes, continued across segments

    def run(self, until: int | None = None, *, progress: bool = True) -> dict[str, Any]:
        """Train up to step ``until`` (default: the end of the plan); returns the stats of `train`."""
        until = self.total_steps if until is None else min(int(until), self.total_steps)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=self._rng_devices), cudnn_benchmark(self.device):
            set_rng_states({"cpu": self._rng_state, "cuda": self._cuda_rng_state}, self.device)
            while self.step < until:
                self._run_epoch_part(until, progress)
            self._save_rng()
        if self.step >= self.total_steps:
            self.release_data()
        self.seconds += time.perf_counter() - start
        loss_sum, correct, seen = self._last_epoch_stats
        return {
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "images": self.images,
            "seconds": self.seconds,
            "images_per_second": self.images / self.seconds if self.seconds > 0 else float("inf"),
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1) if self._classified else None,
        }

    def release_data(self) -> None:
        """Let go of the user's loader pass in progress (its worker processes end); a later `run` starts a new
        pass. Called before other data is read, so no worker a new loader forks inherits this one's iterator."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _save_rng(self) -> None:
        """Keep torch's generator states: the CPU's, and on CUDA the device's (`get_rng_states`)."""
        states = get_rng_states(self.device)
        self._rng_state, self._cuda_rng_state = states["cpu"], states.get("cuda")

    def _batches(self, epoch: int, offset: int) -> Any:
        """An iterator of the epoch's remaining batches: in-memory and streamed splits replay the epoch's seeded
        order from ``offset``; the user's loader continues its stream of passes where the last segment stopped
        (a restored run starts a new pass: a loader's own shuffling cannot be replayed)."""
        if isinstance(self.split, LoaderSplit):
            if self._stream is None:
                self._stream = self._loader_stream()
            return self._stream
        batches = iterate_batches(self.split, self.batch_size, shuffle=True, seed=self.seed * 100_003 + epoch,
                                  augment=self.augment, spec=self.spec, drop_last=True)
        for _ in range(offset):  # continuing mid-epoch: the same order, from where the last segment stopped
            next(batches, None)
        return batches

    def _loader_stream(self) -> Any:
        while True:
            yield from iterate_batches(self.split, self.batch_size, shuffle=True, seed=None, drop_last=True)

    def _run_epoch_part(self, until: int, progress: bool) -> None:
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        epoch_end = min(until, (epoch + 1) * self.steps_per_epoch)
        n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        bar = _progress_bar(epoch_end - self.step, f"epoch {epoch + 1}/{n_epochs}", progress)
        loss_sum, correct, seen = self._last_epoch_stats if offset else (0.0, 0, 0)
        if not offset:
            self._classified = 0
        batches = self._batches(epoch, offset)
        self.model.train()
        # On a GPU the step's loss and accuracy are summed there and read once at the end (no sync per step).
        on_gpu = self.device.type == "cuda"
        gpu_loss = torch.zeros((), device=self.device) if on_gpu else None
        gpu_correct = torch.zeros((), dtype=torch.long, device=self.device) if on_gpu else None
        while self.step < epoch_end:
            batch = next(batches, None)
            if batch is None:
                break
            x, y = move(batch[0], self.device), move(batch[1], self.device)
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                x = x.contiguous(memory_format=self.memory_format)
            with self.precision.autocast():
                outputs = call_model(self.model, x)
                loss = self._loss(outputs, x, y)
                if self.penalty is not None:
                    loss = loss + self.penalty(self.model, self.step)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            items = count_items(x)
            self.images += items
            hits = _top1_hits(outputs, y)
            if gpu_loss is not None and gpu_correct is not None:
                gpu_loss += loss.detach().float() * items
                if hits is not None:
                    gpu_correct += hits
            else:
                loss_sum += float(loss.detach()) * items
                correct += int(hits) if hits is not None else 0
            if hits is not None:
                self._classified += items
            seen += items
            if bar is not None:
                bar.update(1)
                if not on_gpu:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        if gpu_loss is not None and gpu_correct is not None:
            loss_sum += float(gpu_loss)
            correct += int(gpu_correct)
        if bar is not None:
            bar.close()
        if not math.isfinite(loss_sum):  # checked once per epoch part: no host sync inside the step
            lr = self.optimizer.param_groups[0].get("initial_lr", self.optimizer.param_groups[0]["lr"])
            raise TrainingDivergedError(
                f"the fine-tune diverged: its loss became {loss_sum} by step {self.step} of {self.total_steps}; "
                f"lower the learning rate (now {lr:g}: --finetune-lr) or check the data and the loss"
            )
        self._last_epoch_stats = (loss_sum, correct, seen)

    def _loss(self, logits: Any, x: Any, y: Any) -> torch.Tensor:
        """Cross-entropy (or the given ``loss``), blended with distillation from ``teacher`` when there is one
        (Hinton et al. 2015): ``(1 - w) * CE + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``."""
        loss = self.loss_fn(logits, y)
        if self.teacher is None:
            return loss
        if not isinstance(logits, torch.Tensor):
            raise ConfigError(f"distillation blends class scores, but the model returns {type(logits).__name__}; "
                              "turn `distill` off for this model")
        with torch.no_grad():
            target = call_model(self.teacher, x)
        t = self.distill_temperature
        soft = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1),
                                    nn.functional.softmax(target / t, dim=1), reduction="batchmean") * (t * t)
        return (1.0 - self.distill_weight) * loss + self.distill_weight * soft

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, schedule, step, RNG (CPU, and the GPU's on
        CUDA), the fp16 gradient scaler when there is one."""
        extra: dict[str, Any] = {}
        if self._cuda_rng_state is not None:
            extra["cuda_rng"] = self._cuda_rng_state
        if self.scaler is not None:
            extra["scaler"] = self.scaler.state_dict()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "images": self.images,
            "seconds": self.seconds,
            "rng": self._rng_state,
            "last_epoch_stats": self._last_epoch_stats,
            "total_steps": self.total_steps,
            **extra,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict` of a `Trainer` built with the same arguments."""
        if int(state["total_steps"]) != self.total_steps:
            raise ValueError(
                f"the saved run was planned for {state['total_steps']} steps, this one for {self.total_steps}"
            )
        self.model.load_state_dict(state["model"])
        self.model.to(device=self.device, memory_format=self.memory_format)  # type: ignore[call-overload]  # torch's stub lacks to(device, memory_format=)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.images = int(state["images"])
        self.seconds = float(state["seconds"])
        self._rng_state = state["rng"]
        if self._rng_devices and state.get("cuda_rng") is not None:  # a CPU checkpoint has none: the seeded one
            self._cuda_rng_state = state["cuda_rng"]
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self._last_epoch_stats = tuple(state["last_epoch_stats"])


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    split: Split | LoaderSplit,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    metric: Any = None,
    precision: str | Precision | None = None,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] (or ``metric``: `score_batches`) and mean cross-entropy of ``model`` on ``split``,
    in eval mode (the first ``max_batches`` batches when given).

    The model's training/eval mode is restored afterwards. On CUDA the forward passes run in ``precision``
    (autocast; fp32 on the CPU) and the sums stay on the GPU until the end.

    Raises:
        ConfigError: An empty split or a non-positive ``batch_size``.
    """
    if not isinstance(split, LoaderSplit) and len(split) == 0:
        raise ConfigError("cannot evaluate on an empty split (was `val_size=0`?)")
    _check_positive(batch_size=batch_size)
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    memory_format = torch.channels_last if _uses_channels_last(model) else torch.contiguous_format
    autocast = resolve_precision(precision, device).autocast
    was_training = model.training
    model.eval()
    batches: Iterable[tuple[Any, Any]] = iterate_batches(split, batch_size, shuffle=False, seed=0)
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    try:
        return score_batches(model, batches, device, autocast, metric=metric, memory_format=memory_format)
    finally:
        model.train(was_training)


@torch.no_grad()
def score_batches(
    model: nn.Module,
    batches: Iterable[tuple[Any, Any]],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]],
    *,
    metric: Any = None,
    memory_format: torch.memory_format | None = None,
) -> tuple[float, float]:
    """The score and the mean cross-entropy of ``model`` (in eval mode, under ``torch.no_grad``) over ``batches`` of
    ``(inputs, targets)``, each moved to ``device``.

    The score is top-1 accuracy by default; with ``metric``, a ``torchmetrics.Metric`` (a private copy is reset,
    updated batch by batch on ``device`` and computed at the end) or a function ``metric(outputs, targets)``:
    called once on all outputs and targets concatenated in order on the CPU when both are tensors (exact for
    non-averaging metrics), else per batch and averaged over items. Cross-entropy is measured when the outputs are
    N x classes scores of N class indices, else it is NaN (the task's own loss may not apply to eval-mode outputs:
    a detector's). On CUDA the sums stay on the GPU until the end (no host sync per batch).
    """
    correct, loss_sum, seen = 0, 0.0, 0
    classification = True  # every batch had N x classes outputs and N class indices
    gpu_sums = torch.zeros(2, dtype=torch.float64, device=device) if device.type == "cuda" else None
    streaming = _streaming_metric(metric, device)
    outputs_kept: list[Any] = []
    targets_kept: list[Any] = []
    per_batch: list[tuple[float, int]] = []
    for inputs, targets in batches:
        x, y = move(inputs, device), move(targets, device)
        if memory_format is not None and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        items = count_items(x)
        with autocast():
            outputs = call_model(model, x)
        hits = _top1_hits(outputs, y)
        batch_loss = nn.functional.cross_entropy(outputs.float(), y, reduction="sum") if hits is not None else None
        if batch_loss is None or hits is None:
            classification, loss_sum = False, math.nan
        elif gpu_sums is not None:
            gpu_sums[0] += batch_loss.double()
            gpu_sums[1] += hits
        else:
            loss_sum += float(batch_loss)
            correct += int(hits)
        seen += items
        if streaming is not None:
            streaming.update(outputs, y)
        elif metric is not None and isinstance(outputs, torch.Tensor) and isinstance(y, torch.Tensor):
            outputs_kept.append(outputs.detach().float().cpu())
            targets_kept.append(y.cpu())
        elif metric is not None:
            per_batch.append((float(metric(outputs, y)), items))
    if gpu_sums is not None and classification:
        loss_sum, correct = float(gpu_sums[0]), int(gpu_sums[1])
    n = max(1, seen)
    if streaming is not None:
        return metric_value(streaming.compute(), metric), loss_sum / n
    if metric is not None and per_batch:
        return sum(v * k for v, k in per_batch) / max(1, sum(k for _, k in per_batch)), loss_sum / n
    if metric is not None:
        return float(metric(torch.cat(outputs_kept), torch.cat(targets_kept))), loss_sum / n
    if not classification:
        raise ConfigError("top-1 accuracy needs N x classes outputs and N class indices; this model and data are "
                          "another task: give a `metric` (a torchmetrics Metric or a function)")
    return correct / n, loss_sum / n


def metric_value(value: Any, metric: Any) -> float:
    """A torchmetrics result as one higher-is-better number: a dict's first value (``MeanAveragePrecision``:
    ``map``), negated when the metric says ``higher_is_better = False`` (an error, a distance)."""
    if isinstance(value, dict):
        if not value:
            raise ConfigError(f"the metric {type(metric).__name__} computed an empty result")
        value = next(iter(value.values()))
    number = float(value)
    return -number if getattr(metric, "higher_is_better", True) is False else number


def is_streaming_metric(metric: Any) -> bool:
    """Whether ``metric`` keeps state across batches (a ``torchmetrics.Metric``: ``reset``/``update``/``compute``)."""
    return all(callable(getattr(metric, name, None)) for name in ("reset", "update", "compute"))


def _streaming_metric(metric: Any, device: torch.device) -> Any:
    """A fresh copy of a torchmetrics metric on ``device`` (the caller's object is never updated), or None."""
    if metric is None or not is_streaming_metric(metric):
        return None
    fresh = metric.clone() if callable(getattr(metric, "clone", None)) else copy.deepcopy(metric)
    fresh.reset()
    return fresh.to(device) if callable(getattr(fresh, "to", None)) else fresh


def _top1_hits(outputs: Any, targets: Any) -> torch.Tensor | None:
    """Correct top-1 predictions of a batch (a tensor, summed on its device) when ``outputs`` are N x classes
    scores and ``targets`` N class indices; None for any other task."""
    if (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor) and outputs.dim() == 2
            and targets.dim() == 1 and not targets.dtype.is_floating_point and len(targets) == len(outputs)):
        return (outputs.argmax(1) == targets).sum()
    return None


def _warmup_cosine(total_steps: int) -> Any:
    warmup = max(1, int(WARMUP_FRACTION * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _progress_bar(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # Redrawn often on a terminal; rarely when stderr is a log file, which would otherwise fill with frames.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, desc=description, file=sys.stderr, unit="step", leave=False, dynamic_ncols=True,
                mininterval=interval)


def _check_positive(**values: float) -> None:
    for label, value in values.items():
        if not value > 0:
            raise ConfigError(f"`{label}` must be positive, but got {value!r}")


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _uses_channels_last(model: nn.Module) -> bool:
    for parameter in model.parameters():
        if parameter.dim() == 4:
            return parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous()
    return False
