"""`Evaluator`: how good is an architecture, measured on the validation split, cached.

Each candidate is compressed from the base model, optionally fine-tuned for a few steps, then its batch-norm
statistics are recomputed on a few training batches (adaptive BN, EagleEye: Li et al. 2020) before the
validation accuracy is measured. Stale statistics from the full-width model badly understate a pruned
model, which would mislead every searcher. A candidate with bits is then fake-quantized (`automl_prune.quantize.fake`)
and its activation ranges calibrated on the same training batches: its accuracy is simulated, not measured on
integer kernels.

The evaluator works on its own copy of the base model, on its device (`automl_prune.train.device`); on CUDA the
forward passes of adaptive BN and scoring, and the short fine-tune, run in the resolved ``precision``
(autocast); fake-quantized candidates are calibrated and scored in fp32.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from automl_prune.data.batches import call_model, count_items, move, nbytes
from automl_prune.data.datasets import Split, iterate_batches
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.data.streaming import LazyImages
from automl_prune.data.task import Task
from automl_prune.prune.calibration import Calibration
from automl_prune.prune.criteria import Criterion, get_criterion
from automl_prune.prune.pruning import channel_order, compress_widths
from automl_prune.prune.reconstruct import OriginalOutputs
from automl_prune.train.device import FP32, Precision, current_device, resolve_precision, to_device
from automl_prune.train.training import score_batches
from search_spaces import Architecture, SearchSpace

__all__ = ["VAL_IN_MEMORY_FRACTION", "Evaluator", "Metrics", "recalibrate_batch_norm"]

VAL_IN_MEMORY_FRACTION = 0.25
"""A streamed validation split is held in memory when its float pixels take at most this share of the
streaming limit (`automl_prune.data.streaming.stream_limit_bytes`), instead of being read from disk and decoded
again for every candidate."""

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Metrics:
    """What one evaluation measured (``accuracy``: top-1, or the task's metric; ``loss``: cross-entropy)."""

    accuracy: float
    loss: float
    flops: int
    params: int
    flops_ratio: float
    params_ratio: float
    seconds: float
    size_bits: int = 0
    bops: int = 0
    size_ratio: float = 1.0
    bops_ratio: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: list[Any]) -> None:
    """Recompute every batch norm's running mean and variance as the exact average over ``batches``."""
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return
    was_training = model.training
    model.eval()
    saved_momentum = []
    for bn in bns:
        bn.reset_running_stats()
        saved_momentum.append(bn.momentum)
        bn.momentum = None  # cumulative moving average: every batch counts equally
        bn.train()
    try:
        for x in batches:
            call_model(model, x)
    finally:
        for bn, momentum in zip(bns, saved_momentum, strict=True):
            bn.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def accuracy_and_loss(
    model: nn.Module,
    images: torch.Tensor | LazyImages,
    labels: torch.Tensor,
    batch_size: int,
    metric: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    precision: Precision = FP32,
) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy of ``model`` on the given tensors (or streamed images:
    read in batches, each moved to the model's device).

    With ``metric`` the first number is ``metric(outputs, labels)`` of the whole split instead (outputs
    concatenated in order, on the CPU: `automl_prune.data.task.Task`). On CUDA the forward passes run in
    ``precision`` and the sums stay on the GPU until the end (no host sync per batch).
    """
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return score_batches(model, iterate_batches(Split(images, labels), batch_size, shuffle=False, seed=0),
                         device, precision.autocast, metric=metric)


class Evaluator:
    """Scores architectures of one base model on a held-out validation split.

    Args:
        model: The trained base model (not modified: the evaluator scores a copy of it, on ``device``).
        space: Its search space.
        train_images: Training images, or the user's training loader (`LoaderSplit`); calibration (and short
            fine-tune) batches are drawn from them: a seeded random subset of images, or the loader's first
            batches (and a new pass of it for each candidate's fine-tune, under the evaluator's seed, so that a
            shuffling loader gives every candidate the same batches).
        val_images, val_labels: The validation split the score is measured on (never the test set); or the
            user's validation loader (`LoaderSplit`) and ``None``.
        channel_order: Every group's channel ranking on ``model`` under ``criterion``, when already known (the
            `channel_order` of an evaluator of the same model, criterion and calibration); else ranked at the first
            build.
        val_batches: Score candidates on the first this many batches of the validation split (batches of
            ``eval_batch_size`` images, or the loader's); ``None``: all of it. Batches whose tensors fit in
            `VAL_IN_MEMORY_FRACTION` of the streaming limit are read once and kept; more are read anew per score.
        criterion: Which channels survive compression.
        bn_batches, bn_batch_size: How much training data adaptive BN sees.
        finetune_steps: Optional short fine-tune before adaptive BN (a second, costlier proxy).
        train_labels: Needed only when ``finetune_steps > 0``.
        seed: Same seed, same architecture -> same metrics.
        device: Default: the run's (`automl_prune.train.device.current_device`).
        calibration: Training images (and labels) for data-driven criteria and for ``reconstruct``.
        reconstruct: Re-fit every pruned layer by least squares to the base model's outputs after compression.
        task: The short fine-tune's loss and the score (``Metrics.accuracy``) when they are not cross-entropy and
            top-1 accuracy (`automl_prune.data.task.Task`).
        precision: Of the forward passes and the short fine-tune on CUDA (``auto``, ``fp32``, ``bf16``, ``fp16``:
            `automl_prune.train.device.resolve_precision`); fp32 on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        train_images: torch.Tensor | LazyImages | LoaderSplit,
        val_images: torch.Tensor | LazyImages | LoaderSplit,
        val_labels: torch.Tensor | None = None,
        *,
        criterion: str | Criterion = "l1",
        bn_batches: int = 10,
        bn_batch_size: int = 128,
        eval_batch_size: int = 1000,
        finetune_steps: int = 0,
        finetune_lr: float = 0.01,
        finetune_batch_size: int = 128,
        train_labels: torch.Tensor | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        calibration: Calibration | None = None,
        reconstruct: bool = False,
        task: Task | None = None,
        precision: str | Precision | None = None,
        val_batches: int | None = None,
        channel_order: dict[str, list[int]] | None = None,
    ) -> None:
        if finetune_steps > 0 and train_labels is None and not isinstance(train_images, LoaderSplit):
            raise ValueError("finetune_steps > 0 needs train_labels")
        if not isinstance(val_images, LoaderSplit) and val_labels is None:
            raise ValueError("tensor validation images need val_labels")
        self.device = torch.device(device) if device is not None else current_device()
        self.precision = resolve_precision(precision, self.device)
        self.space = space
        self.criterion = criterion
        self.calibration = calibration
        self.reconstruct = reconstruct
        self.task = task or Task()
        self._order: dict[str, list[int]] | None = channel_order
        self._targets = OriginalOutputs()  # the re-fit targets, shared by every candidate
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.finetune_steps = finetune_steps
        self.finetune_lr = finetune_lr
        # A copy: the caller's model keeps its device, mode and flags (it may be on another device, or training).
        self.model = copy.deepcopy(model).to(self.device).eval()
        # Kept for searchers that train (DMCP) and for the short fine-tune proxy.
        self.train_images = train_images
        self.train_labels = train_labels
        self.finetune_batch_size = finetune_batch_size
        self.val_batches = val_batches
        self._finetune: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._finetune_index: torch.Tensor | None = None  # in-memory/streamed images: batches read at each fine-tune
        generator = torch.Generator().manual_seed(seed)
        if isinstance(train_images, LoaderSplit):
            self._calibration = [move(x, self.device) for x, _ in train_images.take(bn_batches * bn_batch_size)]
        else:
            n_calib = min(len(train_images), bn_batches * bn_batch_size)
            calib_idx = torch.randperm(len(train_images), generator=generator)[:n_calib]
            self._calibration = [
                to_device(train_images[calib_idx[i : i + bn_batch_size]], self.device)
                for i in range(0, n_calib, bn_batch_size)
            ]
            if finetune_steps > 0 and train_labels is not None:
                # Gathered at each fine-tune (from host memory, or read from disk when streamed): the device never
                # holds steps x batch images at once.
                self._finetune_index = torch.randint(
                    len(train_images), (finetune_steps, finetune_batch_size), generator=generator
                )
        # Streamed validation images stay on disk (or in the user's loader) until `_val_batches` decides whether
        # the scored batches are kept in memory; in-memory tensors move to the device now.
        self.val_images: Any = val_images if isinstance(val_images, (LazyImages, LoaderSplit)) \
            else val_images.to(self.device)
        # The user's loader carries its own targets: no labels are kept apart then.
        self.val_labels = val_labels.to(self.device) if val_labels is not None else torch.empty(0, dtype=torch.long)
        self._val_kept: list[tuple[Any, Any]] | None = None
        self._val_decided = False
        self._cache: dict[str, Metrics] = {}
        self.evaluations = 0  # evaluations actually computed (cache misses)

    def build(self, architecture: Architecture) -> nn.Module:
        """The compressed, recalibrated (and optionally briefly fine-tuned) model for ``architecture``."""
        self.space.validate(architecture)
        # Seeded for determinism, inside a forked RNG so that evaluating never disturbs a searcher's own stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            pruned = compress_widths(self.model, self.space.graph, architecture.widths, self.criterion,
                                     self._channel_order(), calibration=self.calibration,
                                     reconstruct=self.reconstruct, targets=self._targets).to(self.device)
            if self._finetune or self._finetune_index is not None or (
                    self.finetune_steps > 0 and isinstance(self.train_images, LoaderSplit)):
                self._short_finetune(pruned)
            with self.precision.autocast():
                recalibrate_batch_norm(pruned, self._calibration)
            if architecture.bits:
                from automl_prune.quantize.fake import calibrate, quantize

                pruned = calibrate(quantize(pruned, architecture.bits, inplace=True),
                                   [(x, None) for x in self._calibration])
        return pruned.eval()

    @property
    def channel_order(self) -> dict[str, list[int]] | None:
        """The channel ranking builds use, once known (``None`` before the first build, or for criteria that
        choose a set per width)."""
        return self._order

    def _channel_order(self) -> dict[str, list[int]] | None:
        """Every group's channel ranking on the base model, scored once (a data-driven criterion runs its
        calibration passes once, not per candidate); ``None`` for criteria that choose a set per width
        other than a prefix of one ranking (``ccp``, ``similarity``)."""
        crit = get_criterion(self.criterion)
        if type(crit).select is not Criterion.select and not crit.nested:
            return None
        if self._order is None:
            self._order = channel_order(self.model, self.space.graph, crit, calibration=self.calibration)
        return self._order

    def _short_finetune(self, model: nn.Module) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=self.finetune_lr, momentum=0.9)
        model.train()
        labels: Any = self.train_labels  # not None when there is a fine-tune: checked in __init__
        batches: Any = self._finetune
        if isinstance(self.train_images, LoaderSplit):
            # A new pass of the user's loader; build() seeds torch's generator first, so a shuffling loader's
            # sampler gives every candidate the same batches.
            batches = ((move(x, self.device), move(y, self.device)) for x, y in itertools.islice(
                iterate_batches(self.train_images, self.finetune_batch_size, shuffle=True, seed=None,
                                drop_last=True), self.finetune_steps))
        elif self._finetune_index is not None and isinstance(self.train_images, LazyImages):
            batches = ((x.to(self.device), labels[idx].to(self.device)) for idx, x in
                       zip(self._finetune_index, self.train_images.iter_batches(self._finetune_index), strict=True))
        elif self._finetune_index is not None:
            images = self.train_images
            batches = ((images[idx].to(self.device, non_blocking=True), labels[idx].to(self.device))
                       for idx in self._finetune_index)
        loss_fn = self.task.loss or nn.functional.cross_entropy
        scaler = self.precision.scaler()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                loss = loss_fn(call_model(model, x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        model.eval()

    def evaluate(self, architecture: Architecture) -> Metrics:
        """Metrics of ``architecture`` on the validation split; repeated calls hit the cache."""
        key = architecture.key()
        if key in self._cache:
            return self._cache[key]
        start = time.perf_counter()
        pruned = self.build(architecture)
        acc, loss = self._score(pruned, FP32 if architecture.bits else self.precision)
        costs = self.space.costs(architecture)
        full = self.space.cost_model.full
        metrics = Metrics(
            accuracy=acc,
            loss=loss,
            flops=costs.flops,
            params=costs.params,
            flops_ratio=costs.flops / full.flops,
            params_ratio=costs.params / full.params,
            seconds=time.perf_counter() - start,
            size_bits=self.space.size_bits(architecture),
            bops=self.space.bops(architecture),
            size_ratio=self.space.size_bits(architecture) / self.space.full_size_bits,
            bops_ratio=self.space.bops(architecture) / self.space.full_bops,
        )
        self._cache[key] = metrics
        self.evaluations += 1
        return metrics

    #: Candidates worth proposing at once (this evaluator scores one at a time; a worker pool says more).
    parallelism = 1

    def evaluate_many(self, architectures: list[Architecture]) -> list[Metrics]:
        """Metrics of every architecture, in order (one after another here)."""
        return [self.evaluate(arch) for arch in architectures]

    def base_accuracy(self) -> float:
        """Validation accuracy (or the task's metric) of the unpruned model with its own statistics."""
        return self._score(self.model, self.precision)[0]

    def _score(self, model: nn.Module, precision: Precision) -> tuple[float, float]:
        """The score and cross-entropy of ``model`` on the scored validation batches."""
        model.eval()
        return score_batches(model, self._val_batches(), self.device, precision.autocast, metric=self.task.metric)

    def _val_batches(self) -> Any:
        """The validation batches candidates are scored on (the first ``val_batches`` when set).

        Tensors in memory are sliced into batches of ``eval_batch_size``. A streamed folder or the user's loader is
        read once and kept (on the device) when the scored batches fit in `VAL_IN_MEMORY_FRACTION` of the
        streaming limit, and read anew for every score otherwise; the log says which.
        """
        if self._val_kept is not None:
            return self._val_kept
        images, labels = self.val_images, self.val_labels
        if isinstance(images, torch.Tensor):
            if self.val_batches is not None:
                n = self.val_batches * self.eval_batch_size
                images, labels = images[:n], labels[:n]
            return iterate_batches(Split(images, labels), self.eval_batch_size, shuffle=False, seed=0)
        if self._val_decided:
            return self._read_val()
        self._val_decided = True
        from automl_prune.data.streaming import stream_limit_bytes

        limit = VAL_IN_MEMORY_FRACTION * stream_limit_bytes()
        kept: list[tuple[Any, Any]] = []
        size = items = 0
        for x, y in (self._read_val() if self._val_estimate() <= limit else ()):
            size += nbytes(x) + nbytes(y)
            items += count_items(x)
            if size > limit:
                kept = []
                break
            kept.append((x, y))
        scope = ("all of it" if self.val_batches is None else f"its first {self.val_batches} batches") + \
            " (the final model is scored on all of it)" * (self.val_batches is not None)
        if kept:
            self._val_kept = [(move(x, self.device), move(y, self.device)) for x, y in kept]
            print(f"validation: candidates are scored on {scope}: {items} items read once and kept in memory "
                  f"({size / 2**20:.0f} MB)", file=sys.stderr, flush=True)
            return self._val_kept
        print(f"validation: candidates are scored on {scope}, read anew for each score (over the "
              f"{limit / 2**20:.0f} MB kept in memory: AUTOML_PRUNE_STREAM_LIMIT_MB sets it)", file=sys.stderr,
              flush=True)
        return self._read_val()

    def _read_val(self) -> Any:
        """One pass over the streamed or loader validation batches (the first ``val_batches``)."""
        images = self.val_images
        if isinstance(images, LoaderSplit):
            return images.batches(limit=self.val_batches)
        labels = self.val_labels.cpu()
        if self.val_batches is None:
            return iterate_batches(Split(images, labels), self.eval_batch_size, shuffle=False, seed=0)
        n, step = min(len(images), self.val_batches * self.eval_batch_size), self.eval_batch_size
        return ((images[i:i + step], labels[i:i + step]) for i in range(0, n, step))

    def _val_estimate(self) -> int:
        """Bytes the scored validation batches would take in memory, estimated before reading them."""
        images = self.val_images
        if isinstance(images, LoaderSplit):
            x, y = images.first_batch()
            per_item = (nbytes(x) + nbytes(y)) / max(1, count_items(x))
            batches = images.num_batches
            if self.val_batches is not None and batches is not None:
                batches = min(batches, self.val_batches)
            elif self.val_batches is not None:
                batches = self.val_batches
            items = (batches * count_items(x) if batches is not None else images.num_items) or 0
            return int(per_item * items)
        n = len(images) if self.val_batches is None else min(len(images), self.val_batches * self.eval_batch_size)
        return int(math.prod(images.shape[1:]) * 4 * n)
