"""`Budget`: the limits of a run in absolute units (from fractions, latency stated), its checks, and the
`SearchContext` every searcher is built with."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from agents import SEARCHERS, SearchContext
from automl_prune.cost.flops import CostModel
from automl_prune.cost.latency import latency_budget
from automl_prune.errors import BudgetError, ConfigError
from automl_prune.models import build_model
from search_spaces import Architecture, Budget, SearchSpace
from tests.fakes import FakeMetrics


class _Nanoseconds(CostModel):
    """A width cost in nanoseconds (the FLOPs, relabelled): what a latency cost model looks like to a budget."""

    unit = "ns"


class _Evaluator:
    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def evaluate(self, architecture: Architecture) -> FakeMetrics:
        return FakeMetrics(accuracy=0.5, flops=self.space.flops(architecture))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)


def test_from_fractions_gives_the_space_limits(space: SearchSpace) -> None:
    budget = Budget.from_fractions(space, 0.5, size=0.06, bops=0.005)
    assert budget == Budget(space.flops_budget(0.5), space.size_budget(0.06), space.bops_budget(0.005))
    assert budget.width_unit == "FLOPs" and not budget.latency and budget.has_bit_limits
    assert Budget.from_fractions(space) == Budget(space.full_flops)
    assert not Budget(space.full_flops).has_bit_limits
    with pytest.raises(BudgetError):
        Budget.from_fractions(space, 0.5, size=1e-6)


def test_a_latency_budget_states_its_unit(space: SearchSpace) -> None:
    lat = space.with_width_cost(_Nanoseconds(space.graph))
    budget = Budget.from_fractions(lat, latency=0.7)
    assert budget.latency and budget.width_unit == "ns" and budget.flops == latency_budget(lat, 0.7)
    budget.check(lat)
    with pytest.raises(ConfigError, match="width cost"):
        budget.check(space)  # a latency limit on a FLOPs space
    with pytest.raises(ConfigError, match="width cost"):
        Budget(space.full_flops).check(lat)  # and a FLOPs limit on a latency space
    with pytest.raises(ConfigError, match="predicted latency"):
        Budget.from_fractions(space, latency=0.7)
    with pytest.raises(ConfigError, match="replaces the FLOPs budget"):
        Budget.from_fractions(lat, 0.5, latency=0.7)


def test_costs_violations_and_fits(space: SearchSpace) -> None:
    budget = Budget.from_fractions(space, 0.5, size=0.06, bops=0.005)
    full = space.full()  # the float model: over every limit
    assert budget.costs(space, full) == {"flops": space.full_flops, "size_bits": space.full_size_bits,
                                         "bops": space.bops(full)}
    assert budget.violations(space, full) == [
        f"{space.full_flops:,} FLOPs over the FLOPs budget of {budget.flops:,}",
        f"{space.full_size_bits:,} bits of model size over the size budget of {budget.size_bits:,}",
        f"{space.bops(full):,} BOPs over the BOPs budget of {budget.bops:,}",
    ]
    assert not budget.fits(space, full)
    assert budget.fits(space, space.lowest_bits())
    assert Budget(budget.flops).costs(space, full) == {"flops": space.full_flops}


def test_check_refuses_what_no_architecture_can_meet(space: SearchSpace) -> None:
    with pytest.raises(BudgetError, match=rf"budget_flops={space.min_flops - 1} < {space.min_flops}"):
        Budget(space.min_flops - 1).check(space)
    sized = Budget(space.flops_budget(0.5), size_bits=space.size_budget(0.5))
    with pytest.raises(ConfigError, match="need search='bits' or 'both'"):
        sized.check(space, "widths")
    with pytest.raises(BudgetError, match="keeps every channel"):
        sized.check(space, "bits")
    sized.check(space, "both")
    Budget(space.full_flops, size_bits=space.size_budget(0.5)).check(space, "bits")
    with pytest.raises(BudgetError, match="cannot be met"):
        Budget(space.full_flops, bops=space.bops(space.lowest_bits()) - 1).check(space, "both")


def test_plain_data_round_trip_and_frozen() -> None:
    budget = Budget(1000, 64, None, width_unit="ns")
    assert Budget.from_dict(json.loads(json.dumps(budget.to_dict()))) == budget
    assert Budget.from_dict({"flops": 5}) == Budget(5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        budget.flops = 1  # type: ignore[misc]


def test_a_searcher_is_built_from_its_context_and_its_own_options(space: SearchSpace) -> None:
    context = SearchContext(space, _Evaluator(space), Budget.from_fractions(space, 0.5), seed=3)
    searcher = SEARCHERS.create("random", context, spread=1.5)
    assert searcher.budget is context.budget and searcher.seed == 3 and searcher.search_mode == "widths"
    assert searcher.violations(space.full()) == context.budget.violations(space, space.full())
    assert searcher.search(2).budget == context.budget
    with pytest.raises(TypeError):
        SEARCHERS.create("random", context, seed=1)  # context fields are not options
