"""The peer baseline: Torch-Pruning's global magnitude pruning, its ratio bisected onto a FLOPs budget.

What most users would reach for instead of a search: `torch_pruning.pruner.MetaPruner` with
``global_pruning=True`` and `torch_pruning.importance.MagnitudeImportance` (L2 of each channel group,
normalised per group by its mean, so scores compare across layers), one shot. Its ``pruning_ratio`` is the
fraction of channels removed network-wide, not of FLOPs, so it is bisected until the pruned model's FLOPs
(2 x MACs of conv and linear, counted by `torch.utils.flop_counter.FlopCounterMode`, the same counting as the
project's `CostModel`) are within the budget and as close to it as bisection gets.

Quick check by hand (prunes the cached vgg-small base and prints FLOPs and the adaptive-BN accuracy):

    .venv/bin/python benchmarks/tp_global.py --model vgg-small --flops 0.5 0.25 0.1
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "tp_global_prune"]


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``example_input`` (2 x MACs of conv and linear)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _output_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The last conv/linear module in definition order: its outputs are the classes and must stay."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers[-1:]


def _prune_copy(model: nn.Module, example_input: torch.Tensor, ratio: float, *, p: int, max_pruning_ratio: float,
                ignored: list[str]) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    names = dict(pruned.named_modules())
    pruner = tp.pruner.MetaPruner(
        pruned,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=p),
        global_pruning=True,
        pruning_ratio=ratio,
        max_pruning_ratio=max_pruning_ratio,
        ignored_layers=[names[n] for n in ignored],
    )
    pruner.step()
    return pruned


def tp_global_prune(
    model: nn.Module,
    example_input: torch.Tensor,
    flops_fraction: float,
    *,
    p: int = 2,
    max_pruning_ratio: float = 0.9,
    ignored_layers: list[nn.Module] | None = None,
    max_steps: int = 30,
    verbose: bool = False,
) -> nn.Module:
    """Prune a copy of ``model`` with Torch-Pruning's global magnitude pruning to ``flops_fraction`` of its FLOPs.

    The global ``pruning_ratio`` is bisected: the result is the pruned model with the most FLOPs among those
    within ``floor(flops_fraction * full FLOPs)``, the budget the project uses (`SearchSpace.flops_budget`).
    Bisection stops when the interval is below one channel's worth of ratio or after ``max_steps``.

    Args:
        model: The trained model (not modified).
        example_input: One batch of inputs for tracing and FLOPs counting (batch size 1 gives per-sample FLOPs).
        flops_fraction: The budget, a fraction of the model's FLOPs in (0, 1].
        p: Norm of `MagnitudeImportance` (2 is Torch-Pruning's default).
        max_pruning_ratio: Torch-Pruning's cap on the ratio, and the upper end of the bisection (0.9 mirrors the
            project's default ``min_keep_ratio`` of 0.1; in global mode Torch-Pruning checks it per group before
            pruning, so a single layer can still end narrower).
        ignored_layers: Modules never pruned; default the last conv/linear (the classifier's outputs).
        max_steps: Upper bound on bisection steps.
        verbose: Print each bisection step.

    Returns:
        A new, physically smaller model in eval mode with ``count_flops <= budget``.

    Raises:
        ValueError: ``flops_fraction`` outside (0, 1], or no ratio up to ``max_pruning_ratio`` meets the budget.
    """
    if not 0.0 < flops_fraction <= 1.0:
        raise ValueError(f"`0 < flops_fraction <= 1` must hold, but got {flops_fraction=}")
    model = model.eval()
    full = count_flops(model, example_input)
    budget = math.floor(flops_fraction * full)
    if full <= budget:
        return copy.deepcopy(model)
    module_names = {id(m): n for n, m in model.named_modules()}
    keep = ignored_layers if ignored_layers is not None else _output_layers(model, example_input)
    ignored = [module_names[id(m)] for m in keep]
    channels = sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                   for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))

    def prune(ratio: float) -> tuple[nn.Module, int]:
        pruned = _prune_copy(model, example_input, ratio, p=p, max_pruning_ratio=max_pruning_ratio, ignored=ignored)
        return pruned, count_flops(pruned, example_input)

    # A global ratio of 1.0 would mark every channel of a group, which Torch-Pruning then skips (nothing pruned):
    # the bisection's upper end is the cap itself.
    lo, hi = 0.0, max_pruning_ratio
    top, top_flops = prune(hi)
    if top_flops > budget:
        raise ValueError(f"global pruning up to max_pruning_ratio={max_pruning_ratio} leaves {top_flops:,} FLOPs, "
                         f"over the budget {budget:,} ({flops_fraction:g} of {full:,}); raise max_pruning_ratio")
    best, best_flops = top, top_flops
    for step in range(max_steps):
        if hi - lo < 0.5 / channels:
            break
        mid = (lo + hi) / 2
        pruned, flops = prune(mid)
        if verbose:
            print(f"  bisection {step}: ratio {mid:.5f} -> {flops / full:.4f} of FLOPs", flush=True)
        if flops <= budget:
            hi = mid
            if flops > best_flops:
                best, best_flops = pruned, flops
        else:
            lo = mid
    assert best is not None
    return best.eval()


def main() -> None:
    """Prune the cached base model at each budget; print FLOPs ratio, seconds and adaptive-BN val accuracy."""
    from automl_prune.config import SearchConfig
    from automl_prune.run.base_model import load_base
    from automl_prune.scoring.evaluator import accuracy_and_loss, recalibrate_batch_norm
    from automl_prune.train.runtime import configure_torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg-small")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--flops", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--cache-dir", default="runs/cache")
    args = parser.parse_args()
    configure_torch()
    base = load_base(SearchConfig(model=args.model, dataset=args.dataset, cache_dir=args.cache_dir, progress=False))
    example = base.splits.val.images[:1]
    full = count_flops(base.model, example)
    print(f"{args.model}: {full:,} FLOPs by FlopCounterMode, {base.space.full_flops:,} by the project's cost model")
    generator = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(base.splits.train.images), generator=generator)[:1280]
    calibration = list(base.splits.train.images[idx].split(128))
    for fraction in args.flops:
        start = time.perf_counter()
        pruned = tp_global_prune(base.model, example, fraction, verbose=True)
        seconds = time.perf_counter() - start
        flops = count_flops(pruned, example)
        recalibrate_batch_norm(pruned, calibration)
        acc, _ = accuracy_and_loss(pruned, base.splits.val.images, base.splits.val.labels, 1000)
        widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
        print(f"{fraction:g}: {flops / full:.4f} of FLOPs (budget {math.floor(fraction * full):,}, got {flops:,}), "
              f"{seconds:.1f} s, adaptive-BN val acc {100 * acc:.2f}%, conv widths {widths}", flush=True)


if __name__ == "__main__":
    main()
