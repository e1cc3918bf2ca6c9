"""Training throughput (images/s, NCHW vs channels_last) and short-run accuracy of the zoo on Fashion-MNIST.

Usage::

    .venv/bin/python benchmarks/train_speed.py                       # throughput + 1/2-epoch accuracy
    .venv/bin/python benchmarks/train_speed.py --models vgg-small --epochs 1 2 3
    .venv/bin/python benchmarks/train_speed.py --subset 10000        # accuracy on fewer training images

Prints a table; numbers depend on the machine (see ``torch.get_num_threads()`` in the header).
"""

from __future__ import annotations

import argparse
import os
import time

# With 2 cores shared with other processes, OpenMP's spinning barriers make elementwise ops ~40x slower
# (measured: BatchNorm 26 ms vs 3 ms on a 128x16x28x28 batch); passive waiting avoids it. Must precede torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from automl_prune.data.datasets import iterate_batches, load_dataset
from automl_prune.models import build_model
from automl_prune.train.training import evaluate_accuracy, train

ZOO = ["tiny-cnn", "tiny-resnet", "vgg-small", "mobilenetv2-small", "resnet20", "resnet56"]


def throughput(name: str, splits: object, *, channels_last: bool, batch_size: int, steps: int) -> float:
    """Images/s of SGD training steps, after two warm-up steps."""
    model = build_model(name, splits.spec.in_channels, splits.spec.num_classes, splits.spec.input_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = iterate_batches(splits.train, batch_size, shuffle=True, seed=0, drop_last=True)
    start, images = 0.0, 0
    for i, (x, y) in enumerate(batches):
        if i == 2:
            start, images = time.perf_counter(), 0
        if i == steps + 2:
            break
        loss = loss_fn(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        images += len(y)
    return images / (time.perf_counter() - start)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=ZOO)
    parser.add_argument("--epochs", nargs="*", type=float, default=[1.0, 2.0])
    parser.add_argument("--subset", type=int, default=None, help="training images for the accuracy runs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput measurement")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    splits = load_dataset("fashion-mnist", args.data_root, subset=args.subset)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load avg {os.getloadavg()[0]:.1f}; "
        f"fashion-mnist train={len(splits.train)} "
        f"val={len(splits.val)} test={len(splits.test)}; batch {args.batch_size}, lr {args.lr}"
    )
    header = f"{'model':<18} {'params':>8} {'img/s NCHW':>10} {'img/s CL':>9}"
    for epochs in args.epochs:
        header += f" | {f'e={epochs:g} s':>8} {'val':>6} {'test':>6}"
    print(header, flush=True)
    for name in args.models:
        model = build_model(name, 1, 10, 28)
        params = sum(p.numel() for p in model.parameters())
        row = f"{name:<18} {params:>8}"
        if args.no_throughput:
            row += f" {'-':>10} {'-':>9}"
        else:
            for cl in (False, True):
                ips = throughput(name, splits, channels_last=cl, batch_size=args.batch_size, steps=args.steps)
                row += f" {ips:>{10 if not cl else 9}.0f}"
        for epochs in args.epochs:
            torch.manual_seed(0)
            model = build_model(name, 1, 10, 28)
            stats = train(model, splits, epochs=epochs, lr=args.lr, batch_size=args.batch_size, seed=0, progress=False)
            val_acc, _ = evaluate_accuracy(model, splits.val)
            test_acc, _ = evaluate_accuracy(model, splits.test)
            row += f" | {stats['seconds']:>8.0f} {val_acc:>6.3f} {test_acc:>6.3f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
