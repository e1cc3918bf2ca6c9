"""How well the per-layer latency table predicts whole-model latency: 50 random architectures, predicted vs measured.

The table (`automl_prune.cost.latency`) is measured (or read from the cache) for the model at the given batch size and
thread count; then random architectures (uniform over every group's valid widths, another seed than the table's
calibration architectures, so none of them was fitted on) are pruned, timed interleaved in rounds (each round
runs every model once), and compared with the prediction. Printed: the relative prediction error (median, 90th
percentile, max) against the measured minimum (the statistic the table is fitted to) and against the measured
median, the spread of the measurements themselves (relative IQR), the CPU, the threads and the load average.
Written: a markdown table and a PNG of predicted vs measured latency in ``--out``.

Weights are random: latency does not depend on them.

Usage::

    .venv/bin/python benchmarks/latency_table.py                            # resnet20, batch 1, 1 thread
    .venv/bin/python benchmarks/latency_table.py --model vgg-small --batch 32 --archs 50

Numbers depend on the machine and on what else runs on it. On a shared, loaded machine the medians carry the
other processes' interference (their relative IQR says how much), which no table can predict; the minimums are
the better estimate of what the model itself costs.
"""

from __future__ import annotations

import os

# OpenMP's spinning barriers slow small kernels down when cores are shared; must precede the import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch

from automl_prune.cost.latency import LatencyCostModel, latency_table
from automl_prune.cost.timing import compare_latency, device_name
from automl_prune.models import build_model
from automl_prune.prune.pruning import compress_widths
from search_spaces import SearchSpace


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    """Measure, compare, print and draw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--input", default="1x28x28", help="C x H x W of one input (default 1x28x28)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--archs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per architecture")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.lower().split("x"))
    model = build_model(args.model, shape[0], 10).eval()
    space = SearchSpace.from_model(model, torch.zeros(1, *shape))
    load_before = _load()
    start = time.perf_counter()
    table, path = latency_table(model, space.graph, {d.name: d.choices() for d in space.decisions}, args.cache_dir,
                                batch_size=args.batch, log=print)
    table_seconds = time.perf_counter() - start
    latency = space.with_width_cost(LatencyCostModel(space.graph, table))

    rng = np.random.default_rng(args.seed)
    archs = [space.sample(rng) for _ in range(args.archs)]
    start = time.perf_counter()
    query = [latency.flops(a) for a in archs * 20]
    query_us = 1e6 * (time.perf_counter() - start) / len(query)
    predicted = np.array([latency.flops(a) / 1e6 for a in archs])  # ms
    models = {str(i): compress_widths(model, space.graph, a.widths).eval() for i, a in enumerate(archs)}
    models["full"] = model
    start = time.perf_counter()
    measured = compare_latency(models, shape, [args.batch], rounds=args.rounds, seed=args.seed)[args.batch]
    measure_seconds = time.perf_counter() - start
    load_after = _load()
    minimum = np.array([measured[str(i)]["min_ms"] for i in range(len(archs))])
    median = np.array([measured[str(i)]["median_ms"] for i in range(len(archs))])
    iqr = np.array([measured[str(i)]["iqr_ms"] for i in range(len(archs))])
    err_min = np.abs(predicted - minimum) / minimum
    err_median = np.abs(predicted - median) / median
    flops = np.array([space.flops(a) for a in archs]) / space.full_flops
    # What a latency budget relies on: the fraction of the full model's latency (a drift of the whole machine
    # since the table was measured scales both and cancels).
    full_predicted, full_measured = latency.full_flops / 1e6, measured["full"]["min_ms"]
    err_fraction = np.abs(predicted / full_predicted - minimum / full_measured) / (minimum / full_measured)

    def row(name: str, err: np.ndarray) -> str:
        return (f"| {name} | {100 * np.median(err):.1f}% | {100 * np.percentile(err, 90):.1f}% | "
                f"{100 * err.max():.1f}% | {100 * np.mean(err <= 0.10):.0f}% |")

    fit = table.meta.get("fit", {})
    grid = table.meta.get("grid_points")
    how = "read from the cache" if table_seconds < 1 else f"measured in {table_seconds:.0f} s"
    lines = [
        f"# Latency table: {args.model}, input {args.input}, batch {args.batch}, {table.threads} thread(s)",
        "",
        f"- device: {device_name()}; {datetime.date.today().isoformat()}",
        f"- load average before: {load_before}; after: {load_after}",
        f"- table: {len(table.layers)} layers, grid up to {grid}x{grid} widths,"
        f" {table.meta.get('repeats')} repeats per point (fastest kept); fit on {fit.get('points')} "
        f"calibration architectures: alpha {table.alpha:.3f}, {table.beta_ns:.4f} ns per output element, constant "
        f"{table.constant_ns / 1e3:.1f} us (calibration error median {100 * fit.get('median_relative_error', 0):.1f}%)",
        f"- table file: {path} ({how})",
        f"- prediction: {query_us:.0f} us per architecture (this process, under the load above)",
        f"- {args.archs} random architectures (seed {args.seed}; FLOPs {flops.min():.2f}-{flops.max():.2f} of full), "
        f"{args.rounds} interleaved rounds each ({measure_seconds:.0f} s)",
        f"- measurement spread: relative IQR median {100 * np.median(iqr / median):.0f}%, max "
        f"{100 * np.max(iqr / median):.0f}% (interference from other processes)",
        "",
        "| prediction error vs measured | median | 90th percentile | max | within 10% |",
        "|---|---|---|---|---|",
        row("minimum of the rounds (the table's statistic)", err_min),
        row("median of the rounds", err_median),
        row("fraction of the full model's latency (minimums)", err_fraction),
        "",
        f"Full model: predicted {full_predicted:.3f} ms, measured {full_measured:.3f} ms (minimum), "
        f"{measured['full']['median_ms']:.3f} ms (median): the machine is "
        f"{100 * (full_measured / full_predicted - 1):+.1f}% off the table's time (load, frequency).",
    ]
    text = "\n".join(lines)
    print("\n" + text)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"latency_table_{args.model}_b{args.batch}_t{table.threads}_{datetime.date.today().isoformat()}"
    (out / f"{stem}.md").write_text(text + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    q1 = np.array([measured[str(i)]["q1_ms"] for i in range(len(archs))])
    q3 = np.array([measured[str(i)]["q3_ms"] for i in range(len(archs))])
    ax.errorbar(median, predicted, xerr=[median - q1, q3 - median], fmt="o", mfc="none", color="tab:gray",
                alpha=0.6, label="measured median (bar: quartiles)")
    ax.plot(minimum, predicted, "o", color="tab:blue", label="measured minimum")
    # the axes hold the points; quartile bars of rounds slowed by other processes run off to the right
    top = max(float(np.percentile(median, 90)), float(predicted.max()), float(minimum.max())) * 1.1
    xs = np.array([0.0, top])
    ax.plot(xs, xs, "k-", lw=1, label="predicted = measured")
    ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="k", alpha=0.08, label="+/-10%")
    low = 0.9 * min(float(minimum.min()), float(predicted.min()))
    ax.set_xlim(low, top)
    ax.set_ylim(low, top)
    ax.set_xlabel(f"measured latency (ms, batch {args.batch}, {table.threads} thread(s))")
    ax.set_ylabel("predicted by the latency table (ms)")
    ax.set_title(f"{args.model}: {args.archs} random architectures, median error "
                 f"{100 * np.median(err_min):.1f}% vs minimum, {100 * np.median(err_fraction):.1f}% as a fraction of "
                 f"the full model\nload {load_after}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    print(f"\nwrote {out / stem}.md and .png")


if __name__ == "__main__":
    main()
