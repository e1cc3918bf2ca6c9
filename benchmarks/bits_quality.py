"""Issue 10's benchmark: uniform bits against searched mixed precision at the same size, and uniform width +
uniform bits against the joint search at the same FLOPs and size (not run by CI; hours of CPU).

For each model and seed, with the same fine-tune (the pipeline's ladder and recipe) for every row:

- ``bits/uniform`` and ``bits/<agent>``: full width; the size budget is the size of the model with every layer
  at ``--uniform-bits`` (4), so the uniform answer is exactly that model and the searcher must find a mixed
  precision of the same size;
- ``joint/uniform`` and ``joint/<agent>``: FLOPs budget ``--flops`` (0.5) and the size of the uniform-width
  architecture of that budget at ``--uniform-bits`` bits; the searcher decides widths and bits together.

Every row is the real pipeline (`automl_prune.run.pipeline.run_search`) in ``OUT/<model>/<kind>/<agent>/seed<k>``;
finished rows are appended to ``OUT/results.jsonl`` and skipped on a rerun, and two processes may share one
``OUT`` (rows are claimed as in `benchmarks/quality.py`; give the second ``--seeds`` in another order).
Accuracies of quantized models are simulated (fake-quantized), as the pipeline's summary says.

    nohup .venv/bin/python benchmarks/bits_quality.py > runs/bench/bits_quality.log 2>&1 &
    .venv/bin/python benchmarks/bits_quality.py --report-only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a script owns its process (see benchmarks/quality.py)

import argparse
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `quality` when run as a script

from quality import append_result, chosen_origin, claim_row, mean_std, read_results, release_row

from automl_prune.config import SearchConfig
from automl_prune.report.summary import format_table

KINDS = ("bits", "joint")


def size_budget_bits(config: SearchConfig, kind: str, flops: float, bits: int) -> tuple[int, float]:
    """The size budget of a row, in bits and as a fraction of the float32 model: the uniform-bits model (full
    width, or the uniform width of ``flops``)."""
    from agents import uniform_architecture
    from automl_prune.run.base_model import load_base

    space = load_base(config).space
    widths = space.full() if kind == "bits" else uniform_architecture(space, space.flops_budget(flops))
    uniform = space.uniform_bits(bits, bits, widths)
    return space.size_bits(uniform), space.size_bits(uniform) / space.full_size_bits


def row_config(args: argparse.Namespace, model: str, kind: str, agent: str, seed: int, size_bits: int,
               out: Path) -> SearchConfig:
    return SearchConfig(model=model, dataset=args.dataset, data_root=args.data_root, agent=agent,
                        episodes=args.episodes, out=str(out), cache_dir=args.cache_dir, seed=seed,
                        progress=not args.quiet, pretrain_seed=args.pretrain_seed,
                        flops=1.0 if kind == "bits" else args.flops, size=f"{math.ceil(size_bits / 8)}B",
                        search="bits" if kind == "bits" else "both", workers=args.workers, threads=args.threads,
                        # the naive answer, as in benchmarks/quality.py: not widened into the leftover budget
                        fill_budget=agent != "uniform")


def run_row(args: argparse.Namespace, model: str, kind: str, agent: str, seed: int) -> dict[str, Any]:
    from automl_prune.run.pipeline import run_search

    probe = SearchConfig(model=model, dataset=args.dataset, data_root=args.data_root, cache_dir=args.cache_dir,
                         pretrain_seed=args.pretrain_seed, progress=not args.quiet)
    # In whole bytes, rounded up: a fraction printed to 6 digits could land a bit under the uniform model's
    # exact size, which then no longer fits (the first run's uniform row fell back to 3 bits that way).
    size_bits, size = size_budget_bits(probe, kind, args.flops, args.uniform_bits)
    out = Path(args.out) / model / kind / agent / f"seed{seed}"
    summary = run_search(row_config(args, model, kind, agent, seed, size_bits, out))
    comp, base = summary["compressed"], summary["base"]
    return {"test_acc": comp["test_acc"], "flops_ratio": comp["flops"] / base["flops"],
            "size_ratio": comp["size_bits"] / base["size_bits"], "size_budget": size,
            "bops_ratio": comp["bops"] / base["bops"], "search_seconds": summary["search_seconds"],
            "rerank_seconds": summary.get("rerank_seconds", 0.0), "bits": summary.get("bits"),
            "chosen_origin": (summary.get("chosen") or {}).get("origin"),
            "architecture": summary.get("architecture")}


def report(out_dir: Path) -> str:
    """Per (model, kind, agent): test accuracy mean +- sample std over seeds, the paired difference to the
    uniform row of the same seeds with the larger of the two spreads, how often the re-ranking handed back the
    uniform entrant, and the mean ratios, as Markdown (also written to ``OUT/bits_quality.md``)."""
    rows = read_results(out_dir / "results.jsonl")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["kind"], row["agent"]), []).append(row)
    uniform = {(r["model"], r["kind"], r["seed"]): r for r in rows if r["agent"] == "uniform"}
    table = []
    for (model, kind, agent), items in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] != "uniform",
                                                                              g[0][2])):
        mean, std = mean_std([100 * r["test_acc"] for r in items])
        versus, chose = "-", "-"
        if agent != "uniform":
            pairs = [(100 * r["test_acc"], 100 * uniform[(model, kind, r["seed"])]["test_acc"])
                     for r in items if (model, kind, r["seed"]) in uniform]
            if pairs:
                _, their_std = mean_std([u for _, u in pairs])
                diff = float(np.mean([a - u for a, u in pairs]))
                versus = f"{diff:+.2f} ({max(std, their_std):.2f})"
            # a row's run folder, when it still exists, holds the ladder's pick (quality.chosen_origin)
            origins = [chosen_origin({"run_dir": str(out_dir / model / kind / agent / f"seed{r['seed']}"), **r},
                                     uniform.get((model, kind, r["seed"]))) for r in items]
            known = [o for o in origins if o]
            chose = f"{sum(o == 'uniform' for o in known)} of {len(known)}" if known else "?"
        table.append([model, kind, agent, f"{mean:.2f} +- {std:.2f}", versus, chose, len(items),
                      f"{np.mean([r['size_ratio'] for r in items]):.4f}",
                      f"{np.mean([r['flops_ratio'] for r in items]):.3f}",
                      f"{np.mean([r['bops_ratio'] for r in items]):.4f}"])
    text = format_table(["model", "kind", "agent", "test acc % (mean +- std)", "vs uniform (larger spread)",
                         "ladder chose uniform", "seeds", "size ratio", "FLOPs ratio", "BOPs ratio"], table)
    (out_dir / "bits_quality.md").write_text(text + "\n")
    _plot(groups, out_dir / "bits_quality.png")
    return text


def _plot(groups: dict[tuple[str, str, str], list[dict[str, Any]]], path: Path) -> None:
    """Test accuracy per (model, kind), one bar per agent with the spread over seeds as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not groups:
        return
    cells = sorted({(m, k) for m, k, _ in groups})
    agents = sorted({a for _, _, a in groups})
    fig = Figure(figsize=(max(6.0, 1.6 * len(cells) + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(agents)
    for j, agent in enumerate(agents):
        means, spreads = [], []
        for cell in cells:
            acc = np.array([100 * r["test_acc"] for r in groups.get((*cell, agent), [])] or [np.nan])
            means.append(float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"))
            spreads.append(float(np.nanstd(acc, ddof=1)) if np.isfinite(acc).sum() > 1 else 0.0)
        ax.bar(np.arange(len(cells)) + j * width - 0.4 + width / 2, means, width, yerr=spreads, capsize=3,
               label=agent)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([f"{m}\n{'bits, full width' if k == 'bits' else 'joint widths + bits'}" for m, k in cells])
    ax.set_ylabel("test accuracy (%, simulated quantization)")
    ax.set_title("uniform bits vs searched at the same size budget\n(mean and spread over seeds)", fontsize=10)
    finite = [100 * r["test_acc"] for items in groups.values() for r in items]
    ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 3))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg-small", "resnet20"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--agents", nargs="+", default=["uniform", "ddpg"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--uniform-bits", type=int, default=4)
    parser.add_argument("--flops", type=float, default=0.5, help="FLOPs budget of the joint rows")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", default="runs/bench/bits_quality")
    parser.add_argument("--workers", type=int, default=None, help="Ray workers per row (0: in process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out_dir = Path(args.out)
    if not args.report_only:
        done = {r["key"] for r in read_results(out_dir / "results.jsonl")}
        plan = [(s, m, k, a) for s in args.seeds for m in args.models for k in args.kinds for a in args.agents]
        todo = [p for p in plan if f"{p[1]}|{p[2]}|{p[3]}|{p[0]}" not in done]
        print(f"{len(plan)} rows planned, {len(plan) - len(todo)} done, {len(todo)} to run", flush=True)
        for index, (seed, model, kind, agent) in enumerate(todo, 1):
            key = f"{model}|{kind}|{agent}|{seed}"
            # Another process on the same --out may have finished or be running this row (quality.claim_row).
            if key in {r["key"] for r in read_results(out_dir / "results.jsonl")} or not claim_row(out_dir, key):
                print(f"[{index}/{len(todo)}] {key}: finished or running in another process; skipped", flush=True)
                continue
            print(f"[{index}/{len(todo)}] {key}", flush=True)
            start = time.perf_counter()
            try:
                metrics = run_row(args, model, kind, agent, seed)
            except KeyboardInterrupt:
                raise
            except Exception:
                traceback.print_exc()
                release_row(out_dir, key)
                print(f"[{index}/{len(todo)}] FAILED {key}; continuing", flush=True)
                continue
            append_result(out_dir / "results.jsonl", {"key": key, "model": model, "kind": kind, "agent": agent,
                                                      "seed": seed, **metrics,
                                                      "wall_seconds": time.perf_counter() - start})
            release_row(out_dir, key)
            print(f"[{index}/{len(todo)}] done {key}: test {100 * metrics['test_acc']:.2f}%, size "
                  f"{metrics['size_ratio']:.4f} (budget {metrics['size_budget']:.4f}), FLOPs "
                  f"{metrics['flops_ratio']:.3f}", flush=True)
    print(report(out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
