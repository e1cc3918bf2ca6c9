"""Candidate evaluation in parallel Ray actors: the search's proxy scores, ``workers`` at a time.

Ray actors, not Tune trials: an evaluation takes well under a second (vgg-small's adaptive-BN proxy ~0.3-1 s
here), while a Tune trial costs seconds to schedule and start; an actor is started once and then answers
calls with a few milliseconds of overhead. The base model and the data go into Ray's object store once
(``ray.put``) and every actor builds its own `automl_prune.scoring.evaluator.Evaluator` from them with one torch
thread. Evaluations are deterministic per architecture (each is seeded by the evaluator), so which actor
scores a candidate does not change its score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from automl_prune.scoring.evaluator import Evaluator, Metrics
from search_spaces import Architecture

__all__ = ["RayEvaluatorPool"]


class _EvaluatorActor:
    """One worker: an `Evaluator` with one torch thread."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        from automl_prune.train.runtime import configure_torch

        configure_torch(1)
        model, space = kwargs.pop("model"), kwargs.pop("space")
        train, val_images, val_labels = kwargs.pop("train_images"), kwargs.pop("val_images"), kwargs.pop("val_labels")
        self.evaluator = Evaluator(model, space, train, val_images, val_labels, device="cpu", **kwargs)

    def evaluate(self, architecture: dict[str, Any]) -> dict[str, Any]:
        return self.evaluator.evaluate(Architecture.from_dict(architecture)).to_dict()


class RayEvaluatorPool:
    """The interface of `Evaluator`, with `evaluate_many` spread over ``workers`` Ray actors.

    Attribute reads other than the evaluation methods (``model``, ``train_images``, ``build``, ...) go to a
    local `Evaluator`, so searchers that train on the base model (DMCP) work unchanged.

    Args:
        local: The evaluator of this process (its settings are copied into every actor).
        workers: Actors to start (one CPU each). Ray must be initialised.
    """

    def __init__(self, local: Evaluator, workers: int, init_kwargs: dict[str, Any]) -> None:
        import ray

        self.local = local
        self.workers = max(1, workers)
        shared = ray.put(init_kwargs)
        actor = ray.remote(num_cpus=1)(_EvaluatorActor)
        # Actor handles: Ray resolves their methods (``.evaluate.remote``) at run time; its stubs type them only
        # for ``@ray.method``-decorated methods, which would need ray imported with this module.
        self._actors: list[Any] = [actor.remote(shared) for _ in range(self.workers)]
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

    def close(self) -> None:
        """Stop the actors."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)
