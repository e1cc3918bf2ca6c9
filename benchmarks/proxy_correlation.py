"""Is the search's reward telling the truth? Rank correlation of each proxy with the fine-tuned accuracy.

For N architectures at one FLOPs budget (random keep ratios scaled onto the budget and widened until they use
it, plus the uniform one),
measure:
  - proxy "adaptive-bn": validation accuracy after compress + batch-norm recalibration (no training);
  - proxy "finetune":    the same after K steps of SGD on training batches first;
  - the truth:           validation accuracy after a real fine-tune (``--finetune-epochs``, same for all).
Prints Spearman's rho of each proxy against the truth and each proxy's seconds per architecture.

    .venv/bin/python benchmarks/proxy_correlation.py --flops 0.25 --archs 12
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
from scipy.stats import spearmanr

from agents import fill_budget, project_to_budget, uniform_architecture
from automl_prune.config import SearchConfig
from automl_prune.evaluate import accuracy_and_loss
from automl_prune.pipeline import load_base, make_evaluator
from automl_prune.report import format_table
from automl_prune.runtime import configure_torch
from automl_prune.training import train
from search_spaces import Architecture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg-small")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--flops", type=float, default=0.25)
    parser.add_argument("--archs", type=int, default=12)
    parser.add_argument("--proxy-steps", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    configure_torch()

    config = SearchConfig(model=args.model, dataset=args.dataset, flops=args.flops, cache_dir=args.cache_dir,
                          seed=args.seed, progress=False)
    base = load_base(config)
    space = base.space
    budget = space.flops_budget(args.flops)
    rng = np.random.default_rng(args.seed)
    archs = [uniform_architecture(space, budget)]
    while len(archs) < args.archs:
        ratios = {d.name: float(rng.uniform(d.min_keep / d.size, 1.0)) for d in space.decisions}
        target = {name: ratio * space[name].size for name, ratio in ratios.items()}
        projected = project_to_budget(space, space.from_ratios(ratios), budget)
        # Spend the whole budget so every architecture is compared at the same FLOPs.
        archs.append(Architecture(fill_budget(space, projected.widths, budget, target)))

    bn_eval = make_evaluator(config, base)
    ft_eval = make_evaluator(config.replace(proxy="finetune", proxy_finetune_steps=args.proxy_steps), base)
    rows, bn_scores, ft_scores, truths, bn_time, ft_time, truth_time = [], [], [], [], 0.0, 0.0, 0.0
    for i, arch in enumerate(archs):
        t0 = time.perf_counter()
        bn_acc = bn_eval.evaluate(arch).accuracy
        t1 = time.perf_counter()
        ft_acc = ft_eval.evaluate(arch).accuracy
        t2 = time.perf_counter()
        model = copy.deepcopy(bn_eval.build(arch))
        train(model, base.splits, epochs=args.finetune_epochs, lr=0.01, seed=args.seed, progress=False)
        truth, _ = accuracy_and_loss(model.eval(), base.splits.val.images, base.splits.val.labels, 1000)
        t3 = time.perf_counter()
        bn_time += t1 - t0
        ft_time += t2 - t1
        truth_time += t3 - t2
        bn_scores.append(bn_acc)
        ft_scores.append(ft_acc)
        truths.append(truth)
        flops_ratio = space.flops(arch) / space.full_flops
        rows.append([i, "uniform" if i == 0 else "random", f"{flops_ratio:.3f}", bn_acc, ft_acc, truth])
        print(f"[{i + 1}/{len(archs)}] bn={bn_acc:.4f} ft{args.proxy_steps}={ft_acc:.4f} truth={truth:.4f}",
              flush=True)

    print(format_table(["#", "kind", "FLOPs ratio", "adaptive-BN acc", f"{args.proxy_steps}-step FT acc",
                        f"acc after {args.finetune_epochs:g}-epoch FT"], rows))
    rho_bn = spearmanr(bn_scores, truths).statistic
    rho_ft = spearmanr(ft_scores, truths).statistic
    n = len(archs)
    print()
    print(format_table(
        ["proxy", "Spearman rho vs fine-tuned", "seconds / architecture"],
        [["adaptive-bn", f"{rho_bn:.3f}", f"{bn_time / n:.2f}"],
         [f"finetune ({args.proxy_steps} steps)", f"{rho_ft:.3f}", f"{ft_time / n:.2f}"],
         [f"truth ({args.finetune_epochs:g} epoch)", "1", f"{truth_time / n:.2f}"]],
    ))
    print(f"\n{args.model} on {args.dataset}, {n} architectures at {args.flops:g} FLOPs, "
          f"base val acc {base.meta['val_acc']:.4f}")


if __name__ == "__main__":
    main()
