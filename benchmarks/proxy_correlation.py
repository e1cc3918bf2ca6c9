"""Is the search's reward telling the truth? Rank correlation of each fidelity with the fine-tuned accuracy.

For each FLOPs budget, N architectures like the ones a search proposes (the uniform architecture, plus keep
ratios sampled around the budget's uniform ratio and projected onto the budget with the leftover spent, so all
sit at the same FLOPs), measure:

  - fidelity 0 (``--steps 0``): validation accuracy after compress + batch-norm recalibration (adaptive BN);
  - fidelity k (``--steps 20 100 200``): the same after that many SGD steps on training batches first
    (`automl_prune.scoring.evaluator.Evaluator` with ``finetune_steps``), each from scratch, as a search would pay it;
  - the truth: validation accuracy after the pipeline's fine-tune (`automl_prune.train.training.train`,
    ``finetune_epochs`` / ``finetune_lr`` of `SearchConfig`), once per ``--truth-seeds`` seed.

Reports, per budget and fidelity: Spearman's rho against the truth (with a bootstrap 90% interval over the
architectures), seconds per architecture, rho per second, and the regret of picking the proxy's favourite
(truth of the best architecture minus truth of the proxy's pick). With two or more truth seeds it also
reports the noise ceiling: rho between the truths of two seeds, the best any proxy can hope for. The last
column marks the fidelity the search uses by default at that budget (`automl_prune.scoring.fidelity_rule`).
Writes ``proxy_correlation.{md,json,png}`` under ``--out``.

    .venv/bin/python benchmarks/proxy_correlation.py --flops 0.25 0.1 --archs 12 --truth-seeds 2
"""

from __future__ import annotations

import os

# A script owns its process: OpenMP threads must sleep, not spin, while another process holds a core (the CLI
# sets the same; importing the library sets nothing).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from agents import project_to_budget, uniform_architecture
from automl_prune.atomic import atomic_write_text
from automl_prune.config import SearchConfig
from automl_prune.report.summary import format_table
from automl_prune.run.base_model import BaseModel, load_base
from automl_prune.run.search_stage import evaluator_kwargs
from automl_prune.scoring.evaluator import Evaluator, accuracy_and_loss
from automl_prune.scoring.rung_job import FineTuneRecipe
from automl_prune.train.runtime import configure_torch
from search_spaces import Architecture, SearchSpace

_BOOTSTRAP = 2000


def sample_architectures(space: SearchSpace, budget: int, n: int, *, spread: float, seed: int) -> list[Architecture]:
    """The uniform architecture, then ``n - 1`` distinct ones sampled around it, all projected onto ``budget``.

    Each group's keep ratio is the uniform ratio times a factor drawn uniformly from ``[1 - spread, 1 + spread]``
    (clipped to the group's bounds); the result is scaled onto the budget and the leftover spent
    (`agents.budget.project_to_budget` with ``fill=True``), which is what the searchers' priors and the
    pipeline's widening step produce.

    Args:
        space: The search space.
        budget: FLOPs limit.
        n: How many architectures, uniform included.
        spread: Relative spread of the keep ratios around the uniform one.
        seed: Seeds the sampler.

    Returns:
        ``n`` distinct architectures (fewer only if the space has fewer near the budget), uniform first.
    """
    uniform = uniform_architecture(space, budget)
    base = {d.name: uniform.widths[d.name] / d.size for d in space.decisions}
    rng = np.random.default_rng(seed)
    archs, seen, tries = [uniform], {uniform.key()}, 0
    while len(archs) < n and tries < 100 * n:
        tries += 1
        ratios = {
            d.name: float(np.clip(base[d.name] * rng.uniform(1 - spread, 1 + spread), d.min_keep / d.size, 1.0))
            for d in space.decisions
        }
        arch = project_to_budget(space, space.from_ratios(ratios), budget, fill=True)
        if arch.key() not in seen:
            seen.add(arch.key())
            archs.append(arch)
    return archs


def _rho(x: list[float], y: list[float]) -> float:
    value = spearmanr(x, y).statistic
    return float(value) if np.isfinite(value) else 0.0


def _bootstrap_interval(x: list[float], y: list[float], seed: int) -> tuple[float, float]:
    """5th and 95th percentile of Spearman's rho over architectures resampled with replacement."""
    rng = np.random.default_rng(seed)
    xs, ys, n = np.asarray(x), np.asarray(y), len(x)
    values = []
    for _ in range(_BOOTSTRAP):
        idx = rng.integers(0, n, n)
        if len(set(idx.tolist())) < 3:
            continue
        values.append(_rho(xs[idx].tolist(), ys[idx].tolist()))
    return float(np.percentile(values, 5)), float(np.percentile(values, 95))


def measure_budget(config: SearchConfig, base: BaseModel, flops: float, steps: list[int], archs: int,
                   truth_seeds: int, spread: float, eta: dict[str, float]) -> list[dict[str, Any]]:
    """Per-architecture measurements at one budget: every fidelity's accuracy and seconds, and the truths."""
    space = base.space
    budget = space.flops_budget(flops)
    candidates = sample_architectures(space, budget, archs, spread=spread, seed=config.seed)
    # Exactly the search's evaluator (criterion, calibration, reconstruction), at each number of steps.
    kwargs = evaluator_kwargs(config, base)
    evaluators = {s: Evaluator(**{**kwargs, "finetune_steps": s}) for s in steps}
    starter = evaluators[steps[0]] if steps[0] == 0 else Evaluator(**{**kwargs, "finetune_steps": 0})
    rows = []
    for i, arch in enumerate(candidates):
        start = time.perf_counter()
        row: dict[str, Any] = {"flops_budget": flops, "index": i, "kind": "uniform" if i == 0 else "sampled",
                               "flops_ratio": space.flops(arch) / space.full_flops, "architecture": arch.widths,
                               "proxy": {}, "seconds": {}, "truth": [], "truth_seconds": 0.0}
        for s, evaluator in evaluators.items():
            metrics = evaluator.evaluate(arch)
            row["proxy"][str(s)] = metrics.accuracy
            row["seconds"][str(s)] = metrics.seconds
        for k in range(truth_seeds):
            t0 = time.perf_counter()
            # The pipeline fine-tunes the adaptive-BN build of the chosen architecture: start from the same.
            model = copy.deepcopy(starter.build(arch))
            recipe = FineTuneRecipe(epochs=config.finetune_epochs, lr=config.finetune_lr, seed=config.seed + k)
            recipe.trainer(model, base.splits).run(progress=False)
            model = model.to("cpu", memory_format=torch.contiguous_format).eval()
            acc, _ = accuracy_and_loss(model, base.splits.val.images, base.splits.val.labels, 1000)
            row["truth"].append(acc)
            row["truth_seconds"] += time.perf_counter() - t0
        rows.append(row)
        eta["done"] += 1
        eta["seconds"] += time.perf_counter() - start
        left = (eta["total"] - eta["done"]) * eta["seconds"] / eta["done"]
        proxies = " ".join(f"s{s}={row['proxy'][str(s)]:.4f}" for s in steps)
        truths = "/".join(f"{t:.4f}" for t in row["truth"])
        print(f"[{eta['done']:.0f}/{eta['total']:.0f}] flops {flops:g} #{i} {row['kind']}: {proxies} truth={truths} "
              f"({time.perf_counter() - start:.0f} s, ETA {left / 60:.1f} min)", flush=True)
    return rows


def summarize(rows: list[dict[str, Any]], steps: list[int], seed: int) -> list[dict[str, Any]]:
    """Per budget and fidelity: rho (with bootstrap interval), seconds, rho per second, regret of the pick."""
    out = []
    for flops in sorted({r["flops_budget"] for r in rows}, reverse=True):
        group = [r for r in rows if r["flops_budget"] == flops]
        truth = [float(np.mean(r["truth"])) for r in group]
        best = max(truth)
        ceiling = None
        if len(group[0]["truth"]) >= 2:
            ceiling = _rho([r["truth"][0] for r in group], [r["truth"][1] for r in group])
        for fidelity, s in enumerate(steps):
            scores = [r["proxy"][str(s)] for r in group]
            rho = _rho(scores, truth)
            low, high = _bootstrap_interval(scores, truth, seed)
            seconds = float(np.mean([r["seconds"][str(s)] for r in group]))
            pick = int(np.argmax(scores))
            out.append({
                "flops_budget": flops, "fidelity": fidelity, "steps": s, "rho": rho, "rho_low": low,
                "rho_high": high, "seconds": seconds, "rho_per_second": rho / seconds, "n": len(group),
                "regret": best - truth[pick], "proxy_min": min(scores), "proxy_max": max(scores),
                "truth_min": min(truth), "truth_max": best, "truth_uniform": truth[0],
                "truth_seconds": float(np.mean([r["truth_seconds"] / len(r["truth"]) for r in group])),
                "noise_ceiling": ceiling,
            })
    return out


def _label(steps: int) -> str:
    return "adaptive BN" if steps == 0 else f"{steps} steps + BN"


def markdown(summary: list[dict[str, Any]], header: str, criterion: str = "l1") -> str:
    """The table: one row per budget and fidelity."""
    rows = []
    for s in summary:
        rows.append([
            f"{s['flops_budget']:g}", f"{s['fidelity']}: {_label(s['steps'])}", f"{s['rho']:.3f}",
            f"[{s['rho_low']:.2f}, {s['rho_high']:.2f}]", f"{s['seconds']:.2f}", f"{s['rho_per_second']:.3f}",
            f"{100 * s['regret']:.2f}", f"{100 * s['proxy_min']:.1f}-{100 * s['proxy_max']:.1f}",
            f"{100 * s['truth_min']:.2f}-{100 * s['truth_max']:.2f}",
            "-" if s["noise_ceiling"] is None else f"{s['noise_ceiling']:.3f}",
            "yes" if SearchConfig(flops=s["flops_budget"], criterion=criterion).search_finetune_steps == s["steps"]
            else "",
        ])
    table = format_table(
        ["FLOPs", "fidelity", "Spearman rho vs truth", "90% bootstrap", "s / arch", "rho / s",
         "regret of pick (pts)", "proxy acc % range", "truth acc % range", "truth noise ceiling",
         "search default"],
        rows,
    )
    return f"{header}\n\n{table}\n"


def plot(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    """Rho against fidelity (left) and against seconds per architecture (right), one line per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for flops in sorted({s["flops_budget"] for s in summary}, reverse=True):
        group = sorted((s for s in summary if s["flops_budget"] == flops), key=lambda s: s["fidelity"])
        xs = [s["fidelity"] for s in group]
        rho = [s["rho"] for s in group]
        err = [[s["rho"] - s["rho_low"] for s in group], [s["rho_high"] - s["rho"] for s in group]]
        line = left.errorbar(xs, rho, yerr=err, marker="o", capsize=3, label=f"{flops:g} FLOPs")
        right.plot([s["seconds"] for s in group], rho, marker="o", color=line[0].get_color(), label=f"{flops:g} FLOPs")
        if group[0]["noise_ceiling"] is not None:
            left.axhline(group[0]["noise_ceiling"], color=line[0].get_color(), linestyle=":", linewidth=1)
    first = sorted({(s["fidelity"], s["steps"]) for s in summary})
    left.set_xticks([f for f, _ in first])
    left.set_xticklabels([f"{f}: {_label(st)}" for f, st in first], fontsize=8)
    left.set_xlabel("search fidelity")
    left.set_ylabel("Spearman rho vs accuracy after fine-tune")
    left.set_title("rank correlation (bars: 90% bootstrap; dotted: seed-noise ceiling)", fontsize=9)
    right.set_xscale("log")
    right.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    right.tick_params(axis="x", which="minor", labelsize=7)
    right.set_xlabel("seconds per architecture (log)")
    right.set_ylabel("Spearman rho vs accuracy after fine-tune")
    right.set_title("rank correlation against its cost", fontsize=9)
    for ax in (left, right):
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Parse flags, measure every budget, print and write the table, the raw rows and the figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg-small")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--flops", type=float, nargs="+", default=[0.25, 0.1])
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 20, 100, 200],
                        help="fine-tune steps of each fidelity, cheapest first (0 = adaptive BN only)")
    parser.add_argument("--truth-seeds", type=int, default=1, help="fine-tune seeds of the truth (2+: noise ceiling)")
    parser.add_argument("--spread", type=float, default=0.5, help="relative spread of keep ratios around uniform")
    parser.add_argument("--finetune-epochs", type=float, default=SearchConfig().finetune_epochs,
                        help="the truth's fine-tune (default: the pipeline's)")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", default="runs/bench/proxy_correlation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--criterion", default=SearchConfig().criterion,
                        help="channel criterion of every candidate (default: the search's, 'auto')")
    parser.add_argument("--report-only", action="store_true",
                        help="re-make the table and figure from OUT/proxy_correlation.json (its own settings)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLCONFIGDIR", str((out / ".cache" / "matplotlib").resolve()))
    if args.report_only:
        saved = json.loads((out / "proxy_correlation.json").read_text())
        args = argparse.Namespace(**{**vars(args), **saved["args"]})
        rows, base_val = saved["rows"], saved.get("base_val_acc", float("nan"))
    else:
        configure_torch()
        config = SearchConfig(model=args.model, dataset=args.dataset, data_root=args.data_root,
                              cache_dir=args.cache_dir, seed=args.seed, finetune_epochs=args.finetune_epochs,
                              criterion=args.criterion, progress=False)
        base = load_base(config)
        base_val = base.meta["val_acc"]
        eta = {"done": 0.0, "seconds": 0.0, "total": float(args.archs * len(args.flops))}
        rows = []
        for flops in args.flops:
            rows += measure_budget(config, base, flops, sorted(set(args.steps)), args.archs, args.truth_seeds,
                                   args.spread, eta)
            atomic_write_text(out / "proxy_correlation.json", json.dumps(
                {"args": vars(args), "base_val_acc": base_val, "rows": rows}, indent=1))
    steps = sorted(set(args.steps))
    lr = SearchConfig().finetune_lr

    summary = summarize(rows, steps, args.seed)
    header = (
        f"{args.model} on {args.dataset} (base val acc "
        f"{'?' if base_val != base_val else f'{100 * base_val:.2f}%'}), "
        f"criterion {SearchConfig(criterion=getattr(args, 'criterion', 'l1')).resolved_criterion}, "
        f"{args.archs} architectures per budget (uniform + sampled around it, spread {args.spread:g}, all filled "
        f"to the budget), truth = val acc after {args.finetune_epochs:g}-epoch fine-tune at lr "
        f"{lr:g}, mean of {args.truth_seeds} seed(s) ({summary[0]['truth_seconds']:.1f} s / arch "
        f"at {summary[0]['flops_budget']:g}); regret = best truth - truth of the proxy's pick; one torch thread.\n"
        f"Command: .venv/bin/python benchmarks/proxy_correlation.py --model {args.model} --flops "
        f"{' '.join(f'{f:g}' for f in args.flops)} --archs {args.archs} --steps {' '.join(map(str, steps))} "
        f"--truth-seeds {args.truth_seeds} --spread {args.spread:g} --finetune-epochs {args.finetune_epochs:g} "
        f"--seed {args.seed} --criterion {getattr(args, 'criterion', 'l1')}"
    )
    text = markdown(summary, header, getattr(args, "criterion", "l1"))
    print()
    print(text)
    atomic_write_text(out / "proxy_correlation.md", text)
    atomic_write_text(out / "proxy_correlation.json", json.dumps(
        {"args": vars(args), "base_val_acc": base_val, "rows": rows, "summary": summary}, indent=1))
    plot(summary, out / "proxy_correlation.png",
         f"{args.model} / {args.dataset}: does the search fidelity rank architectures like the fine-tune does?")
    print(f"wrote {out / 'proxy_correlation.md'}, .json and .png")


if __name__ == "__main__":
    main()
