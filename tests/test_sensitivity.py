"""Sensitivity-profile searcher: the profile, the bisected threshold, resume without re-profiling, the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from agents import SEARCHERS, SearchContext
from agents.budget import uniform_architecture
from agents.sensitivity import SensitivitySearcher
from automl_prune.errors import ConfigError
from automl_prune.models import build_model
from search_spaces import Architecture, Budget, SearchSpace
from tests.fakes import FakeMetrics


class SensitiveEvaluator:
    """Accuracy ``0.9 - sum_g weight_g * (1 - ratio_g)^2``: the later groups matter most. Counts its calls."""

    def __init__(self, space: SearchSpace, fail_after: int | None = None) -> None:
        self.space = space
        self.weights = {d.name: 0.05 * (i + 1) for i, d in enumerate(space.decisions)}
        self.calls: list[Architecture] = []
        self.fail_after = fail_after

    def evaluate(self, architecture: Architecture) -> FakeMetrics:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(architecture)
        loss = sum(w * (1 - architecture.widths[d.name] / d.size) ** 2
                   for d, w in zip(self.space.decisions, self.weights.values(), strict=True))
        return FakeMetrics(accuracy=max(0.0, 0.9 - loss), flops=self.space.flops(architecture))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.1, model_name="vgg-small")


def test_profile_points_narrow_one_group_each_and_stay_out_of_the_history(space: SearchSpace) -> None:
    budget = space.flops_budget(0.3)
    evaluator = SensitiveEvaluator(space)
    searcher = SensitivitySearcher(SearchContext(space, evaluator, Budget(budget)), steps=5)
    plan = searcher.profile_plan()
    assert plan[0].architecture == space.full()
    for point in plan[1:]:
        narrowed = {k for k, v in point.architecture.widths.items() if v != space[k].size}
        assert narrowed == {point.group} and point.architecture.widths[point.group] == point.width
    for d in space.decisions:  # 20% steps and the minimum
        assert d.min_keep in {p.width for p in plan if p.group == d.name}
    result = searcher.search(4)
    assert len(evaluator.calls) == len(plan) + 4
    assert len(result.history) == 4 and all(e.metrics["flops"] <= budget for e in result.history)
    assert searcher.pending_profile() == []


def test_threshold_is_the_smallest_that_fits_and_the_budget_is_spent(space: SearchSpace) -> None:
    budget = space.flops_budget(0.3)
    searcher = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(budget)), steps=10)
    result = searcher.search(1)
    best = result.history[0].architecture
    assert result.best == best and space.flops(best) <= budget
    assert space.flops(best) >= 0.95 * budget
    drops = searcher.drops()
    at = searcher.architecture_at(searcher.threshold)
    assert space.flops(at) <= budget
    smaller = [v for per in drops.values() for v in per.values() if v < searcher.threshold]
    if smaller:  # the next smaller threshold would not fit
        assert space.flops(searcher.architecture_at(max(smaller))) > budget
    # the least sensitive group (the first) is pruned hardest, the most sensitive (the last) least
    ratios = [best.widths[d.name] / d.size for d in space.decisions]
    assert ratios[0] < ratios[-1]
    assert result.extra["threshold"] == searcher.threshold and result.extra["steps"] == 10


def test_later_evaluations_hedge_with_uniform_and_blends(space: SearchSpace) -> None:
    budget = space.flops_budget(0.3)
    history = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(budget)),
                                  steps=5).search(8).history
    archs = [e.architecture for e in history]
    assert archs[1] == uniform_architecture(space, budget)
    assert len({a.key() for a in archs}) == len(archs)
    assert all(e.metrics["flops"] <= budget for e in history)


def test_profile_is_a_batch_in_any_order(space: SearchSpace) -> None:
    budget = space.flops_budget(0.3)
    in_order = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(budget)), steps=5)
    in_order.search(1)
    evaluator = SensitiveEvaluator(space)
    batch = SensitivitySearcher(SearchContext(space, evaluator, Budget(budget)), steps=5)
    batch.n_evaluations = 1
    for point in reversed(batch.pending_profile()):  # as a parallel runner might finish them
        batch.record_profile(point, evaluator.evaluate(point.architecture).to_dict())
    assert batch.sensitivity_architecture() == in_order.sensitivity_architecture()


def test_killed_profile_resumes_without_re_evaluating(space: SearchSpace, tmp_path: Path) -> None:
    budget = space.flops_budget(0.3)
    killed_context = SearchContext(space, SensitiveEvaluator(space, fail_after=7), Budget(budget), run_dir=tmp_path)
    killed = SensitivitySearcher(killed_context, steps=5)
    with pytest.raises(KeyboardInterrupt):
        killed.search(3)
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert sum(len(v) for v in saved["groups"].values()) + 1 == 7
    evaluator = SensitiveEvaluator(space)
    resumed = SensitivitySearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), steps=5)
    result = resumed.search(3)
    n_plan = len(resumed.profile_plan())
    assert len(evaluator.calls) == n_plan - 7 + 3
    assert not any(a in evaluator.calls for a in killed.evaluator.calls)  # type: ignore[attr-defined]
    fresh = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(budget)), steps=5).search(3)
    assert [e.architecture for e in result.history] == [e.architecture for e in fresh.history]
    # a finished search reopened does nothing; asked for more it only adds candidates
    again = SensitiveEvaluator(space)
    SensitivitySearcher(SearchContext(space, again, Budget(budget), run_dir=tmp_path), steps=5).search(5)
    assert len(again.calls) == 2


@pytest.mark.parametrize(("options", "before", "after"), [({}, 3, 6), ({"steps": 10}, 3, 40)])
def test_save_restore_continue_equals_uninterrupted(space: SearchSpace, tmp_path: Path, options: dict[str, Any],
                                                    before: int, after: int) -> None:
    budget = space.flops_budget(0.4)
    first = SEARCHERS.create("sensitivity", SearchContext(space, SensitiveEvaluator(space), Budget(budget), seed=3),
                             **options)
    first.search(before)
    first.save(tmp_path / "state")
    evaluator = SensitiveEvaluator(space)
    second = SEARCHERS.create("sensitivity", SearchContext(space, evaluator, Budget(budget), seed=3), **options)
    for entry in first.history.entries:
        second.history.append(entry)
    second.restore(tmp_path / "state")
    continued = second.search(after).history
    assert len(evaluator.calls) == after - before  # no profile point evaluated twice
    whole = SEARCHERS.create("sensitivity", SearchContext(space, SensitiveEvaluator(space), Budget(budget), seed=3),
                             **options)
    assert [e.architecture for e in continued] == [e.architecture for e in whole.search(after).history]


def test_grid_adapts_to_the_evaluation_budget(space: SearchSpace) -> None:
    searcher = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(space.flops_budget(0.5))))
    sizes = {steps: len(searcher.profile_plan(steps)) for steps in (5, 10, 20)}
    assert sizes[5] < sizes[10] < sizes[20]
    assert searcher.grid_steps(1) == 5  # too few evaluations for any grid: the coarsest
    assert searcher.grid_steps(-(-sizes[10] // 2)) == 10
    assert searcher.grid_steps(-(-sizes[20] // 2)) == 20
    assert searcher.grid_steps(-(-sizes[20] // 2) - 1) == 10
    # the grids nest: a finer profile only adds points
    coarse = {(p.group, p.width) for p in searcher.profile_plan(5)}
    assert coarse <= {(p.group, p.width) for p in searcher.profile_plan(10)}
    assert SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(space.flops_budget(0.5))),
                               steps=7).grid_steps(1) == 7


def test_profile_file_and_plot(space: SearchSpace, tmp_path: Path) -> None:
    context = SearchContext(space, SensitiveEvaluator(space), Budget(space.flops_budget(0.3)), run_dir=tmp_path)
    searcher = SensitivitySearcher(context, steps=5)
    result = searcher.search(2)
    data = json.loads((tmp_path / "sensitivity.json").read_text())
    assert set(data["groups"]) == set(space.names) and data["full"]["accuracy"] == pytest.approx(0.9)
    png = Path(result.extra["profile_plot"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = build_model("tiny-cnn", 1, 10, 16)
    other_space = SearchSpace.from_model(other, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    other_context = SearchContext(other_space, SensitiveEvaluator(other_space), Budget(other_space.full_flops),
                                  run_dir=tmp_path)
    with pytest.raises(ValueError, match="another search space"):
        SensitivitySearcher(other_context)


def test_bad_options_name_the_value(space: SearchSpace) -> None:
    with pytest.raises(ConfigError, match=r"steps=1\b"):
        SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(space.flops_budget(0.5))), steps=1)
    with pytest.raises(ConfigError, match=r"profile_factor=0"):
        SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(space.flops_budget(0.5))),
                            profile_factor=0)


class ParallelEvaluator(SensitiveEvaluator):
    """As `SensitiveEvaluator`, with three workers: records the size of each batch it is given."""

    parallelism = 3

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        self.batches: list[int] = []

    def evaluate_many(self, architectures: list[Architecture]) -> list[FakeMetrics]:
        self.batches.append(len(architectures))
        return [self.evaluate(a) for a in architectures]


def test_batches_follow_the_evaluators_workers_and_change_nothing(space: SearchSpace) -> None:
    budget = space.flops_budget(0.3)
    parallel = ParallelEvaluator(space)
    batched = SensitivitySearcher(SearchContext(space, parallel, Budget(budget)), steps=5).search(10).history
    serial = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), Budget(budget)),
                                 steps=5).search(10).history
    assert [e.architecture for e in batched] == [e.architecture for e in serial]
    assert max(parallel.batches) == 3 and sum(parallel.batches) == len(parallel.calls)


def test_a_profile_being_measured_shows_a_bar_with_its_count_and_nothing_when_quiet(
        space: SearchSpace, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A profile can take an hour on a CPU: its points advance a bar (with an ETA) on stderr; a resumed run counts
    only the points still pending, and ``quiet`` prints nothing."""
    budget = Budget(space.flops_budget(0.3))
    killed = SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space, fail_after=5), budget,
                                               run_dir=tmp_path), steps=5)
    n_plan = len(killed.profile_plan())
    with pytest.raises(KeyboardInterrupt):
        killed.search(1)
    capfd.readouterr()
    SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), budget, run_dir=tmp_path), steps=5).search(1)
    err = capfd.readouterr().err
    assert f"measuring {n_plan - 5} of {n_plan} points" in err
    assert "sensitivity: width profile" in err and f"{n_plan - 5}/{n_plan - 5}" in err and "acc=" in err
    SensitivitySearcher(SearchContext(space, SensitiveEvaluator(space), budget), steps=5, quiet=True).search(1)
    assert capfd.readouterr().err == ""
