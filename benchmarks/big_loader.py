"""Peak memory of a search whose training loader is far larger than this machine's memory (issue 26).

The training data are 2,000,000 RGB 64 x 64 images made in ``__getitem__`` (decoded size 2,000,000 x 3 x 64 x 64 x 4
bytes = 98 GB, four times this machine's 24 GB); the validation loader holds 256. The model is torchvision's
``resnet18`` (random init, 10 classes). Each setting runs ``automl_prune.search`` in a child process while this
one samples, every 0.2 s, the resident memory summed over the child and all its descendants (Ray's own
processes and workers included; shared pages count once per process, so the sum overstates). Reported: the
peak, the wall time, and how many training items the search read (counted in the driver with ``workers=0``).

    .venv/bin/python benchmarks/big_loader.py --out benchmarks/results/big_loader

Settings: ``agent random``, 4 evaluations, ``criterion l1`` (the data-driven default ranks channels on 512
calibration images: same memory, more time), 10 batch-norm batches of 128, a ladder of 2 candidates over
3 rungs up to 16 fine-tune steps of 64 images, no test split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

TRAIN_ITEMS = 2_000_000
STEPS = 16
BATCH = 64


class Generated(Dataset):
    """``n`` normalized 3 x 64 x 64 images made from their index; the label is the brightest of 10 bands."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.calls = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.calls += 1
        generator = torch.Generator().manual_seed(self.seed * 10_000_019 + index)
        label = index % 10
        image = torch.randn(3, 64, 64, generator=generator)
        image[:, :, label * 6:label * 6 + 6] += 1.0
        return image, label


def run_search(workers: int, out: Path) -> dict[str, Any]:
    """One search (in this process), returning what it read and measured."""
    import torchvision

    import automl_prune

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    train_set, val_set = Generated(TRAIN_ITEMS, 0), Generated(256, 1)
    train = DataLoader(train_set, batch_size=BATCH, shuffle=True)
    val = DataLoader(val_set, batch_size=BATCH)
    steps_per_epoch = TRAIN_ITEMS // BATCH
    start = time.perf_counter()
    result = automl_prune.search(model, train, val, flops=0.5, agent="random", episodes=4, workers=workers,
                                 out=out, criterion="l1", rerank_top_k=1, finetune_epochs=STEPS / steps_per_epoch,
                                 progress=False)
    run_bytes = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    return {"workers": workers, "seconds": time.perf_counter() - start,
            "evaluations": result.metrics["evaluations"],
            "train_items_read_in_driver": train_set.calls, "val_items_read_in_driver": val_set.calls,
            "run_dir_mb": run_bytes / 2**20, "val_acc_after_finetune": result.metrics["compressed"][
                "val_acc_after_finetune"]}


def _tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def measure(workers: int, out: Path) -> dict[str, Any]:
    """Run `run_search` in a child process, sampling its process tree's memory until it ends."""
    result_file = out / f"workers{workers}.json"
    command = [sys.executable, __file__, "--child", str(workers), "--out", str(out)]
    child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    peak, samples = 0, 0
    while child.poll() is None:
        peak = max(peak, _tree_rss_bytes(child.pid))
        samples += 1
        time.sleep(0.2)
    if child.returncode != 0:
        raise SystemExit(f"the search with workers={workers} failed (exit {child.returncode})")
    record = json.loads(result_file.read_text())
    record.update({"peak_rss_gb": peak / 2**30, "memory_samples": samples})
    result_file.write_text(json.dumps(record, indent=2))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/big_loader"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        record = run_search(args.child, args.out / f"run_workers{args.child}")
        (args.out / f"workers{args.child}.json").write_text(json.dumps(record, indent=2))
        return
    rows = []
    print(f"train: {TRAIN_ITEMS:,} images of 3x64x64 ({TRAIN_ITEMS * 3 * 64 * 64 * 4 / 1e9:.0f} GB decoded)",
          flush=True)
    for workers in args.workers:
        record = measure(workers, args.out)
        rows.append(record)
        print(f"workers={workers}: peak {record['peak_rss_gb']:.2f} GB, {record['seconds']:.0f} s, "
              f"{record['train_items_read_in_driver']:,} training items read in the driver", flush=True)
    lines = ["| workers | peak RSS, process tree (GB) | wall (s) | evaluations | training items read (driver) | "
             "run directory (MB) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['peak_rss_gb']:.2f} | {r['seconds']:.0f} | {r['evaluations']} | "
              f"{r['train_items_read_in_driver']:,} | {r['run_dir_mb']:.1f} |" for r in rows]
    (args.out / "big_loader.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
