"""Searchers side by side: same base model, same number of evaluations, same fine-tune.

For each FLOPs budget and agent, runs the full `automl-prune search` pipeline (search -> fine-tune -> test)
into ``--out/<agent>_<budget>`` and prints one table row: test accuracy after fine-tune, validation accuracy
of the best candidate before fine-tune (the proxy the search optimized), FLOPs ratio, evaluations, search and
fine-tune wall time. It also prints the candidate-evaluation cost: search seconds per evaluated architecture
divided by the seconds of one forward pass of the base model over the evaluation split.

    .venv/bin/python benchmarks/compare_searchers.py --budgets 0.5 0.25 --episodes 40 \
        --agents uniform random ddpg ppo optuna dmcp
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from automl_prune.config import SearchConfig
from automl_prune.report.summary import format_table
from automl_prune.run.base_model import load_base
from automl_prune.run.pipeline import run_search
from automl_prune.scoring.evaluator import accuracy_and_loss
from automl_prune.train.runtime import configure_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg-small")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--agents", nargs="+", default=["uniform", "random", "ddpg", "ppo"])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--proxy", default="adaptive-bn")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_torch()

    base_config = SearchConfig(model=args.model, dataset=args.dataset, cache_dir=args.cache_dir, seed=args.seed,
                               episodes=args.episodes, finetune_epochs=args.finetune_epochs, proxy=args.proxy,
                               progress=False)
    base = load_base(base_config)
    timings = []
    for _ in range(4):  # the first pass warms up the kernels; report the fastest of the rest
        start = time.perf_counter()
        accuracy_and_loss(base.model, base.splits.val.images, base.splits.val.labels, 1000)
        timings.append(time.perf_counter() - start)
    forward_seconds = min(timings[1:])

    rows = []
    for budget in args.budgets:
        for agent in args.agents:
            out = Path(args.out) / f"{agent}_{budget:g}"
            config = base_config.replace(agent=agent, flops=budget, out=str(out))
            print(f"== {agent} at {budget:g} FLOPs -> {out}", flush=True)
            summary = run_search(config)
            comp = summary["compressed"]
            per_eval = summary["search_seconds"] / max(1, summary["evaluations"])
            rows.append([
                f"{budget:g}", agent, f"{100 * comp['test_acc']:.2f}", f"{100 * comp['val_acc_before_finetune']:.2f}",
                f"{comp['flops'] / summary['base']['flops']:.3f}", summary["evaluations"],
                f"{summary['search_seconds']:.0f}", f"{summary['finetune_seconds']:.0f}",
                f"{per_eval / forward_seconds:.2f}",
            ])
            (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=1))

    print()
    print(f"{args.model} on {args.dataset}; base val {100 * base.meta['val_acc']:.2f}%, test "
          f"{100 * base.meta['test_acc']:.2f}%; {args.episodes} evaluations per searcher (uniform needs 1); "
          f"fine-tune {args.finetune_epochs:g} epoch(s); proxy {args.proxy}; one forward pass over the "
          f"{len(base.splits.val)}-image evaluation split: {forward_seconds:.2f} s")
    print(format_table(
        ["FLOPs budget", "agent", "test acc % (after FT)", "val acc % (proxy, before FT)", "FLOPs ratio",
         "evaluations", "search s", "fine-tune s", "s per eval / forward pass"],
        rows,
    ))


if __name__ == "__main__":
    main()
