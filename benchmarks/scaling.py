"""How much a second Ray worker buys: candidate evaluations per second and fine-tune trials per minute.

For each searcher, a search of ``--evals`` candidates runs three times on the same base model: with the plain
in-process evaluator, and with `RayEvaluatorPool` of 1 and 2 single-thread workers. Actor start-up is excluded
(the pool scores one architecture before the clock starts). Fine-tune trials: ``--trials`` candidates each
fine-tuned ``--steps`` steps as Ray Tune trials (one rung of the ladder), with 1 and 2 workers, wall time
including Tune's scheduling (what a user waits for), Ray start-up excluded.

    .venv/bin/python benchmarks/scaling.py --agents random optuna ddpg dmcp --evals 24 --out runs/bench/scaling

Writes ``scaling.md`` and ``scaling.png`` (speed-up per searcher) in ``--out``.
"""

from __future__ import annotations

import os

# A script owns its process: OpenMP threads must sleep, not spin, while another process holds a core (the CLI
# sets the same; importing the library sets nothing).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _search_rate(agent: str, config: Any, base: Any, budget: int, evaluator: Any, evals: int,
                 options: dict[str, Any]) -> float:
    from agents import SEARCHERS, SearchContext, uniform_architecture
    from search_spaces import Budget

    evaluator.evaluate(uniform_architecture(base.space, budget))  # warm-up: actors started, caches filled
    with tempfile.TemporaryDirectory() as scratch:
        context = SearchContext(base.space, evaluator, Budget(budget), seed=config.seed, run_dir=scratch)
        searcher = SEARCHERS.create(agent, context, **options)
        start = time.perf_counter()
        searcher.search(evals)
        return evals / (time.perf_counter() - start)


def _finetune_rate(config: Any, base: Any, budget: int, workers: int, trials: int, steps: int, out: Path) -> float:
    from agents import uniform_architecture
    from automl_prune.parallel.tune_ladder import TuneLadderExecutor
    from automl_prune.scoring.ladder import Candidate, Ladder
    from automl_prune.scoring.rung_job import FineTuneRecipe, LadderJob

    run_dir = out / f"finetune-w{workers}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    space = base.space
    uniform = uniform_architecture(space, budget)
    # Distinct candidates of the same cost: the uniform width with one group narrowed a little each.
    candidates = []
    for i, decision in enumerate(space.decisions[:trials]):
        widths = dict(space.complete(uniform).widths)
        widths[decision.name] = max(decision.min_keep, widths[decision.name] - 1)
        from search_spaces import Architecture

        arch = Architecture(widths)
        candidates.append(Candidate(f"c{i}", arch, "benchmark", None, space.flops(arch)))
    recipe = FineTuneRecipe(epochs=steps / (len(base.splits.train) // 128), lr=config.finetune_lr)
    total = recipe.total_steps(base.splits)
    job = LadderJob(run_dir, base.model, space, base.splits, recipe, (total,), criterion=config.resolved_criterion)
    ladder = Ladder(run_dir / "ladder.json", candidates, (total,), eta=2)
    start = time.perf_counter()
    TuneLadderExecutor(job, workers, verbose=False).run(ladder)
    return 60.0 * len(candidates) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg-small")
    parser.add_argument("--flops", type=float, default=0.5)
    parser.add_argument("--agents", nargs="*", default=["random", "optuna", "ddpg", "dmcp"])
    parser.add_argument("--evals", type=int, default=24)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60, help="fine-tune steps per trial")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", default="runs/bench/scaling")
    args = parser.parse_args()

    from automl_prune.config import SearchConfig
    from automl_prune.parallel.ray_eval import RayEvaluatorPool
    from automl_prune.parallel.ray_session import ray_session
    from automl_prune.run.base_model import load_base
    from automl_prune.run.search_stage import evaluator_kwargs, make_evaluator
    from automl_prune.train.runtime import configure_torch

    configure_torch(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = SearchConfig(model=args.model, cache_dir=args.cache_dir, flops=args.flops, progress=False)
    base = load_base(config)
    budget = base.space.flops_budget(args.flops)
    options = {"dmcp": {"steps": 60, "warmup_steps": 20}}
    rows: list[dict[str, Any]] = []
    for agent in args.agents:
        row: dict[str, Any] = {"agent": agent}
        row["in process"] = _search_rate(agent, config, base, budget, make_evaluator(config, base), args.evals,
                                         options.get(agent, {}))
        for workers in (1, 2):
            with tempfile.TemporaryDirectory(dir=out) as session_dir, ray_session(session_dir, workers, log=False):
                pool = RayEvaluatorPool(make_evaluator(config, base), workers, evaluator_kwargs(config, base))
                row[f"{workers} workers"] = _search_rate(agent, config, base, budget, pool, args.evals,
                                                         options.get(agent, {}))
                pool.close()
        row["speed-up 2 vs 1"] = row["2 workers"] / row["1 workers"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    finetune: dict[str, Any] = {"agent": f"fine-tune trials/min ({args.steps} steps)"}
    for workers in (1, 2):
        with ray_session(out / f"ft{workers}", workers, log=False):
            finetune[f"{workers} workers"] = _finetune_rate(config, base, budget, workers, args.trials, args.steps,
                                                            out)
    finetune["in process"] = float("nan")
    finetune["speed-up 2 vs 1"] = finetune["2 workers"] / finetune["1 workers"]
    rows.append(finetune)
    print(json.dumps(finetune), flush=True)

    header = "| searcher | evals/s in process | evals/s, 1 worker | evals/s, 2 workers | speed-up 2 vs 1 |"
    lines = [f"`benchmarks/scaling.py --agents {' '.join(args.agents)} --evals {args.evals}` ({args.model}, "
             f"{args.flops:g} FLOPs)", "", header, "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['agent']} | {row['in process']:.2f} | {row['1 workers']:.2f} | {row['2 workers']:.2f} "
                     f"| {row['speed-up 2 vs 1']:.2f}x |")
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = [r["agent"].split(" (")[0] for r in rows]
    ax.bar(names, [r["speed-up 2 vs 1"] for r in rows], color="#3b75af")
    ax.axhline(1.7, color="#c44", linestyle="--", label="target 1.7x")
    ax.axhline(2.0, color="#999", linestyle=":", label="ideal 2x")
    ax.set_ylabel("throughput, 2 workers / 1 worker")
    ax.set_title(f"Ray workers on this machine ({args.model})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)


if __name__ == "__main__":
    main()
