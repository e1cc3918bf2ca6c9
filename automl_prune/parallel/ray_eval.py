"""Candidate evaluation in parallel Ray actors: the search's proxy scores, ``workers`` at a time.

Ray actors, not Tune trials: an evaluation takes well under a second (vgg-small's adaptive-BN proxy ~0.3-1 s
here), while a Tune trial costs seconds to schedule and start; an actor is started once and then answers
calls with a few milliseconds of overhead. The base model and the data go into Ray's object store once
(``ray.put``) and every actor builds its own `automl_prune.scoring.evaluator.Evaluator` from them with one torch
thread. Evaluations are deterministic per architecture (each is seeded by the evaluator), so which actor
scores a candidate does not change its score.

GPUs: each actor asks Ray for ``gpus_per_worker`` of a GPU (fractions share one). What goes into the object store
is on the CPU; each actor decides its own device (`automl_prune.train.device.worker_device`: the GPU Ray assigned,
which ``CUDA_VISIBLE_DEVICES`` makes ``cuda`` there; the CPU without a share) and moves what it needs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from automl_prune.scoring.evaluator import Evaluator, Metrics
from search_spaces import Architecture

__all__ = ["RayEvaluatorPool", "on_cpu"]


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor and module in it (in dicts, lists, tuples) on the CPU: what may go into Ray's
    object store. Modules on another device are copied, never moved (they may be the caller's)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, nn.Module):
        on_gpu = any(t.device.type != "cpu" for t in (*value.parameters(), *value.buffers()))
        if not on_gpu:
            return value
        import copy

        return copy.deepcopy(value).to("cpu")
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


class _EvaluatorActor:
    """One worker: an `Evaluator` with one torch thread, on the GPU Ray assigned it or on the CPU."""

    def __init__(self, kwargs: dict[str, Any], deterministic: bool = False) -> None:
        import ray

        from automl_prune.train.device import deterministic_run, worker_device
        from automl_prune.train.runtime import configure_torch

        configure_torch(1)
        # This process is the actor's alone: the setting holds until the actor is killed.
        self._settings = contextlib.ExitStack()
        self._settings.enter_context(deterministic_run(deterministic))
        self.decision = worker_device(ray.get_gpu_ids())
        kwargs = dict(kwargs)
        kwargs.pop("device", None)  # the driver's device; this worker has its own
        model, space = kwargs.pop("model"), kwargs.pop("space")
        train, val_images, val_labels = kwargs.pop("train_images"), kwargs.pop("val_images"), kwargs.pop("val_labels")
        self.evaluator = Evaluator(model, space, train, val_images, val_labels, device=self.decision.device, **kwargs)

    def evaluate(self, architecture: dict[str, Any]) -> dict[str, Any]:
        return self.evaluator.evaluate(Architecture.from_dict(architecture)).to_dict()

    def placement(self) -> dict[str, Any]:
        """Where this worker runs: Ray's GPU ids, ``CUDA_VISIBLE_DEVICES``, its device and why."""
        import ray

        return {"gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device": str(self.decision.device), "reason": self.decision.reason, "pid": os.getpid(),
                "deterministic": torch.are_deterministic_algorithms_enabled()}


class RayEvaluatorPool:
    """The interface of `Evaluator`, with `evaluate_many` spread over ``workers`` Ray actors.

    Attribute reads other than the evaluation methods (``model``, ``train_images``, ``build``, ...) go to a
    local `Evaluator`, so searchers that train on the base model (DMCP) work unchanged.

    Args:
        local: The evaluator of this process (its settings are copied into every actor).
        workers: Actors to start (one CPU each). Ray must be initialised.
        init_kwargs: The `Evaluator`'s arguments (put in the object store, on the CPU).
        gpus_per_worker: Each actor's share of a GPU (fractions allowed; 0: CPU actors).
        deterministic: Deterministic algorithms in every actor (`automl_prune.train.device.deterministic_run`).
    """

    def __init__(self, local: Evaluator, workers: int, init_kwargs: dict[str, Any], *,
                 gpus_per_worker: float = 0.0, deterministic: bool = False) -> None:
        import ray

        self.local = local
        self.workers = max(1, workers)
        self.gpus_per_worker = float(gpus_per_worker)
        shared = ray.put(on_cpu(init_kwargs))
        actor = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker)(_EvaluatorActor)
        # Actor handles: Ray resolves their methods (``.evaluate.remote``) at run time; its stubs type them only
        # for ``@ray.method``-decorated methods, which would need ray imported with this module.
        self._actors: list[Any] = [actor.remote(shared, deterministic) for _ in range(self.workers)]
        self._cache: dict[str, Metrics] = {}
        self.evaluations = 0

    @property
    def parallelism(self) -> int:
        """How many candidates are worth proposing at once."""
        return self.workers

    def evaluate(self, architecture: Architecture) -> Metrics:
        """One evaluation (on a worker)."""
        return self.evaluate_many([architecture])[0]

    def evaluate_many(self, architectures: Sequence[Architecture]) -> list[Metrics]:
        """Metrics of every architecture, in order; distinct new ones are scored side by side."""
        import ray

        todo: dict[str, Architecture] = {}
        for arch in architectures:
            if arch.key() not in self._cache:
                todo.setdefault(arch.key(), arch)
        keys = list(todo)
        futures = [self._actors[i % self.workers].evaluate.remote(todo[key].to_dict()) for i, key in enumerate(keys)]
        for key, result in zip(keys, ray.get(futures), strict=True):
            self._cache[key] = Metrics(**result)
            self.evaluations += 1
        return [self._cache[arch.key()] for arch in architectures]

    def placements(self) -> list[dict[str, Any]]:
        """Each actor's `_EvaluatorActor.placement` (its GPU, device and why), in actor order."""
        import ray

        return list(ray.get([actor.placement.remote() for actor in self._actors]))

    def close(self) -> None:
        """Stop the actors."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)
