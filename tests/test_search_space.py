"""Search space: bounds, rounding, validation and JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from automl_prune.errors import BudgetError, InvalidArchitectureError
from automl_prune.models import build_model
from search_spaces import Architecture, SearchSpace


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    model = build_model("tiny-resnet", in_channels=1, num_classes=10, input_size=28)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 28, 28), min_keep_ratio=0.25, round_to=2,
                                  model_name="tiny-resnet")


def test_decisions_have_bounds_and_rounding(space: SearchSpace) -> None:
    for d in space.decisions:
        assert 1 <= d.min_keep <= d.size
        assert d.min_keep % 2 == 0 or d.min_keep == d.size
        choices = d.choices()
        assert choices[0] == d.min_keep and choices[-1] == d.size
        assert all(d.allows(c) for c in choices)
        assert d.round(d.size * 0.5) in choices


def test_space_json_round_trip_keeps_costs(space: SearchSpace, tmp_path) -> None:
    space.save(tmp_path / "space.json")
    again = SearchSpace.load(tmp_path / "space.json")
    rng = np.random.default_rng(0)
    for _ in range(10):
        arch = space.sample(rng)
        assert again.costs(arch) == space.costs(arch)
    assert again.names == space.names


def test_architecture_json_round_trip(space: SearchSpace) -> None:
    arch = space.sample(np.random.default_rng(3))
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.key() == arch.key()
    assert json.loads(arch.to_json())["widths"] == arch.widths


def test_validation_names_group_and_range(space: SearchSpace) -> None:
    name = space.names[0]
    size = space[name].size
    with pytest.raises(InvalidArchitectureError, match=rf"{name}.*between {space[name].min_keep} and {size}"):
        space.validate(Architecture({name: size + 1}))
    with pytest.raises(InvalidArchitectureError, match="another model"):
        space.validate(Architecture({"features.99": 3}))


def test_budget_fraction_checked(space: SearchSpace) -> None:
    assert space.flops_budget(0.5) == int(0.5 * space.full_flops)
    with pytest.raises(BudgetError, match="fraction in"):
        space.flops_budget(1.5)
    with pytest.raises(BudgetError, match="below what this search space can reach"):
        space.flops_budget(1e-4)
