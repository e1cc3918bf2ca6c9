"""Priors around the uniform architecture: Optuna starts from uniform, random and Optuna draw around it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agents import SEARCHERS, SearchContext
from agents.baselines import RandomSearcher
from agents.budget import around_uniform, uniform_architecture, uniform_ratios
from agents.optuna_mo import OptunaMOSearcher
from agents.optuna_search import OptunaSearcher
from automl_prune.errors import ConfigError
from automl_prune.models import build_model
from search_spaces import Architecture, Budget, SearchSpace
from tests.fakes import FakeMetrics


class FakeEvaluator:
    """Accuracy grows with the channels kept; instant and deterministic."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def evaluate(self, architecture: Architecture) -> FakeMetrics:
        kept = sum(architecture.widths.values()) / sum(d.size for d in self.space.decisions)
        return FakeMetrics(accuracy=0.5 * kept, flops=self.space.flops(architecture))


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.1, model_name="vgg-small")


def _log_distance(space: SearchSpace, arch: Architecture, centre: dict[str, float]) -> float:
    """Mean |log(ratio / uniform ratio)| over groups: 0 for the uniform architecture itself."""
    return float(np.mean([abs(np.log(arch.widths[d.name] / d.size / centre[d.name])) for d in space.decisions]))


@pytest.mark.parametrize("name", ["optuna", "optuna-mo"])
@pytest.mark.parametrize("options", [{}, {"prior": "box"}, {"integer_widths": True}])
def test_uniform_is_the_first_optuna_trial(space: SearchSpace, name: str, options: dict[str, Any],
                                           tmp_path: Path) -> None:
    budget = space.flops_budget(0.25)
    searcher = SEARCHERS.create(name, SearchContext(space, FakeEvaluator(space), Budget(budget), run_dir=tmp_path),
                                **options)
    assert isinstance(searcher, OptunaSearcher)
    history = searcher.search(3).history
    assert history[0].architecture == uniform_architecture(space, budget)
    first = searcher.study.get_trials(deepcopy=False)[0]
    assert first.user_attrs["uniform"] is True and first.user_attrs["projected"] is False
    # a resumed study does not start from uniform a second time
    again = SEARCHERS.create(name, SearchContext(space, FakeEvaluator(space), Budget(budget), run_dir=tmp_path),
                             **options)
    again.search(5)
    trials = again.study.get_trials(deepcopy=False)
    assert len(trials) == 5 and sum(bool(t.user_attrs.get("uniform")) for t in trials) == 1


def test_optuna_startup_trials_concentrate_around_uniform(space: SearchSpace) -> None:
    budget = space.flops_budget(0.25)
    centre = uniform_ratios(space, budget)
    distances = {}
    for prior in ("uniform", "box"):
        searcher = OptunaSearcher(SearchContext(space, FakeEvaluator(space), Budget(budget), seed=0),
                                  n_startup_trials=50, prior=prior)
        searcher.search(21)
        trials = searcher.study.get_trials(deepcopy=False)[1:]  # the random start-up, uniform left out
        distances[prior] = np.mean([_log_distance(space, searcher.architecture_from_params(t.params), centre)
                                    for t in trials])
    assert distances["uniform"] <= np.log(2.0) / 2 + 0.1  # log-uniform on [1/2, 2]: mean |log| is log(2)/2
    assert distances["uniform"] < 0.8 * distances["box"]


def test_random_draws_concentrate_around_uniform(space: SearchSpace) -> None:
    budget = space.flops_budget(0.25)
    centre = uniform_ratios(space, budget)
    centred = RandomSearcher(SearchContext(space, FakeEvaluator(space), Budget(budget)))
    box = RandomSearcher(SearchContext(space, FakeEvaluator(space), Budget(budget)), prior="box")
    near = [_log_distance(space, centred.sample(np.random.default_rng(i)), centre) for i in range(50)]
    far = [_log_distance(space, box.sample(np.random.default_rng(i)), centre) for i in range(50)]
    assert np.mean(near) < 0.8 * np.mean(far)
    # a narrower spread concentrates further, and every evaluated architecture is within budget
    narrow = RandomSearcher(SearchContext(space, FakeEvaluator(space), Budget(budget)), spread=1.2)
    assert np.mean([_log_distance(space, narrow.sample(np.random.default_rng(i)), centre)
                    for i in range(50)]) < 0.5 * np.mean(near)
    history = centred.search(10).history
    assert all(e.metrics["flops"] <= budget for e in history)


def test_around_uniform_with_unit_factors_is_uniform(space: SearchSpace) -> None:
    for fraction in (0.1, 0.25, 0.5):
        budget = space.flops_budget(fraction)
        ones = dict.fromkeys(space.names, 1.0)
        assert around_uniform(space, uniform_ratios(space, budget), ones) == uniform_architecture(space, budget)


@pytest.mark.parametrize("cls", [RandomSearcher, OptunaSearcher, OptunaMOSearcher])
def test_bad_prior_options_name_the_value_and_the_valid_ones(space: SearchSpace, cls: type) -> None:
    budget = space.flops_budget(0.5)
    with pytest.raises(ConfigError, match=r"'gauss'.*\['uniform', 'box'\]"):
        cls(SearchContext(space, FakeEvaluator(space), Budget(budget)), prior="gauss")
    with pytest.raises(ConfigError, match=r"spread=0\.5"):
        cls(SearchContext(space, FakeEvaluator(space), Budget(budget)), spread=0.5)
