"""Ray workers on GPUs, tested on a CPU machine with logical GPUs: Ray's resources are bookkeeping, so
``ray.init(num_gpus=2)`` schedules GPU-requesting actors and trials and sets their ``CUDA_VISIBLE_DEVICES``.
Without a kernel that runs, each worker falls back to the CPU (`automl_prune.train.device.worker_device`), so
the work itself still runs here. Every Ray file goes inside the run directory (`ray_session`)."""

from __future__ import annotations

import json

import pytest
import torch

from automl_prune.parallel.ray_eval import RayEvaluatorPool, on_cpu
from automl_prune.parallel.ray_session import ray_session
from automl_prune.parallel.tune_ladder import TuneLadderExecutor
from automl_prune.scoring.evaluator import Evaluator
from automl_prune.scoring.ladder import Candidate, Ladder
from automl_prune.scoring.rung_job import FineTuneRecipe, LadderJob
from automl_prune.train import device as dev
from tests.helpers import trained

pytestmark = pytest.mark.skipif(dev.resolve_device("auto").device.type == "cuda",
                                reason="logical GPUs stand in for real ones only where no GPU works")


def _kwargs() -> dict[str, object]:
    model, splits, space = trained()
    return {"model": model, "space": space, "train_images": splits.train.images, "val_images": splits.val.images,
            "val_labels": splits.val.labels, "bn_batches": 2, "bn_batch_size": 32, "seed": 0, "device": "cpu",
            "precision": "auto"}


def test_only_cpu_tensors_go_to_the_object_store() -> None:
    model = torch.nn.Linear(2, 2)
    packed = on_cpu({"model": model, "x": torch.zeros(2), "rest": [torch.ones(1), (3, "a")]})
    assert packed["model"] is model  # on the CPU already: not copied
    assert packed["rest"][1] == (3, "a")


def test_gpu_shares_are_requested_placed_and_counted(tmp_path) -> None:
    import ray

    kwargs = _kwargs()
    model, splits, space = trained()
    local = Evaluator(**kwargs)  # type: ignore[arg-type]
    archs = [space.from_ratios(0.4), space.from_ratios(0.7)]
    run = tmp_path / "r"
    with ray_session(run, 2, gpus=2, log=False):
        assert ray.cluster_resources().get("GPU") == 2
        pool = RayEvaluatorPool(local, 2, kwargs, gpus_per_worker=1, deterministic=True)
        try:
            places = pool.placements()
            assert sorted(p["gpu_ids"][0] for p in places) == ["0", "1"]  # one GPU each, not the same one
            assert sorted(p["cuda_visible_devices"] for p in places) == ["0", "1"]
            assert all(p["device"] == "cpu" and "no usable GPU" in p["reason"] for p in places)
            assert all(p["deterministic"] for p in places)  # the run's setting holds in its workers
            remote = pool.evaluate_many(archs)
            here = [local.evaluate(a) for a in archs]
            assert [(m.accuracy, m.loss) for m in remote] == [(m.accuracy, m.loss) for m in here]
        finally:
            pool.close()

        # Tune trials: half a GPU each, so both trials of a rung share the two logical GPUs as Ray decides.
        job = LadderJob(run, model, space, splits, FineTuneRecipe(epochs=0.5), (2, 4), bn_batches=2,
                        device="cpu", precision="auto")
        candidates = [Candidate("c0", archs[0], "search #0", 0.5, space.flops(archs[0])),
                      Candidate("c1", archs[1], "uniform", 0.4, space.flops(archs[1]))]
        executor = TuneLadderExecutor(job, 2, gpus_per_worker=0.5, verbose=False)
        assert executor.resources == {"cpu": 1, "gpu": 0.5}
        winner = executor.run(Ladder(run / "ladder.json", candidates, (2, 4), eta=2))
        assert winner.id in ("c0", "c1")
    reports = [json.loads(line) for path in (run / "tune" / "rerank").glob("*/result.json")
               for line in path.read_text().splitlines() if line.strip()]
    done = [r for r in reports if r.get("done")]
    assert len(done) in (3, 4)  # both in rung 0; uniform and, if it led, c0 in rung 1
    assert all(r["gpu_ids"] in ("0", "1") and r["cuda_visible_devices"] == r["gpu_ids"] for r in done)
    assert all(r["device"] == "cpu" for r in done)
    assert TuneLadderExecutor(job, 2, gpus_per_worker=0, verbose=False).resources == {"cpu": 1}
    with dev.use_device(dev.resolve_device("cpu"), gpus_per_worker=0.25, deterministic=True):  # the run's
        assert TuneLadderExecutor(job, 2, verbose=False).gpus_per_worker == 0.25
        assert LadderJob(run, model, space, splits, FineTuneRecipe(), (2,)).deterministic is True
    assert job.deterministic is False


def test_cuda_n_gives_ray_that_gpu_only(tmp_path) -> None:
    """``--device cuda:1``: Ray's processes see GPU 1 only, so a worker with a GPU is given GPU 1."""
    import ray

    run = tmp_path / "r"
    with ray_session(run, 1, gpus=1, visible_gpus="1", log=False):
        assert ray.cluster_resources().get("GPU") == 1

        @ray.remote(num_cpus=1, num_gpus=1)
        def where() -> tuple[list[str], str | None]:
            import os

            return [str(i) for i in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")

        ids, visible = ray.get(where.remote())
        assert ids == ["1"] and visible == "1"
