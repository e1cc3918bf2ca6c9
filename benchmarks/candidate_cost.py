"""What one candidate evaluation costs against the forward passes it needs (issue 26).

A candidate's score needs its forward passes: the batch-norm recalibration batches and the scored validation
images, on the pruned model. Everything else (copying, pruning, ranking channels) is set-up. For each model this
script evaluates a few random architectures at the search's proxy (adaptive BN) and times, side by side:

- ``candidate s``: `Evaluator.evaluate` end to end (the architecture not cached);
- ``forward s``: the same pruned model's forward passes alone (recalibration + scoring), timed after it is built;
- ``ratio``: candidate / forward (the target is <= 1.5).

``--val-sources`` scores the same validation images from memory (tensors), from a ``DataLoader`` whose scored
batches the evaluator keeps after the first read (``loader``), and from a ``DataLoader`` read anew for every
score (``loader-streamed``: the in-memory limit set to 0), all in one run.

Models: ``vgg-small`` on Fashion-MNIST (10 recalibration batches of 128, 1,000 scored images, as the pipeline),
and torchvision's ``resnet50`` at 64 px, random init, 256 training and 128 scored generated images. Mean and
sample std over the candidates; ``--profile`` prints the top functions of one candidate (cProfile).

    .venv/bin/python benchmarks/candidate_cost.py --candidates 5 --threads 1 --out runs/bench/candidate_cost
    .venv/bin/python benchmarks/candidate_cost.py --criteria l1 --val-sources memory loader loader-streamed
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.prune.calibration import Calibration
from automl_prune.scoring.evaluator import Evaluator, accuracy_and_loss, recalibrate_batch_norm
from search_spaces import SearchSpace

FMNIST = "/usr/share/datasets/fashion-mnist"


def _setup(name: str, criterion: str, val_source: str = "memory") -> tuple[Evaluator, SearchSpace, dict[str, Any]]:
    torch.manual_seed(0)
    if name == "vgg-small":
        splits = load_dataset("fashion-mnist", FMNIST)
        model = build_model("vgg-small", 1, 10, 28).eval()
        train_images, val_images, val_labels = splits.train.images, splits.val.images[:1000], splits.val.labels[:1000]
        example = val_images[:1]
        shape = {"scored": 1000, "bn": "10 x 128"}
    else:
        model = build_model("torchvision:resnet50", 3, 10, 64).eval()
        train_images = torch.randn(256, 3, 64, 64)
        val_images, val_labels = torch.randn(128, 3, 64, 64), torch.randint(0, 10, (128,))
        example = val_images[:1]
        shape = {"scored": 128, "bn": "2 x 128"}
    space = SearchSpace.from_model(model, example)
    # As the pipeline: data-driven criteria read a seeded subset of the training images (512 by default).
    calibration = Calibration.from_split(train_images, None, samples=512)
    shape.update(val_images=val_images, val_labels=val_labels, val_source=val_source)
    val: Any = val_images
    if val_source != "memory":
        from torch.utils.data import DataLoader, TensorDataset

        from automl_prune.data.loader_split import LoaderSplit

        val = LoaderSplit(DataLoader(TensorDataset(val_images, val_labels), batch_size=250), "val")
        val_labels = None
    evaluator = Evaluator(model, space, train_images, val, val_labels, criterion=criterion,
                          bn_batches=10 if name == "vgg-small" else 2, bn_batch_size=128, device="cpu",
                          calibration=calibration)
    return evaluator, space, shape


def _forward_seconds(evaluator: Evaluator, pruned: torch.nn.Module, images: torch.Tensor,
                     labels: torch.Tensor) -> float:
    """The candidate's own forward passes: recalibration then scoring (of the validation tensors in memory), on a
    fresh copy of the pruned model."""
    model = copy.deepcopy(pruned)
    start = time.perf_counter()
    recalibrate_batch_norm(model, evaluator._calibration)
    accuracy_and_loss(model, images, labels, evaluator.eval_batch_size)
    return time.perf_counter() - start


def measure(name: str, criterion: str, candidates: int, seed: int, profile: bool,
            val_source: str = "memory") -> dict[str, Any]:
    import os

    if val_source == "loader-streamed":
        os.environ["AUTOML_PRUNE_STREAM_LIMIT_MB"] = "0"  # nothing is kept: every score reads the loader again
    else:
        os.environ.pop("AUTOML_PRUNE_STREAM_LIMIT_MB", None)
    evaluator, space, shape = _setup(name, criterion, val_source)
    images_labels = (shape.pop("val_images"), shape.pop("val_labels"))
    evaluator.evaluate(space.full())  # warm-up: channel ranking and caches a search pays once
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(candidates):
        arch = space.sample(rng)
        profiler = cProfile.Profile() if profile and index == 0 else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        evaluator.evaluate(arch)
        if profiler is not None:
            profiler.disable()
        candidate = time.perf_counter() - start
        forward = _forward_seconds(evaluator, evaluator.build(arch), *images_labels)
        rows.append((candidate, forward))
        print(f"{name} {criterion} candidate {index + 1}/{candidates}: {candidate:.2f} s, "
              f"forward passes {forward:.2f} s, "
              f"ratio {candidate / forward:.2f}", file=sys.stderr, flush=True)
        if profiler is not None:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(18)
    cand = [c for c, _ in rows]
    fwd = [f for _, f in rows]
    ratios = [c / f for c, f in rows]
    images = shape["scored"] + (10 if name == "vgg-small" else 2) * 128

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    return {"model": name, "criterion": criterion, **shape, "candidates": candidates,
            "candidate_s": statistics.mean(cand),
            "candidate_sd": spread(cand), "forward_s": statistics.mean(fwd), "forward_sd": spread(fwd),
            "ratio": statistics.mean(ratios), "ratio_sd": spread(ratios),
            "candidate_images_per_s": images / statistics.mean(cand),
            "forward_images_per_s": images / statistics.mean(fwd)}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | criterion | validation from | scored images | BN batches | candidates | candidate s | "
            "forward s | ratio | images/s (candidate / forward) |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {r['criterion']} | {r['val_source']} | {r['scored']} | {r['bn']} | "
                     f"{r['candidates']} | "
                     f"{r['candidate_s']:.2f} ± {r['candidate_sd']:.2f} | "
                     f"{r['forward_s']:.2f} ± {r['forward_sd']:.2f} | "
                     f"{r['ratio']:.2f} ± {r['ratio_sd']:.2f} | {r['candidate_images_per_s']:.0f} / "
                     f"{r['forward_images_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg-small", "resnet50"], choices=["vgg-small", "resnet50"])
    parser.add_argument("--criteria", nargs="+", default=["l1", "reap"], help="reap: the pipeline's default")
    parser.add_argument("--val-sources", nargs="+", default=["memory"],
                        choices=["memory", "loader", "loader-streamed"])
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default="runs/bench/candidate_cost")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [measure(name, criterion, args.candidates, args.seed, args.profile, source)
            for name in args.models for criterion in args.criteria for source in args.val_sources]
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
