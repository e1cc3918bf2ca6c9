"""One rung of one candidate: fine-tune it to the rung's step and measure its validation accuracy.

The same function runs in process (``workers=0``) and inside a Ray Tune trial. Its files live in the run
directory, under ``rerank/<candidate>/``: ``rung<r>.pt`` (the `Trainer` state at the end of rung ``r``, where
rung ``r + 1`` continues from) and ``rung<r>.json`` (the result, written last: the "done" marker a restarted
trial checks before doing anything). A rung interrupted midway continues from the progress state its runner
saved (a Tune checkpoint, or ``rung<r>.partial.pt`` in process).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from automl_prune.atomic import atomic_write, atomic_write_text
from automl_prune.data.datasets import Splits
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.data.task import LossFn, Task
from automl_prune.prune.pruning import compress_widths
from automl_prune.scoring.ladder import Candidate, RungExecutor, RungResult
from automl_prune.train.device import current_deterministic, current_device, current_precision
from automl_prune.train.training import Trainer, evaluate_accuracy
from search_spaces import Architecture, SearchSpace

if TYPE_CHECKING:
    from automl_prune.prune.criteria import Criterion

__all__ = ["FineTuneRecipe", "LadderJob", "local_executor"]

#: Test hook: a path; the first rung run that finds no file there creates it and raises midway.
FAIL_ONCE_ENV = "AUTOML_PRUNE_TEST_FAIL_ONCE"
#: Test hook: a path; while a file is there, every rung run raises midway (a trial that keeps failing).
FAIL_WHILE_ENV = "AUTOML_PRUNE_TEST_FAIL_WHILE"


@dataclass(frozen=True)
class FineTuneRecipe:
    """How every candidate is fine-tuned, on the ladder and at its top (the final fine-tune).

    SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, a linear warm-up over 5% of the steps and a
    cosine decay to zero over the whole fine-tune: the recipe the base model was trained with, at a tenth of
    its peak learning rate because the weights start close to a good solution. With ``distill`` the loss blends
    in knowledge distillation from the base model (temperature, weight: `automl_prune.train.training.Trainer`).

    Pruned models train in the default (contiguous) memory format, not ``channels_last``: with one torch
    thread, oneDNN's channels-last convolution backward corrupted the heap ("free(): invalid next size") on
    pruned tiny-resnets with widths such as 6/4/13/12 here (torch 2.14.1, CPU); contiguous tensors, or
    channels-last with oneDNN off, ran clean. Contiguous measured 20-35% slower per step on vgg-small.

    With ``regularize`` (``group-lasso`` or ``growing-l2``: `prune.sparsity`), a candidate's fine-tune is
    preceded by ``regularize_steps`` steps of the full-width base model with that penalty (``regularize_strength``)
    on the channels the candidate removes; they are cut afterwards, when they hold almost nothing.
    """

    epochs: float = 1.0
    lr: float = 0.01
    batch_size: int = 128
    label_smoothing: float = 0.0
    seed: int = 0
    distill: bool = False
    distill_temperature: float = 4.0
    distill_weight: float = 0.5
    regularize: str = "none"
    regularize_steps: int = 200
    regularize_strength: float = 1.0

    def trainer(self, model: nn.Module, splits: Splits, teacher: nn.Module | None = None,
                loss: LossFn | None = None, *, device: torch.device | str | None = None,
                precision: str | None = None) -> Trainer:
        """A `Trainer` for ``model`` planned over the whole fine-tune (distilling from ``teacher`` when the
        recipe says so), minimising ``loss`` (the task's: `automl_prune.data.task.Task`) or cross-entropy, on
        ``device`` in ``precision`` (default: the run's, `automl_prune.train.device`)."""
        return Trainer(model, splits, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                       label_smoothing=self.label_smoothing, channels_last=False,
                       teacher=teacher if self.distill else None, distill_temperature=self.distill_temperature,
                       distill_weight=self.distill_weight, loss=loss, device=device, precision=precision)

    def total_steps(self, splits: Splits) -> int:
        """Optimizer steps of the whole fine-tune."""
        return self.trainer(nn.Linear(1, 1), splits, device="cpu").total_steps


class LadderJob:
    """Everything a rung runner needs, picklable (Ray puts it in the object store once).

    Args:
        run_dir: The run directory (its ``rerank/`` folder holds the candidates' states).
        model: The trained base model.
        space: Its search space.
        splits: Train (fine-tune, BN calibration) and validation (the score) splits.
        recipe: The fine-tune recipe.
        rungs: Cumulative steps per rung.
        criterion, bn_batches: How candidates are compressed and recalibrated before their first step.
        calibration, reconstruct: Data for data-driven criteria and least-squares reconstruction (as the search).
        checkpoint_every: Steps between progress saves within a rung.
        task: The fine-tune loss and the validation score when they are not cross-entropy and top-1 accuracy
            (`automl_prune.data.task.Task`; its functions must pickle, since Ray workers receive the job).
        device, precision, deterministic: Where and how candidates are fine-tuned and scored; default: the run's
            (`automl_prune.train.device.use_device`). A Ray trial sets ``device`` to its own (`worker_device`) and
            applies ``deterministic`` in its process.
            The job's tensors stay on the CPU (Ray's object store); each run moves what it needs.
    """

    def __init__(self, run_dir: str | Path, model: nn.Module, space: SearchSpace, splits: Splits,
                 recipe: FineTuneRecipe, rungs: tuple[int, ...], *, criterion: str = "l1", bn_batches: int = 10,
                 checkpoint_every: int = 100, calibration: Any = None, reconstruct: bool = False,
                 task: Task | None = None, device: torch.device | str | None = None,
                 precision: str | None = None, deterministic: bool | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.device = torch.device(device) if device is not None else current_device()
        self.precision = precision if precision is not None else current_precision()
        self.deterministic = current_deterministic() if deterministic is None else deterministic
        self.model = model
        self.space = space
        self.splits = Splits(train=splits.train, val=splits.val, test=splits.val, spec=splits.spec)
        self.recipe = recipe
        self.rungs = rungs
        self.criterion = criterion
        self.bn_batches = bn_batches
        self.checkpoint_every = max(1, checkpoint_every)
        self.calibration = calibration
        self.reconstruct = reconstruct
        self.task = task or Task()
        self._orders: dict[str, dict[str, list[int]]] = {}  # channel rankings per criterion, found once per process

    def folder(self, candidate_id: str) -> Path:
        """Where a candidate's states and results live."""
        return self.run_dir / "rerank" / candidate_id

    def state_path(self, candidate_id: str, rung: int) -> Path:
        """The `Trainer` state at the end of ``rung``."""
        return self.folder(candidate_id) / f"rung{rung}.pt"

    def done_path(self, candidate_id: str, rung: int) -> Path:
        """The result of ``rung``, written once its state is safely on disk."""
        return self.folder(candidate_id) / f"rung{rung}.json"

    def build(self, architecture: Architecture, *, regularize: bool = False, structure_only: bool = False
              ) -> nn.Module:
        """The candidate as its fine-tune starts: compressed, batch-norm statistics recalibrated.

        With ``regularize`` and a recipe that has one, the base model is first trained with the sparsity penalty
        on the channels this candidate removes (`automl_prune.prune.sparsity.regularized_start`); only rung 0 needs
        that. With ``structure_only`` the model only has the candidate's shapes (channels kept by l1, nothing
        recalibrated): for a saved state that sets every weight and buffer next (later rungs, the final model),
        where ranking channels by a data-driven criterion and re-fitting them would be thrown away.
        """
        from automl_prune.scoring.evaluator import Evaluator

        if structure_only:
            pruned = compress_widths(self.model, self.space.graph, architecture.widths, "l1")
            if architecture.bits:
                from automl_prune.quantize.fake import quantize

                pruned = quantize(pruned, architecture.bits, inplace=True)
            return pruned.to(self.device)

        model, reconstruct = self.model, self.reconstruct
        criterion: str | Criterion = self.criterion  # `regularized_start` pins the order it trained for
        if regularize and self.recipe.regularize != "none":
            from automl_prune.prune.criteria import get_criterion
            from automl_prune.prune.sparsity import regularized_start

            reconstruct = reconstruct or get_criterion(self.criterion).reconstructs
            model, criterion = regularized_start(
                self.model, self.space.graph, architecture.widths, self.criterion, self.splits,
                method=self.recipe.regularize, steps=self.recipe.regularize_steps,
                strength=self.recipe.regularize_strength, lr=self.recipe.lr, batch_size=self.recipe.batch_size,
                seed=self.recipe.seed, calibration=self.calibration, loss=self.task.loss, device=self.device)
        train = self.splits.train
        # The evaluator only builds here (compress, recalibrate); it never scores, so one validation image will do.
        evaluator = Evaluator(model, self.space, train if isinstance(train, LoaderSplit) else train.images,
                              torch.zeros(1), torch.zeros(1, dtype=torch.long), criterion=criterion,
                              bn_batches=self.bn_batches,
                              seed=self.recipe.seed, device=self.device, precision=self.precision,
                              calibration=self.calibration, reconstruct=reconstruct,
                              channel_order=self._orders.get(criterion) if isinstance(criterion, str) else None)
        built = evaluator.build(architecture)
        if isinstance(criterion, str) and evaluator.channel_order is not None:
            self._orders[criterion] = evaluator.channel_order
        return built

    def trainer_for(self, candidate: Candidate, state: dict[str, Any] | None = None) -> Trainer:
        """A `Trainer` of the candidate, continued from ``state`` when given."""
        built = self.build(candidate.architecture, regularize=state is None, structure_only=state is not None)
        trainer = self.recipe.trainer(built, self.splits,
                                      teacher=self.model, loss=self.task.loss, device=self.device,
                                      precision=self.precision)
        if state is not None:
            trainer.load_state_dict(state)
        return trainer

    def load_state(self, candidate_id: str, rung: int) -> dict[str, Any]:
        """The state saved at the end of ``rung`` (weights_only: plain tensors and numbers)."""
        return torch.load(self.state_path(candidate_id, rung), map_location="cpu", weights_only=True)

    def finished(self, candidate_id: str, rung: int) -> RungResult | None:
        """The recorded result of ``rung``, if it finished."""
        path = self.done_path(candidate_id, rung)
        if not path.exists():
            return None
        return RungResult(**json.loads(path.read_text()))

    def run_rung(
        self,
        candidate: Candidate,
        rung: int,
        *,
        progress_state: dict[str, Any] | None = None,
        save_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> RungResult:
        """Fine-tune ``candidate`` to the end of ``rung`` and measure it; a finished rung is returned as is.

        Args:
            candidate: The candidate.
            rung: Which rung.
            progress_state: A mid-rung `Trainer` state to continue from (a restored trial's checkpoint).
            save_progress: Called with the `Trainer` state every ``checkpoint_every`` steps within the rung.
        """
        done = self.finished(candidate.id, rung)
        if done is not None:
            return done
        broken = _fail_while_marker()
        if broken is not None and broken.exists():
            raise RuntimeError(f"injected failure in {candidate.id} rung {rung} (test hook)")
        start = time.perf_counter()
        if progress_state is not None:
            state = progress_state
        elif rung > 0:
            state = self.load_state(candidate.id, rung - 1)
        else:
            state = None
        trainer = self.trainer_for(candidate, state)
        if progress_state is not None:
            # Said in the run directory, so a user (and the fault tests) can see that nothing was redone.
            with (self.folder(candidate.id) / "resumed.log").open("a") as log:
                log.write(f"rung {rung} continued from step {trainer.step}\n")
        target = self.rungs[rung]
        fail_marker = _fail_once_marker()
        while trainer.step < target:
            trainer.run(until=min(target, trainer.step + self.checkpoint_every), progress=False)
            if trainer.step < target:
                if save_progress is not None:
                    save_progress(trainer.state_dict())
                if fail_marker is not None and not fail_marker.exists():
                    fail_marker.write_text(f"{candidate.id} rung {rung} step {trainer.step}\n")
                    raise RuntimeError(f"injected failure in {candidate.id} at step {trainer.step} (test hook)")
        trainer.release_data()
        model = trainer.model
        val_acc, _ = evaluate_accuracy(model, self.splits.val, batch_size=250, metric=self.task.metric,
                                       precision=self.precision)
        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)
        atomic_write(self.state_path(candidate.id, rung), buffer.getvalue())
        result = RungResult(candidate.id, rung, trainer.step, val_acc, time.perf_counter() - start)
        atomic_write_text(self.done_path(candidate.id, rung), json.dumps(result.to_dict()))
        return result

    def final_model(self, candidate: Candidate, rung: int) -> nn.Module:
        """The candidate's model at the end of ``rung`` (for the top rung: fine-tuned), in eval mode on CPU."""
        trainer = self.trainer_for(candidate, self.load_state(candidate.id, rung))
        return trainer.model.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # torch's stub lacks to(device, memory_format=)


def _fail_once_marker() -> Path | None:
    import os

    value = os.environ.get(FAIL_ONCE_ENV)
    return Path(value) if value else None


def _fail_while_marker() -> Path | None:
    import os

    value = os.environ.get(FAIL_WHILE_ENV)
    return Path(value) if value else None


def local_executor(job: LadderJob) -> RungExecutor:
    """Run a rung's candidates one after another in this process (``workers=0``); same files as Ray's."""

    def execute(rung: int, todo: Sequence[Candidate]) -> Iterator[RungResult]:
        for candidate in todo:
            partial = job.folder(candidate.id) / f"rung{rung}.partial.pt"
            state = torch.load(partial, map_location="cpu", weights_only=True) if partial.exists() else None

            def save(progress: dict[str, Any], partial: Path = partial) -> None:
                buffer = io.BytesIO()
                torch.save(progress, buffer)
                atomic_write(partial, buffer.getvalue())

            result = job.run_rung(candidate, rung, progress_state=state, save_progress=save)
            partial.unlink(missing_ok=True)
            yield result

    return execute
