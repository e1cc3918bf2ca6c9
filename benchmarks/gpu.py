"""GPU throughput of the pipeline: its trainer against a plain PyTorch AMP loop, and its candidate evaluations
against one forward pass over the scored split, with peak GPU memory.

For a machine with a CUDA GPU (run it there; it measures nothing elsewhere)::

    .venv/bin/python benchmarks/gpu.py                                   # vgg-small, resnet20, torchvision resnet18
    .venv/bin/python benchmarks/gpu.py --models resnet20 --steps 100 --precision bf16

Per model (random data of the model's input shape: 3x32x32 for the zoo, 3x64x64 for torchvision resnet18):

- fine-tune images/s of `automl_prune.train.training.Trainer` (the re-ranking and final fine-tunes) and of a
  plain loop on a copy of the same model (SGD + Nesterov, ``torch.autocast`` in the same precision, a
  ``GradScaler`` for fp16, batches copied from pinned memory), both after warm-up steps, timed with synchronize;
- candidate evaluations/s of `automl_prune.scoring.evaluator.Evaluator` (compress + adaptive BN + score on the
  validation split, the search's proxy) next to forward passes/s of the full model over that split (the floor
  an evaluation cannot beat);
- peak GPU memory of each phase (``torch.cuda.max_memory_allocated``).

Prints a table and writes the results, with the GPU's name, as JSON (``--out``). Without a working CUDA GPU it
prints why and exits with status 1, writing nothing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

MODELS = {"vgg-small": 32, "resnet20": 32, "torchvision:resnet18": 64}


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def _data(size: int, n_train: int, n_val: int, seed: int = 0) -> tuple[Any, Any]:
    import torch

    from automl_prune.data.datasets import Split

    generator = torch.Generator().manual_seed(seed)
    train = Split(torch.randn(n_train, 3, size, size, generator=generator),
                  torch.randint(0, 10, (n_train,), generator=generator))
    val = Split(torch.randn(n_val, 3, size, size, generator=generator),
                torch.randint(0, 10, (n_val,), generator=generator))
    return train, val


def trainer_images_per_second(model: Any, train: Any, *, batch_size: int, warmup: int, steps: int,
                              precision: str) -> tuple[float, int]:
    """The pipeline's `Trainer`: images/s over ``steps`` steps after ``warmup``, and peak memory (bytes)."""
    import torch

    from automl_prune.train.training import Trainer

    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model, train, epochs=1, max_steps=warmup + steps, batch_size=batch_size, lr=0.01,
                      device="cuda", precision=precision)
    trainer.run(until=warmup, progress=False)
    _sync()
    start = time.perf_counter()
    trainer.run(progress=False)
    _sync()
    return steps * batch_size / (time.perf_counter() - start), torch.cuda.max_memory_allocated()


def plain_amp_images_per_second(model: Any, train: Any, *, batch_size: int, warmup: int, steps: int,
                                precision: str) -> tuple[float, int]:
    """A plain AMP loop on ``model``: images/s over ``steps`` steps after ``warmup``, and peak memory (bytes)."""
    import torch

    from automl_prune.train.device import resolve_precision

    torch.cuda.reset_peak_memory_stats()
    amp = resolve_precision(precision, "cuda")
    model = model.cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scaler = amp.scaler()
    loss_fn = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    per_epoch = len(train) // batch_size
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync()
            start = time.perf_counter()
        index = order[(step % per_epoch) * batch_size:(step % per_epoch + 1) * batch_size]
        x = train.images[index].pin_memory().cuda(non_blocking=True)
        y = train.labels[index].pin_memory().cuda(non_blocking=True)
        with amp.autocast():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    _sync()
    return steps * batch_size / (time.perf_counter() - start), torch.cuda.max_memory_allocated()


def evaluations_per_second(model: Any, train: Any, val: Any, *, evaluations: int, precision: str,
                           seed: int = 0) -> dict[str, float]:
    """Candidate evaluations/s of the search's `Evaluator`, forward passes/s of the full model over the same
    split, and peak memory (bytes) of the evaluations."""
    import numpy as np
    import torch

    from automl_prune.scoring.evaluator import Evaluator, accuracy_and_loss
    from automl_prune.train.device import resolve_precision
    from search_spaces import SearchSpace

    space = SearchSpace.from_model(copy.deepcopy(model).eval(), val.images[:1])
    torch.cuda.reset_peak_memory_stats()
    evaluator = Evaluator(model, space, train.images, val.images, val.labels, criterion="l1", device="cuda",
                          precision=precision, eval_batch_size=250, seed=seed)
    rng = np.random.default_rng(seed)
    archs = [space.from_ratios({d.name: float(rng.uniform(0.3, 1.0)) for d in space.decisions})
             for _ in range(evaluations + 1)]
    evaluator.evaluate(archs[0])  # warm-up (channel ranking, first kernels)
    _sync()
    start = time.perf_counter()
    for arch in archs[1:]:
        evaluator.evaluate(arch)
    _sync()
    per_second = evaluations / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated()
    full = copy.deepcopy(model).cuda().eval()
    amp = resolve_precision(precision, "cuda")
    images, labels = val.images.cuda(), val.labels.cuda()
    accuracy_and_loss(full, images, labels, 250, precision=amp)
    _sync()
    passes, start = 0, time.perf_counter()
    while passes < 5 or time.perf_counter() - start < 1.0:
        accuracy_and_loss(full, images, labels, 250, precision=amp)
        passes += 1
    _sync()
    return {"evaluations_per_second": per_second, "val_forward_passes_per_second": passes /
            (time.perf_counter() - start), "evaluation_peak_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON; 1 (and a message) without a working CUDA GPU."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--evaluations", type=int, default=10)
    parser.add_argument("--train-images", type=int, default=4096)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (both loops use it)")
    parser.add_argument("--out", default=None, help="results JSON (default runs/benchmarks/gpu_<date>.json)")
    args = parser.parse_args(argv)

    from automl_prune.train.device import resolve_device, resolve_precision

    decision = resolve_device("auto")
    if decision.device.type != "cuda":
        print(f"benchmarks/gpu.py measures a CUDA GPU and this machine has none that works ({decision.reason}); "
              "nothing was measured or written", file=sys.stderr)
        return 1
    import torch

    from automl_prune.models import build_model
    from automl_prune.report.summary import format_table

    precision = resolve_precision(args.precision, "cuda").name
    name = torch.cuda.get_device_name()
    print(f"{name} ({decision.reason}); torch {torch.__version__}; precision {precision}", flush=True)
    rows: list[dict[str, Any]] = []
    for model_name in args.models:
        size = MODELS[model_name]
        train, val = _data(size, args.train_images, args.val_images)
        torch.manual_seed(0)
        model = build_model(model_name, 3, 10, size)
        ours, ours_peak = trainer_images_per_second(copy.deepcopy(model), train, batch_size=args.batch_size,
                                                    warmup=args.warmup, steps=args.steps, precision=precision)
        plain, plain_peak = plain_amp_images_per_second(copy.deepcopy(model), train, batch_size=args.batch_size,
                                                        warmup=args.warmup, steps=args.steps, precision=precision)
        evals = evaluations_per_second(model, train, val, evaluations=args.evaluations, precision=precision)
        rows.append({"model": model_name, "input_size": size, "trainer_images_per_second": ours,
                     "plain_amp_images_per_second": plain, "trainer_peak_bytes": ours_peak,
                     "plain_amp_peak_bytes": plain_peak, **evals})
        torch.cuda.empty_cache()
    mib = 2.0**20
    print(format_table(
        ["model", "Trainer img/s", "plain AMP img/s", "ratio", "peak MiB (T/plain)", "evals/s", "val passes/s",
         "eval peak MiB"],
        [[r["model"], f"{r['trainer_images_per_second']:,.0f}", f"{r['plain_amp_images_per_second']:,.0f}",
          f"{r['trainer_images_per_second'] / r['plain_amp_images_per_second']:.2f}",
          f"{r['trainer_peak_bytes'] / mib:,.0f} / {r['plain_amp_peak_bytes'] / mib:,.0f}",
          f"{r['evaluations_per_second']:.2f}", f"{r['val_forward_passes_per_second']:.1f}",
          f"{r['evaluation_peak_bytes'] / mib:,.0f}"] for r in rows]))
    today = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else Path("runs") / "benchmarks" / f"gpu_{today}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    major, minor = torch.cuda.get_device_capability()
    out.write_text(json.dumps({"gpu": name, "compute_capability": f"{major}.{minor}", "torch": torch.__version__,
                               "cuda": torch.version.cuda, "date": today, "precision": precision,
                               "batch_size": args.batch_size, "warmup_steps": args.warmup, "steps": args.steps,
                               "train_images": args.train_images, "val_images": args.val_images, "rows": rows},
                              indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
