"""The contract every registered searcher keeps, run against each of them (new registrations included).

Budget, history and resume are checked the same way for all; the searchers meant to use the budget fully
(one uniform width, and the RL agents with their lower action wall) must also end close to it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from agents import SEARCHERS, SearchContext, Searcher, SearchResult
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator
from search_spaces import Budget, SearchSpace

N = 3  # evaluations before the save; the resumed search goes on to 2 * N
FILLS_THE_BUDGET = {"ddpg", "ppo", "uniform"}
SINGLE_SHOT = {"uniform", "global"}  # searchers whose whole search is one evaluation
# Searchers whose resumed search cannot repeat an uninterrupted one, each with the reason. Everything not
# listed here must continue exactly: same architectures, same order.
NOT_EXACT_ON_RESUME: dict[str, str] = {}
# DMCP's default supernet schedule (400 steps) is for real models; the contract needs only a short one.
OPTIONS: dict[str, dict[str, int]] = {"dmcp": {"steps": 60, "warmup_steps": 20}}


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Evaluator, int]:
    """vgg-small on the synthetic 16x16 data, untrained: rounding lets one uniform width reach ~0.976 of a
    50% budget, and one evaluation takes ~45 ms."""
    splits = load_dataset("synthetic", val_size=100)
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25, model_name="vgg-small")
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                          bn_batches=2, bn_batch_size=64)
    return space, evaluator, space.flops_budget(0.5)


@pytest.fixture(scope="module", params=SEARCHERS.names())
def searcher_name(request: pytest.FixtureRequest) -> str:
    """Every registered searcher; one whose module is not written yet is skipped, not hidden."""
    name = request.param
    try:
        SEARCHERS.get(name)
    except ModuleNotFoundError as error:
        # Only our own module being absent (work in progress) is skipped; a missing dependency still fails.
        if (error.name or "").startswith("agents."):
            pytest.skip(f"searcher {name!r} is registered but its module {error.name} does not exist yet")
        raise
    return name


def _make(name: str, setup: tuple[SearchSpace, Evaluator, int], run_dir: Path) -> Searcher:
    space, evaluator, budget = setup
    context = SearchContext(space, evaluator, Budget(budget), seed=0, run_dir=run_dir)
    return SEARCHERS.create(name, context, **OPTIONS.get(name, {}))


@pytest.fixture(scope="module")
def searched(searcher_name: str, setup, tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchResult, Path]:
    """One search of N evaluations per searcher, shared by the checks that only read its result."""
    run_dir = tmp_path_factory.mktemp(f"contract-{searcher_name}")
    return _make(searcher_name, setup, run_dir).search(N), run_dir


class TestSearcherContract:
    """Run against every searcher in `SEARCHERS`."""

    @staticmethod
    def expected(name: str, n: int) -> int:
        return 1 if name in SINGLE_SHOT else n

    def test_returns_a_valid_architecture_within_budget(self, searcher_name: str, setup, searched) -> None:
        space, _, budget = setup
        result, _ = searched
        space.validate(result.best)
        assert space.flops(result.best) <= budget
        assert result.budget.flops == budget
        assert result.best_metrics["flops"] == space.flops(result.best)
        if searcher_name in FILLS_THE_BUDGET:
            assert space.flops(result.best) >= 0.95 * budget

    def test_history_is_consistent(self, searcher_name: str, setup, searched) -> None:
        space, _, budget = setup
        result, run_dir = searched
        history = result.history
        assert len(history) == self.expected(searcher_name, N)
        assert [e.index for e in history] == list(range(len(history)))
        for entry in history:
            space.validate(entry.architecture)
            assert entry.metrics["flops"] == space.flops(entry.architecture) <= budget
            assert 0.0 <= entry.metrics["accuracy"] <= 1.0
        best_accuracy = max(e.metrics["accuracy"] for e in history)
        assert result.best_metrics["accuracy"] == best_accuracy
        assert any(e.architecture == result.best for e in history if e.metrics["accuracy"] == best_accuracy)
        assert len((run_dir / "history.jsonl").read_text().splitlines()) == len(history)

    def test_save_restore_continues(self, searcher_name: str, setup, tmp_path: Path) -> None:
        _, _, budget = setup
        first = _make(searcher_name, setup, tmp_path)
        first.search(N)
        before = [e.to_dict() for e in first.history.entries]
        first.save(tmp_path / "state")

        resumed = _make(searcher_name, setup, tmp_path)  # same run_dir: history.jsonl is reloaded
        resumed.restore(tmp_path / "state")
        result = resumed.search(2 * N)
        assert len(result.history) == self.expected(searcher_name, 2 * N)
        assert [e.to_dict() for e in result.history[: len(before)]] == before
        assert [e.index for e in result.history] == list(range(len(result.history)))
        assert all(e.metrics["flops"] <= budget for e in result.history)


def test_save_restore_continue_equals_one_uninterrupted_search(
    searcher_name: str, setup, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """N evaluations, save, restore in a new searcher, N more: the 2N of one search, in the same order."""
    if searcher_name in NOT_EXACT_ON_RESUME:  # strict: once it passes, the entry must go
        request.applymarker(pytest.mark.xfail(reason=NOT_EXACT_ON_RESUME[searcher_name], strict=True))
    uninterrupted = _make(searcher_name, setup, tmp_path / "one-go").search(2 * N).history

    first = _make(searcher_name, setup, tmp_path / "resumed")
    first.search(N)
    first.save(tmp_path / "resumed" / "state")
    del first
    resumed = _make(searcher_name, setup, tmp_path / "resumed")
    resumed.restore(tmp_path / "resumed" / "state")
    continued = resumed.search(2 * N).history

    assert [e.architecture for e in continued] == [e.architecture for e in uninterrupted]
    assert [e.metrics["accuracy"] for e in continued] == [e.metrics["accuracy"] for e in uninterrupted]


def test_every_registered_searcher_is_covered() -> None:
    """The fixture reads the registry at collection time, so new searchers join the contract by registering."""
    assert {"uniform", "random", "ddpg", "ppo"} <= set(SEARCHERS.names())
    assert importlib.import_module("agents.rl_ddpg")
    assert importlib.import_module("agents.rl_ppo")
