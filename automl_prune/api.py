"""The Python API on a user's own model and data: `search`, `compress`, `load`.

```python
result = automl_prune.search(model, train=(x_train, y_train), val=val_loader, flops=0.5, agent="ddpg",
                             out="runs/mine", episodes=60)
result.model, result.architecture.widths, result.metrics["compressed"]["test_acc"], result.run_dir
```

Settings are those of `automl_prune.config.SearchConfig` (the CLI flags and YAML keys, ``_`` for ``-``), so a
search started here behaves as one started from the command line; ``model``/``dataset``/``weights``/
``pretrain_*`` do not apply (the model is yours and already trained).

Tasks where top-1 accuracy is not the score take a ``loss`` and a ``metric`` (`automl_prune.data.task.Task`):

```python
def neg_brier(outputs, targets):  # module level: Ray workers receive it pickled
    return -float(((outputs.softmax(1) - F.one_hot(targets, outputs.shape[1])) ** 2).sum(1).mean())

result = automl_prune.search(model, train, val, flops=0.5, loss=F.cross_entropy, metric=neg_brier)
result.metrics["metric"], result.metrics["compressed"]["val_acc_after_finetune"]  # "neg_brier", its value
```
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from automl_prune.config import SearchConfig
from automl_prune.data.task import LossFn, MetricFn, Task
from automl_prune.errors import ConfigError, did_you_mean
from search_spaces import Architecture

__all__ = ["SearchResult", "compress", "search"]

_NOT_SETTINGS = {"model", "dataset", "data_root", "weights", "pretrain_epochs", "pretrain_seed", "val_size"}


@dataclass
class SearchResult:
    """What `search` hands back.

    Attributes:
        model: The compressed and fine-tuned model (eval mode, CPU), rebuilt from the export.
        architecture: Its per-group widths and, when the search decided them, per-layer bits.
        metrics: The run's ``summary.json`` (FLOPs, params, accuracies, timings, the re-ranking ladder).
        run_dir: Where everything was written (``best/arch.json`` + ``best/weights.pt``: `load` them with the
            same base model).
        criterion: The channel criterion the search pruned with (pass it to `compress` to cut the same channels).
    """

    model: nn.Module
    architecture: Architecture
    metrics: dict[str, Any]
    run_dir: Path
    criterion: str = "l1"


def search(
    model: nn.Module,
    train: Any,
    val: Any,
    *,
    test: Any | None = None,
    flops: float | None = None,
    agent: str = "auto",
    out: str | Path = "runs/search",
    loss: LossFn | None = None,
    metric: MetricFn | None = None,
    metric_name: str | None = None,
    **settings: Any,
) -> SearchResult:
    """Compress a trained ``model`` to ``flops`` of its FLOPs: search, re-rank, fine-tune, export.

    Args:
        model: Your trained model (not modified: the search works on a copy).
        train: Training data: ``(inputs, targets)`` tensors (held in memory, sliced into batches), or a
            ``DataLoader`` (any re-iterable of ``(inputs, targets)`` batches), read when data is needed and never
            collected whole: fine-tunes draw its batches with its own shuffling and augmentation (an epoch is
            ``len(loader)`` batches), batch-norm recalibration and calibration take its first batches. Inputs
            are a tensor, a tuple or a dict (``model(x)``, ``model(*x)``, ``model(**x)``); targets are what the
            loss and metric take.
        val: Validation data (same forms), held out from ``train``: every candidate is scored on it (on its
            first ``val_batches`` batches when that setting is given; the final model on all of it).
        test: Test data, measured once on the final model; without it the summary has no test accuracy.
        flops: The budget, a fraction of the model's FLOPs in (0, 1] (default 0.5; none when ``latency=`` is
            given: ``latency=0.5`` is a budget of half the model's latency measured on this device).
        agent: The searcher: ``auto`` (``sensitivity`` for widths or bits alone, ``ddpg`` for both), ``ddpg``,
            ``ppo``, ``optuna``, ``random``, ``dmcp``, ``sensitivity``, ...
        out: The run directory; calling again with the same settings, model, data, loss and metric resumes it.
        loss: ``loss(outputs, targets) -> Tensor``, a scalar to minimise (mean over the batch) used by every
            fine-tune of a candidate: the search's proxy fine-tune steps (``search_finetune_steps``), the
            re-ranking rungs and the final fine-tune. ``outputs`` are the model's outputs of a batch (class
            scores, a dict, a detector's losses in train mode), ``targets`` its targets.
            Default: cross-entropy (with the recipe's label smoothing). With
            ``distill=True`` the distillation term is blended in as with cross-entropy.
        metric: A ``torchmetrics.Metric`` (updated batch by batch, computed per split; ``higher_is_better``
            honoured) or ``metric(outputs, targets) -> float``, higher is better, in place of top-1 accuracy
            wherever a candidate is scored or reported: the searchers' reward, the re-ranking ladder, the base
            and final validation and test numbers. A function is called once per split with the outputs of the
            *whole* split (concatenated in order, on the CPU) and its targets when both are tensors, so
            non-averaging metrics (F1, AUC) are exact, else per batch and averaged over items.
            The summary keeps its key names (``val_acc``, ``test_acc``, ``accuracy``) for the
            metric's values and names it in ``summary["metric"]`` (and a custom loss in ``summary["loss"]``).
            With ``workers`` > 0 (the default: one per CPU) both functions are pickled into Ray worker processes:
            use module-level functions, not lambdas or nested functions (or pass ``workers=0``).
        metric_name: The metric's name in the summary and the report (default: the function's ``__name__``).
        **settings: Any other `SearchConfig` field (``episodes``, ``criterion``, ``workers``, ``finetune_epochs``,
            ``rerank_top_k``, ``agent_options``, ...).

    Raises:
        ConfigError: A bad setting, data of the wrong shape, or a loss/metric that cannot work (not callable,
            not a scalar, not picklable while ``workers`` > 0): nothing is written then.
    """
    from automl_prune.run.base_model import PYTHON_MODEL_PREFIX

    if flops is None:
        flops = 1.0 if settings.get("latency") is not None else 0.5
    config = _config(model, flops=flops, agent=agent, out=str(out), settings=settings,
                     prefix=PYTHON_MODEL_PREFIX)
    task = Task(loss=loss, metric=metric, metric_name=metric_name)
    task.check(config.resolved_workers)
    # Ray, Tune, stable-baselines3 and tqdm change process-wide state (environment, hooks, handlers, random
    # generators, the multiprocessing start method): the caller's process is put back as it was.
    from automl_prune.run.process_state import process_left_as_it_was

    with process_left_as_it_was(), torch.random.fork_rng():
        return _search(model, train, val, test, config, task)


def _search(model: nn.Module, train: Any, val: Any, test: Any | None, config: SearchConfig,
            task: Task) -> SearchResult:
    from automl_prune.data.loader_split import LoaderSplit
    from automl_prune.data.user_data import user_splits
    from automl_prune.models.checkpoints import state_sha256
    from automl_prune.models.weights import check_finite
    from automl_prune.run.base_model import base_from_model, log
    from automl_prune.run.export import load
    from automl_prune.run.pipeline import run_search
    from automl_prune.train.training import evaluate_accuracy

    base_model = copy.deepcopy(model).to("cpu").eval()
    check_finite(base_model.state_dict().items(), "the model")
    splits = user_splits(base_model, train, val, test, classification=not task.custom,
                         workers=config.resolved_workers)
    if config.agent == "dmcp" and isinstance(splits.train, LoaderSplit):
        raise ConfigError("agent dmcp trains its supernet on indexed training images; with a `train` DataLoader "
                          "choose another agent (ddpg, ppo, optuna, sensitivity, ...) or pass (inputs, targets) "
                          "tensors")
    tensor_inputs = isinstance(_first_inputs(splits.train), Tensor)
    if not tensor_inputs and config.criterion == "auto":
        config = dataclasses.replace(config, criterion="l1")
        log("criterion: l1 (the default, reap, feeds calibration images to the model; these inputs are not one "
            "tensor)")
    if task.loss is not None:
        _check_loss(base_model, splits.train, task.loss)
    scope = "the whole validation loader" if isinstance(splits.val, LoaderSplit) else "the validation data"
    log(f"base model: scoring it on {scope}")
    val_acc, _ = evaluate_accuracy(base_model, splits.val, batch_size=250, metric=task.metric)
    test_acc = (evaluate_accuracy(base_model, splits.test, batch_size=250, metric=task.metric)[0]
                if splits.test is not None else None)
    spec = splits.spec
    meta = {"model": config.model, "dataset": spec.name, "in_channels": spec.in_channels,
            "num_classes": spec.num_classes, "input_size": spec.input_size, "epochs": 0, "train_seconds": 0.0,
            "val_acc": val_acc, "test_acc": test_acc, "sha256": state_sha256(base_model), "cached": False}
    base = base_from_model(config, base_model, meta, splits, task=task)
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        summary = run_search(config, base)
    finally:
        torch.set_num_threads(previous_threads)
    run_dir = Path(config.out)
    compressed = load(run_dir / "best" / "arch.json", model=base_model)
    bits = {name: (int(pair[0]), int(pair[1])) for name, pair in (summary.get("bits") or {}).items()}
    return SearchResult(model=compressed, architecture=Architecture(dict(summary["architecture"]), bits=bits),
                        metrics=summary, run_dir=run_dir, criterion=config.resolved_criterion)


def _first_inputs(split: Any) -> Any:
    from automl_prune.data.loader_split import LoaderSplit

    return split.first_batch()[0] if isinstance(split, LoaderSplit) else split.images[:1]


def _check_loss(model: nn.Module, train: Any, loss: LossFn) -> None:
    """``loss`` on two training items must be a scalar tensor that gradients flow through. It runs on a copy of the
    model in training mode (as fine-tunes call it: a detector returns its losses then); ``model`` is unchanged."""
    from automl_prune.data.batches import call_model, first_items
    from automl_prune.data.loader_split import LoaderSplit

    x, y = train.first_batch() if isinstance(train, LoaderSplit) else (train.images[:2], train.labels[:2])
    x, y = first_items(x, 2), first_items(y, 2)
    probe = copy.deepcopy(model).train()
    try:
        value = loss(call_model(probe, x), y)
    except Exception as exc:
        raise ConfigError(f"`loss(outputs, targets)` fails on two training items: {type(exc).__name__}: "
                          f"{exc}") from exc
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.requires_grad:
        shown = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(f"`loss(outputs, targets)` must return a scalar tensor differentiable in `outputs`, but "
                          f"returned {shown}" + (" without a gradient" if isinstance(value, Tensor)
                                                 and value.numel() == 1 else ""))


def _config(model: nn.Module, *, flops: float, agent: str, out: str, settings: Mapping[str, Any],
            prefix: str) -> SearchConfig:
    fields = {f.name for f in dataclasses.fields(SearchConfig)}
    for key in settings:
        if key in _NOT_SETTINGS:
            raise ConfigError(f"`{key}` does not apply to automl_prune.search (the model and data are given)")
        if key not in fields:
            hint = did_you_mean(key, fields)
            raise ConfigError(f"unknown setting {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                              + f"; valid settings are {sorted(fields - _NOT_SETTINGS)}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"`model` must be a torch nn.Module, but got {type(model).__name__}")
    label = f"{prefix}{type(model).__module__}.{type(model).__qualname__}"
    # Paths may be given as pathlib paths, as `out` is (`cache_dir=tmp / "cache"`): the settings keep text.
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in settings.items()}
    return SearchConfig(model=label, dataset="user-data", flops=flops, agent=agent, out=out, **settings)


def compress(
    model: nn.Module,
    widths: Architecture | Mapping[str, int] | str | Path,
    example_input: torch.Tensor,
    *,
    criterion: str = "l1",
    calibration: Iterable[torch.Tensor] | None = None,
) -> nn.Module:
    """A physically smaller copy of ``model`` keeping ``widths[group]`` channels per group (``model`` unchanged).

    Args:
        model: The trained model.
        widths: Channels kept per group (group names as in an exported ``arch.json``), an `Architecture`
            (`SearchResult.architecture`: with bits, the copy is also fake-quantized), or the path of an
            ``arch.json``.
        example_input: One input batch shaped as the model expects (traces its channel groups).
        criterion: Which channels survive (a name of `automl_prune.prune.criteria`; `SearchResult.criterion` is
            the search's, and a data-driven one reads ``calibration``).
        calibration: Input batches: re-estimate batch-norm statistics, feed a data-driven criterion, and set the
            activation ranges of quantized layers; needed when ``widths`` has bits.

    Raises:
        ConfigError: A group this model lacks, a width that is not a whole number of channels between 1 and the
            group's size, or bits without ``calibration`` (one line each).
    """
    import json
    import numbers

    from automl_prune.graph.analysis import analyze
    from automl_prune.prune.pruning import compress_widths

    bits: Mapping[str, tuple[int, int]] = {}
    if isinstance(widths, (str, Path)):
        record = json.loads(Path(widths).read_text())
        chosen: Mapping[str, Any] = record["widths"]
        bits = Architecture.from_dict(record).bits
    elif isinstance(widths, Architecture):
        chosen, bits = widths.widths, widths.bits
    else:
        chosen = widths
    graph = analyze(model, example_input)
    unknown = [name for name in chosen if name not in graph.group_index]
    if unknown:
        raise ConfigError(f"group {unknown[0]!r} is not a channel group of this model; its groups are "
                          f"{[g.name for g in graph.groups][:12]}")
    for name, kept in chosen.items():
        size = graph.group(name).size
        if isinstance(kept, bool) or not isinstance(kept, numbers.Integral) or not 1 <= int(kept) <= size:
            raise ConfigError(f"the width of group {name!r} must be a whole number of channels from 1 to {size}, "
                              f"but got {kept!r}")
    batches = list(calibration) if calibration is not None else []
    if bits and not batches:
        raise ConfigError("this architecture has bits: pass calibration= (a few input batches) so that the "
                          "quantized activations get their ranges, or use SearchResult.model / automl_prune.load")
    pruned = compress_widths(model, graph, {str(k): int(v) for k, v in chosen.items()}, criterion,
                             calibration=_calibration(batches, criterion) if batches else None)
    if batches:
        from automl_prune.scoring.evaluator import recalibrate_batch_norm

        recalibrate_batch_norm(pruned, batches)
    if bits:
        from automl_prune.quantize.fake import calibrate, quantize

        pruned = calibrate(quantize(pruned, dict(bits), inplace=True), batches)
    return pruned.eval()


def _calibration(batches: list[torch.Tensor], criterion: str) -> Any:
    """The calibration a data-driven criterion reads, from the given batches (None for weight criteria)."""
    from automl_prune.prune.calibration import Calibration
    from automl_prune.prune.criteria import get_criterion

    if not getattr(get_criterion(criterion), "requires_data", False):
        return None
    return Calibration(torch.cat(batches))
