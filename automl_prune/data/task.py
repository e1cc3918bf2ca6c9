"""`Task`: what a candidate is fine-tuned to minimise and scored by, when it is not cross-entropy and top-1.

The Python API (`automl_prune.search`) takes a ``loss`` and a ``metric``; they travel in one small frozen
`Task` with the base model (`automl_prune.run.pipeline.BaseModel`) down to every place a candidate is trained or
scored: the search's `automl_prune.scoring.evaluator.Evaluator` (proxy fine-tune steps, the score every searcher sees),
the re-ranking ladder's rungs and the final fine-tune (`automl_prune.scoring.rung_job.LadderJob` ->
`automl_prune.train.training.Trainer`), and the final validation and test numbers. The default `Task()` is
cross-entropy (with the recipe's label smoothing) and top-1 accuracy, exactly as the CLI runs.

Contracts:

- ``loss(outputs, targets) -> Tensor``: a scalar to minimise (mean over the batch), differentiable in
  ``outputs``; ``outputs`` are the model's N x classes outputs of one batch, ``targets`` its N int64 labels.
  With distillation on, the distillation term is blended in as it is with cross-entropy.
- ``metric``: a ``torchmetrics.Metric`` (the field's standard: a private copy is reset, updated batch by batch
  on the scoring device and computed at the end; its ``higher_is_better`` is honoured by negating a
  lower-is-better value, and a dict result counts by its first value, e.g. ``map``), or a function
  ``metric(outputs, targets) -> float``, higher is better, computed once per split on the outputs of the
  *whole* split (concatenated in order, on the CPU) and its targets when both are tensors, so that metrics
  that do not average over batches (AUC, F1, ...) are exact, else per batch and averaged over items. It
  replaces top-1 accuracy everywhere a candidate is scored or reported; the summary keeps the key names
  ``val_acc``/``test_acc``/``accuracy`` and names the metric in ``summary["metric"]``.
- Outputs and targets may have any structure (a dict of tensors, a list of dicts of boxes): the model's outputs
  go to the loss and the metric as they are.

Both run in Ray worker processes when ``workers > 0``, which receive them pickled: they must be module-level
functions (or picklable callable objects), not lambdas or nested functions.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from automl_prune.errors import ConfigError

__all__ = ["LossFn", "MetricFn", "Task"]

#: ``loss(outputs, targets)``: a scalar tensor to minimise.
LossFn = Callable[[Any, Any], Tensor]
#: ``metric(outputs, targets)`` of a whole split: a number, higher is better; or a ``torchmetrics.Metric``.
MetricFn = Callable[[Any, Any], float] | Any


@dataclass(frozen=True)
class Task:
    """The fine-tune loss and the score of candidates; ``None`` is cross-entropy and top-1 accuracy.

    Attributes:
        loss: ``loss(outputs, targets) -> scalar Tensor`` used by every fine-tune of a candidate.
        metric: A ``torchmetrics.Metric``, or ``metric(outputs, targets) -> float`` of a whole split, higher is
            better.
        metric_name: How reports name the metric (default: the function's ``__name__``).
    """

    loss: LossFn | None = None
    metric: MetricFn | None = None
    metric_name: str | None = None

    @property
    def custom(self) -> bool:
        """Whether a loss or a metric other than the defaults was given."""
        return self.loss is not None or self.metric is not None

    @property
    def score_name(self) -> str:
        """The metric's name in reports (``top-1 accuracy`` by default)."""
        if self.metric is None:
            return "top-1 accuracy"
        name = self.metric_name or _name(self.metric)
        return f"-{name}" if getattr(self.metric, "higher_is_better", True) is False else name

    def format_score(self, value: float) -> str:
        """A score for a log line: top-1 accuracy in percent, a custom metric as it is, with its name."""
        return f"{100 * value:.2f}%" if self.metric is None else f"{self.score_name} {value:.4g}"

    @property
    def loss_name(self) -> str:
        """The loss's name in reports (``cross-entropy`` by default)."""
        return "cross-entropy" if self.loss is None else _name(self.loss)

    def identity(self) -> dict[str, str]:
        """What makes a run's task itself (for resuming): the functions' import paths; {} for the default."""
        out = {}
        if self.loss is not None:
            out["loss"] = _qualified(self.loss)
        if self.metric is not None:
            out["metric"] = _qualified(self.metric)
        return out

    def check(self, workers: int) -> None:
        """Refuse what cannot work, before anything is written.

        Args:
            workers: Parallel Ray workers of the run; with any, the functions must pickle.

        Raises:
            ConfigError: A loss or metric that is not callable, or that does not pickle while ``workers > 0``.
        """
        for role, function in (("loss", self.loss), ("metric", self.metric)):
            if function is None:
                continue
            if not callable(function):
                raise ConfigError(f"`{role}` must be a function (outputs, targets) -> "
                                  f"{'Tensor' if role == 'loss' else 'float'}, but got {type(function).__name__}")
            if workers > 0:
                try:
                    pickle.dumps(function)
                except Exception as exc:  # pickling raises several types (PicklingError, AttributeError, ...)
                    raise ConfigError(
                        f"`{role}` {_name(function)!r} cannot be pickled for the {workers} Ray worker processes "
                        f"({type(exc).__name__}); define it as a module-level function, or pass workers=0"
                    ) from exc


def _name(function: Any) -> str:
    return str(getattr(function, "__name__", None) or type(function).__name__)


def _qualified(function: Any) -> str:
    module = getattr(function, "__module__", None) or type(function).__module__
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}"
