"""Int8 vs float latency on the CPU: vgg-small and resnet20 at full and at a uniform 50% width.

For each model and width: float PyTorch, float ONNX Runtime and int8 ONNX Runtime (`automl_prune.quantize.int8`: static
QDQ quantization of every conv/linear layer, per-channel weights), median latency of single forward passes at
batch 1 and 64 with the interquartile range, the int8 speed-up over float *in the same runtime* (ONNX Runtime),
the int8 nodes in the optimized graph ONNX Runtime runs, and top-1 validation accuracy (float PyTorch vs int8)
where the data is there.

Weights: the cached 3-epoch Fashion-MNIST checkpoint (``runs/cache``, written by ``automl-prune search``) when it
exists, else random (fine for latency; accuracy is then left out). The 50% width is pruned by L1 norm without
fine-tuning (batch-norm statistics re-estimated), so its accuracy is low for both runtimes; it is there to compare
float with int8, not as a result.

Usage::

    .venv/bin/python benchmarks/int8_latency.py                     # 1 thread, table + PNG in benchmarks/results
    .venv/bin/python benchmarks/int8_latency.py --threads 2 --repeats 50

Numbers depend on the machine and on what else runs on it: the header states the CPU, the threads and the load.
"""

from __future__ import annotations

import os

# With 2 cores shared with other processes, OpenMP's spinning barriers slow small kernels down a lot (see
# benchmarks/train_speed.py); passive waiting avoids it. Must precede the import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from automl_prune.data.datasets import Splits, iterate_batches, load_dataset
from automl_prune.errors import DatasetNotFoundError
from automl_prune.graph.analysis import analyze
from automl_prune.models import build_model
from automl_prune.models.checkpoints import cache_path, data_fingerprint, load_checkpoint, load_into
from automl_prune.prune.pruning import compress_widths
from automl_prune.quantize.int8 import (
    export_int8_onnx,
    int8_node_counts,
    measure_latency,
    onnx_accuracy,
    reduced_weight_range_needed,
)
from automl_prune.scoring.evaluator import recalibrate_batch_norm
from automl_prune.train.training import evaluate_accuracy

MODELS = ("vgg-small", "resnet20")
WIDTHS = (1.0, 0.5)
INPUT_SHAPE = (1, 28, 28)
RUNTIMES = (("pytorch", "float PyTorch"), ("ort_float", "float ORT"), ("ort_int8", "int8 ORT"))


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (or what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_data(root: str | None) -> Splits | None:
    """Fashion-MNIST, or None when its files are not there (then calibration uses random inputs)."""
    try:
        return load_dataset("fashion-mnist", root)
    except DatasetNotFoundError:
        return None


def base_model(name: str, splits: Splits | None, cache_dir: Path) -> tuple[torch.nn.Module, str]:
    """The model with its cached pretrained weights when they exist, else random ones; and which it is."""
    model = build_model(name, 1, 10, INPUT_SHAPE[-1])
    if splits is not None:
        path = cache_path(cache_dir, name, "fashion-mnist", seed=0, epochs=3, data=data_fingerprint(splits))
        if path.is_file():
            state, meta = load_checkpoint(path)
            return load_into(model, state, meta, expected_model_name=name).eval(), f"pretrained ({path.name})"
    return model.eval(), "random"


def at_width(model: torch.nn.Module, fraction: float, splits: Splits | None) -> torch.nn.Module:
    """``model`` with every channel group at ``fraction`` of its width (L1-norm channel choice, no fine-tuning;
    with data, batch-norm statistics re-estimated on 8 training batches, as the search's evaluator does)."""
    if fraction >= 1.0:
        return model
    graph = analyze(model, torch.zeros(1, *INPUT_SHAPE))
    widths = {g.name: max(1, round(g.size * fraction)) for g in graph.groups}
    pruned = compress_widths(model, graph, widths).eval()
    if splits is not None:
        batches = [x for x, _ in iterate_batches(splits.train, 128, shuffle=True, seed=1)][:8]
        with torch.no_grad():
            recalibrate_batch_norm(pruned, batches)
    return pruned.eval()


def bench_one(model: torch.nn.Module, splits: Splits | None, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Export, quantize, count int8 nodes, time the three runtimes and (with data) compare accuracies."""
    if splits is not None:
        calibration: list[Any] = list(iterate_batches(splits.train, 64, shuffle=True, seed=0))[: args.calib_batches]
    else:
        generator = torch.Generator().manual_seed(0)
        calibration = [torch.randn(64, *INPUT_SHAPE, generator=generator) for _ in range(args.calib_batches)]
    int8_path = export_int8_onnx(model, calibration, work / "model.int8.onnx")
    float_path = int8_path.with_name("model.int8.float.onnx")
    kwargs = {"batch_sizes": (1, 64), "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads}
    row: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "nodes": int8_node_counts(int8_path),
        "pytorch": measure_latency(model, INPUT_SHAPE, **kwargs),
        "ort_float": measure_latency(float_path, INPUT_SHAPE, **kwargs),
        "ort_int8": measure_latency(int8_path, INPUT_SHAPE, **kwargs),
    }
    if splits is not None and args.accuracy:
        row["acc_float"] = evaluate_accuracy(model, splits.val)[0]
        row["acc_int8"] = onnx_accuracy(int8_path, splits.val, threads=args.threads)
    return row


def fmt(stats: dict[str, float]) -> str:
    return f"{stats['median_ms']:.3f} ±{stats['iqr_ms'] / 2:.3f}"


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The results as a Markdown table (median ms ± half the interquartile range)."""
    lines = [header, ""]
    cols = ["model", "width", "params"]
    for batch in (1, 64):
        cols += [f"b{batch} {label} (ms)" for _, label in RUNTIMES] + [f"b{batch} int8 speed-up vs float ORT"]
    cols += ["int8 nodes (optimized graph)", "val acc float / int8"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [row["model"], f"{row['width']:.0%}", f"{row['params'] / 1e3:.0f}k"]
        for batch in (1, 64):
            cells += [fmt(row[key]["batches"][batch]) for key, _ in RUNTIMES]
            speed = row["ort_float"]["batches"][batch]["median_ms"] / row["ort_int8"]["batches"][batch]["median_ms"]
            cells.append(f"{speed:.2f}x")
        cells.append(", ".join(f"{op} {n}" for op, n in row["nodes"].items()) or "none")
        if "acc_float" in row:
            cells.append(f"{row['acc_float']:.1%} / {row['acc_int8']:.1%}")
        else:
            cells.append("n/a (random weights)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: median latency per model/width for each runtime, one panel per batch size, IQR whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = [f"{r['model']}\n{r['width']:.0%} width" for r in rows]
    x = np.arange(len(rows))
    width = 0.26
    colors = ("#9e9e9e", "#4c72b0", "#dd8452")
    for ax, batch in zip(axes, (1, 64), strict=True):
        for i, ((key, label), color) in enumerate(zip(RUNTIMES, colors, strict=True)):
            stats = [r[key]["batches"][batch] for r in rows]
            med = np.array([s["median_ms"] for s in stats])
            err = np.array([[s["median_ms"] - s["q1_ms"] for s in stats], [s["q3_ms"] - s["median_ms"] for s in stats]])
            bars = ax.bar(x + (i - 1) * width, med, width, yerr=err, capsize=3, label=label, color=color)
            if key == "ort_int8":
                for bar, r, s in zip(bars, rows, stats, strict=True):
                    speed = r["ort_float"]["batches"][batch]["median_ms"] / s["median_ms"]
                    ax.annotate(f"{speed:.2f}x", (bar.get_x() + bar.get_width() / 2, s["q3_ms"]),
                                xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("median latency per batch (ms)")
        ax.set_title(f"batch {batch} (label above int8: speed-up vs float ORT)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--widths", nargs="+", type=float, default=list(WIDTHS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false", help="skip the accuracy columns")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the project's)")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = load_data(args.data_root)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, weights = base_model(name, splits, args.cache_dir)
            for fraction in args.widths:
                work = Path(tmp) / f"{name}_{fraction:g}"
                work.mkdir()
                row = bench_one(at_width(model, fraction, splits), splits, work, args)
                rows.append({"model": name, "width": fraction, "weights": weights, **row})
                print(f"done: {name} at {fraction:.0%} width ({weights})", flush=True)
    import onnxruntime

    load = os.getloadavg()
    today = datetime.date.today().isoformat()
    header = (
        f"Int8 latency, {today}: {cpu_name()}, {os.cpu_count()} cores, {args.threads} thread(s) for every runtime, "
        f"load average {load[0]:.1f} (other work ran on the machine), torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, weights {'7-bit (no VNNI)' if reduced_weight_range_needed() else '8-bit'} "
        f"per channel, activations uint8; median of {args.repeats} runs after {args.warmup} warm-up runs, "
        f"± half the interquartile range; input 1x28x28; weights: "
        + "; ".join(sorted({f"{r['model']} {r['weights']}" for r in rows}))
    )
    table = markdown(rows, header)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"int8_latency_{today}_t{args.threads}"
    (args.out / f"{stem}.md").write_text(table + "\n")
    png = args.out / f"{stem}.png"
    plot(rows, png, f"Float vs int8 latency, {cpu_name()}, {args.threads} thread(s) (median, IQR whiskers)")
    print(f"wrote {png} and {png.with_suffix('.md')}")


if __name__ == "__main__":
    main()
