"""Searchers with bits: every candidate of every searcher within every budget (FLOPs, size, BOPs) for
search=bits and search=both, the best never over budget, projection, one-line errors, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agents import (
    SEARCHERS,
    SearchContext,
    Searcher,
    SearchHistory,
    project_bits,
    uniform_architecture,
    uniform_bits_architecture,
)
from agents.base import HistoryEntry
from automl_prune.errors import BudgetError, ConfigError
from automl_prune.models import build_model
from search_spaces import Architecture, Budget, SearchSpace
from tests.fakes import FakeMetrics

BIT_SEARCHERS = ("uniform", "random", "optuna", "optuna-mo", "ddpg", "ppo", "sensitivity")
OPTIONS: dict[str, dict[str, Any]] = {
    "ddpg": {"warmup_episodes": 2, "batch_size": 16, "device": "cpu"},
    "ppo": {"device": "cpu"},
    "optuna": {"n_startup_trials": 3},
    "optuna-mo": {"population_size": 4},
}
# (FLOPs, size, BOPs) budgets as fractions; `bits` keeps full widths, so its FLOPs budget is the full model.
BUDGETS: dict[str, list[tuple[float, float | None, float | None]]] = {
    "bits": [(1.0, 0.15, None), (1.0, None, 0.02), (1.0, 0.12, 0.01)],
    "both": [(0.5, 0.06, None), (0.5, None, 0.005), (0.3, 0.05, 0.004)],
}


class FakeEvaluator:
    """Accuracy grows with the channels kept and the bits given; instant and deterministic."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def evaluate(self, architecture: Architecture) -> FakeMetrics:
        arch = self.space.complete(architecture)
        kept = sum(arch.widths.values()) / sum(d.size for d in self.space.decisions)
        bits = [min(w, 8) * 2 + min(a, 8) for w, a in arch.bits.values()] or [24]
        # a per-layer weighting, so that the best bits differ between layers
        weights = np.linspace(1.0, 2.0, len(bits))
        quality = float(np.dot(bits, weights) / (24 * weights.sum()))
        return FakeMetrics(accuracy=round(0.4 * kept + 0.6 * quality, 6), flops=self.space.flops(arch))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)


def _make(space: SearchSpace, name: str, mode: str, budgets: tuple[float, float | None, float | None], *,
          seed: int = 0, run_dir: Path | None = None, history: SearchHistory | None = None,
          **kwargs: Any) -> Searcher:
    flops, size, bops = budgets
    budget = Budget.from_fractions(space, flops, size=size, bops=bops)
    context = SearchContext(space, FakeEvaluator(space), budget, seed=seed, run_dir=run_dir, history=history,
                            search=mode)
    return SEARCHERS.create(name, context, **{**OPTIONS.get(name, {}), **kwargs})


def _assert_within(space: SearchSpace, searcher: Searcher, arch: Architecture) -> None:
    space.validate(arch)
    assert space.flops(arch) <= searcher.budget.flops
    if searcher.budget.size_bits is not None:
        assert space.size_bits(arch) <= searcher.budget.size_bits
    if searcher.budget.bops is not None:
        assert space.bops(arch) <= searcher.budget.bops


@pytest.mark.parametrize("mode", ["bits", "both"])
@pytest.mark.parametrize("name", BIT_SEARCHERS)
def test_every_candidate_within_every_budget(space: SearchSpace, name: str, mode: str) -> None:
    n = 6
    for budgets in BUDGETS[mode]:
        for seed in (0, 1):
            searcher = _make(space, name, mode, budgets, seed=seed)
            result = searcher.search(n)
            assert len(result.history) == (1 if name == "uniform" else n)
            for entry in result.history:
                _assert_within(space, searcher, entry.architecture)
                assert set(entry.architecture.bits) == set(space.quantizable_layers)  # every layer quantized
                if mode == "bits":
                    assert entry.architecture.widths == space.full().widths
            _assert_within(space, searcher, result.best)
            assert result.budget.size_bits == searcher.budget.size_bits
            assert result.budget.bops == searcher.budget.bops


def test_widths_search_is_unchanged_by_default(space: SearchSpace) -> None:
    """Defaults are the float width search: no bits in any candidate, no size or BOPs budget."""
    for name in BIT_SEARCHERS:
        context = SearchContext(space, FakeEvaluator(space), Budget(space.flops_budget(0.5)), seed=0)
        searcher = SEARCHERS.create(name, context, **OPTIONS.get(name, {}))
        assert searcher.search_mode == "widths" and searcher.budget.size_bits is None
        assert all(not e.architecture.bits for e in searcher.search(2).history)


def test_uniform_takes_the_highest_uniform_bits_that_fit(space: SearchSpace) -> None:
    result = _make(space, "uniform", "bits", (1.0, 0.15, None)).search(1)
    fitting = [b for b in space.bit_choices if space.size_fraction(space.uniform_bits(b)) <= 0.15]
    assert result.best == space.uniform_bits(max(fitting))
    both = _make(space, "uniform", "both", (0.5, None, None)).search(1)
    assert both.best == space.uniform_bits(max(space.bit_choices), architecture=Architecture(both.best.widths))
    assert both.best.widths == uniform_architecture(space, space.flops_budget(0.5)).widths


def test_project_bits_takes_bits_off_and_narrows_widths_when_needed(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    size = space.size_budget(0.12)
    for _ in range(10):
        drawn = space.sample_bits(rng)
        projected = project_bits(space, drawn, size, None)
        assert space.size_bits(projected) <= size
        assert projected.widths == drawn.widths  # full widths fit at the lowest bits: only bits move
        assert all(projected.bits[k][0] <= drawn.bits[k][0] and projected.bits[k][1] <= drawn.bits[k][1]
                   for k in drawn.bits)
    tight = space.size_budget(0.05)  # below full widths at the lowest bits: widths must narrow
    projected = project_bits(space, space.sample_bits(rng), tight, None)
    assert space.size_bits(projected) <= tight and space.flops(projected) < space.full_flops
    within = space.uniform_bits(2)
    assert project_bits(space, within, space.size_budget(0.5), None) == within  # within budget: unchanged
    assert space.size_bits(uniform_bits_architecture(space, space.full(), tight, None)) <= tight


def test_best_is_never_over_a_bit_budget(space: SearchSpace) -> None:
    """A more accurate entry over the size budget (here from another searcher in a shared history) is skipped."""
    history = SearchHistory()
    over = space.full()  # float: far over any size budget, and the most accurate
    history.append(HistoryEntry(0, over, {"accuracy": 1.0, "flops": space.full_flops}, "other", 0.0))
    searcher = _make(space, "random", "bits", (1.0, 0.15, None), history=history)
    result = searcher.search(3)
    assert result.best != over
    assert space.size_bits(result.best) <= searcher.budget.size_bits
    assert history.best(space.full_flops) is not None and history.best(space.full_flops).architecture == over


def test_unreachable_budgets_and_bad_settings_are_one_line_errors(space: SearchSpace) -> None:
    evaluator = FakeEvaluator(space)
    flops = space.flops_budget(0.5)
    cases: list[tuple[type[Exception], str, Budget, str]] = [
        (BudgetError, "both", Budget(flops, size_bits=space.size_bits(space.lowest_bits()) - 1), "uniform"),
        (BudgetError, "both", Budget(flops, bops=space.bops(space.lowest_bits()) - 1), "optuna"),
        (BudgetError, "bits", Budget(flops, size_bits=space.size_budget(0.5)), "random"),  # FLOPs < full
        (ConfigError, "widths", Budget(flops, size_bits=space.size_budget(0.5)), "random"),
        (ConfigError, "nope", Budget(flops), "uniform"),
        (ConfigError, "bits", Budget(flops), "dmcp"),
        (ConfigError, "both", Budget(flops), "global"),
    ]
    for error_type, search, budget, name in cases:
        with pytest.raises(error_type) as error:
            SEARCHERS.create(name, SearchContext(space, evaluator, budget, seed=0, search=search))
        assert "\n" not in str(error.value) and str(error.value)
    with pytest.raises(BudgetError):
        _make(space, "ppo", "bits", (1.0, 0.10, None))  # full widths at 2 bits need ~0.109


def test_optuna_mo_minimizes_the_given_budget(space: SearchSpace, tmp_path: Path) -> None:
    searcher = _make(space, "optuna-mo", "both", (0.5, 0.06, 0.005), run_dir=tmp_path)
    assert searcher.objective == "bops"
    assert _make(space, "optuna-mo", "bits", (1.0, 0.15, None)).objective == "size_bits"
    assert _make(space, "optuna-mo", "both", (0.5, None, None)).objective == "flops"
    result = searcher.search(8)
    front = result.extra["pareto_front"]
    assert front and all(p["bops"] <= searcher.budget.bops for p in front)
    assert [p["bops"] for p in front] == sorted(p["bops"] for p in front)
    trial_costs = sorted(t.values[1] for t in searcher.study.trials if t.values)
    assert trial_costs == sorted(float(space.bops(e.architecture)) for e in result.history)
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert data["objective"] == "bops" and data["budget"] == searcher.budget.bops
    assert (tmp_path / "pareto.png").exists()


@pytest.mark.parametrize("mode", ["bits", "both"])
@pytest.mark.parametrize("name", ["random", "optuna", "optuna-mo", "ddpg", "ppo", "sensitivity"])
def test_save_restore_continue_equals_one_uninterrupted_search(space: SearchSpace, tmp_path: Path, name: str,
                                                               mode: str) -> None:
    budgets = BUDGETS[mode][-1]
    n = 3
    uninterrupted = _make(space, name, mode, budgets, run_dir=tmp_path / "one-go").search(2 * n).history

    first = _make(space, name, mode, budgets, run_dir=tmp_path / "resumed")
    first.search(n)
    first.save(tmp_path / "resumed" / "state")
    del first
    resumed = _make(space, name, mode, budgets, run_dir=tmp_path / "resumed")
    resumed.restore(tmp_path / "resumed" / "state")
    continued = resumed.search(2 * n).history

    assert [e.architecture for e in continued] == [e.architecture for e in uninterrupted]
    assert [e.metrics["accuracy"] for e in continued] == [e.metrics["accuracy"] for e in uninterrupted]


def test_rl_refuses_to_resume_another_search(space: SearchSpace, tmp_path: Path) -> None:
    first = _make(space, "ppo", "bits", BUDGETS["bits"][0], run_dir=tmp_path)
    first.search(2)
    first.save(tmp_path / "state")
    other = _make(space, "ppo", "both", BUDGETS["both"][0], run_dir=tmp_path / "other")
    with pytest.raises(ValueError, match="search"):
        other.restore(tmp_path / "state")
