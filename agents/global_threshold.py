"""Multilayer (global) pruning: one threshold on normalised channel scores over every group, to the budget.

The baseline of "Pruning Filters with L1-norm and Standard Deviation for CNN Compression" (seed 001): instead of
a pruning rate per layer, every channel of every group is scored by the criterion (``--criterion l1-std`` is
the paper's; any criterion that scores channels works), each group's scores are divided by their mean so that
layers of different scale compare, and one threshold keeps every channel at or above it. The threshold is
bisected to the lowest one whose architecture fits the FLOPs budget (more channels kept can only add FLOPs),
with each group held at its allowed minimum. One evaluation, deterministic; widths only.

Simplified: the paper normalises within each layer and prunes in one shot before retraining; here the
normalisation is by the group mean (a coupled group spans several layers) and the pipeline's re-ranking and
fine-tune follow as for every searcher.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.base import SearchContext, Searcher
from search_spaces import Architecture

__all__ = ["GlobalThresholdSearcher"]


class GlobalThresholdSearcher(Searcher):
    """One global threshold on mean-normalised channel scores (see the module docstring)."""

    name = "global"
    searches = ("widths",)

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        from automl_prune.errors import ConfigError
        from automl_prune.prune.criteria import Criterion, get_criterion

        criterion = get_criterion(getattr(self.evaluator, "criterion", "l1"))
        if type(criterion).select is not Criterion.select:  # refused before the run directory is written
            raise ConfigError(f"--agent global needs per-channel scores, but criterion {type(criterion).__name__} "
                              "chooses a set of channels per width; use e.g. --criterion l1-std (the paper's) or l1")

    def _normalised_scores(self) -> dict[str, np.ndarray]:
        from automl_prune.prune.pruning import channel_scores

        model = getattr(self.evaluator, "model", None)
        if model is None:
            raise RuntimeError("the global threshold searcher needs an evaluator with the base model (`.model`)")
        scores = channel_scores(model, self.space.graph, getattr(self.evaluator, "criterion", "l1"),
                                [d.name for d in self.space.decisions],
                                calibration=getattr(self.evaluator, "calibration", None))
        normalised = {}
        for name, values in scores.items():
            values = values.double().clamp_min(0.0)
            mean = float(values.mean())
            normalised[name] = (values / mean if mean > 0 else torch.ones_like(values)).numpy()
        return normalised

    def architecture_at(self, threshold: float, scores: dict[str, np.ndarray]) -> Architecture:
        """Every group keeps its channels scoring at least ``threshold`` (at least its minimum width)."""
        widths = {}
        for decision in self.space.decisions:
            kept = int((scores[decision.name] >= threshold).sum())
            widths[decision.name] = decision.floor(max(kept, decision.min_keep))
        return Architecture(widths)

    def architecture(self) -> Architecture:
        """The architecture at the lowest threshold that meets the FLOPs budget."""
        scores = self._normalised_scores()
        candidates = np.unique(np.concatenate([s for s in scores.values()]))
        candidates = np.append(candidates, np.inf)  # +inf keeps every group at its minimum
        lo, hi = 0, len(candidates) - 1  # the architecture at candidates[hi] fits (minimum widths always do)
        if self.space.flops(self.architecture_at(float(candidates[lo]), scores)) <= self.budget.flops:
            return self.architecture_at(float(candidates[lo]), scores)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.space.flops(self.architecture_at(float(candidates[mid]), scores)) <= self.budget.flops:
                hi = mid
            else:
                lo = mid
        return self.architecture_at(float(candidates[hi]), scores)

    def _run(self) -> None:
        if len(self.history) == 0:
            self._evaluate(self.architecture())
