"""The sensitivity searcher for bits: the exact knapsack, the measured profile, one cached profile for every
budget, and the one-shot answer in the re-ranking ladder."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from agents import SEARCHERS, SearchContext, uniform_bits_architecture
from agents.bit_knapsack import allocate_bits, bit_costs, bit_options, solve_multiple_choice
from agents.bit_profile import FULL, bit_drops
from agents.one_shot import cached_one_shot
from agents.sensitivity import SensitivitySearcher
from automl_prune.data.datasets import load_dataset
from automl_prune.errors import BudgetError
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator
from automl_prune.scoring.ladder import select_candidates
from search_spaces import Architecture, Budget, SearchSpace


class CountingEvaluator(Evaluator):
    """The real evaluator (fake quantization, calibration, adaptive BN), counting what it computes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[Architecture] = []

    def evaluate(self, architecture: Architecture) -> Any:
        self.calls.append(architecture)
        return super().evaluate(architecture)


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Any]:
    """tiny-resnet (7 conv/linear layers) briefly trained on the synthetic 16x16 data, 200 validation images."""
    from automl_prune.train.training import train

    splits = load_dataset("synthetic", val_size=200, seed=0)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    train(model, splits, epochs=1, lr=0.05, batch_size=64, seed=0, progress=False, max_steps=40)
    model = model.to(memory_format=torch.contiguous_format).eval()
    space = SearchSpace.from_model(model, splits.val.images[:1], min_keep_ratio=0.25, model_name="tiny-resnet")
    return space, (model, splits)


def _evaluator(setup: tuple[SearchSpace, Any]) -> CountingEvaluator:
    space, (model, splits) = setup
    return CountingEvaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                             bn_batches=2, bn_batch_size=64, eval_batch_size=200, device="cpu")


# the knapsack ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_knapsack_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers, choices, n_limits = int(rng.integers(3, 5)), int(rng.integers(3, 5)), int(rng.integers(1, 3))
    values = [rng.uniform(0, 1, choices) for _ in range(layers)]
    costs = [[rng.integers(0, 50, choices) for _ in range(layers)] for _ in range(n_limits)]
    limits = [int(rng.integers(0, 40 * layers)) for _ in range(n_limits)]
    best: tuple[float, tuple[int, ...]] | None = None
    for combo in itertools.product(range(choices), repeat=layers):
        if all(sum(int(c[g][k]) for g, k in enumerate(combo)) <= lim for c, lim in zip(costs, limits, strict=True)):
            value = sum(float(values[g][k]) for g, k in enumerate(combo))
            best = (value, combo) if best is None or value < best[0] else best
    got = solve_multiple_choice(values, costs, limits)
    if best is None:
        assert got is None
        return
    assert got is not None
    assert all(sum(int(c[g][k]) for g, k in enumerate(got)) <= lim for c, lim in zip(costs, limits, strict=True))
    assert sum(float(values[g][k]) for g, k in enumerate(got)) == pytest.approx(best[0], abs=1e-9)


def test_cost_table_is_the_space_count_exactly(setup: tuple[SearchSpace, Any]) -> None:
    space = setup[0]
    rng = np.random.default_rng(0)
    for float_choice in (False, True):
        options = bit_options(space, float_choice=float_choice)
        for _ in range(20):
            widths = space.sample(rng)
            table = bit_costs(space, widths.widths, options)
            choice = [int(rng.integers(len(o))) for o in table.options]
            arch = widths.with_bits(table.bits(choice))
            assert table.size_bits(choice) == space.size_bits(arch)
            assert table.total_bops(choice) == space.bops(arch)


def test_allocation_is_exact_on_random_drops_and_refuses_the_impossible(setup: tuple[SearchSpace, Any]) -> None:
    space = setup[0]
    rng = np.random.default_rng(1)
    options = bit_options(space)
    drops = {layer: {p: float(rng.uniform()) * (18 - min(p[0], 8) - min(p[1], 8)) for p in pairs}
             for layer, pairs in options.items()}
    uniform4 = space.uniform_bits(4)
    budget = Budget(space.full_flops, size_bits=space.size_bits(uniform4), bops=space.bops(uniform4))
    arch = allocate_bits(space, space.full(), budget, drops)
    assert budget.violations(space, arch) == []
    total = sum(drops[layer][arch.bits[layer]] for layer in options)
    assert total <= sum(drops[layer][(4, 4)] for layer in options) + 1e-12  # at least as good as uniform 4/4
    lowest = space.lowest_bits(space.full())
    with pytest.raises(BudgetError):
        allocate_bits(space, space.full(), Budget(space.full_flops, size_bits=space.size_bits(lowest) - 1), drops)


# the searcher ---------------------------------------------------------------------------------------------------
def test_bits_search_meets_the_size_budget_by_the_independent_count(setup: tuple[SearchSpace, Any],
                                                                     tmp_path: Path) -> None:
    """``--agent sensitivity --search bits --size 0.125``: the profile is measured (one layer at a time), the
    one-shot answer is the first evaluation and every candidate is within the size budget."""
    space = setup[0]
    evaluator = _evaluator(setup)
    budget = Budget.from_fractions(space, 1.0, size=0.125)
    context = SearchContext(space, evaluator, budget, run_dir=tmp_path / "run", search="bits")
    searcher = SEARCHERS.create("sensitivity", context, quiet=True)
    plan = searcher.bit_profile_plan()
    assert len(plan) == 1 + len(space.quantizable_layers) * 2 * len(space.bit_choices)
    for point in plan[1:]:  # one layer, one side quantized; everything else float
        assert list(point.architecture.bits) == [point.layer]
        assert sorted(point.architecture.bits[point.layer]).count(32) == 1
    result = searcher.search(4)
    assert len(evaluator.calls) == len(plan) + 4
    for entry in result.history:
        assert budget.violations(space, entry.architecture) == []
        assert space.size_bits(entry.architecture) <= budget.size_bits
        assert entry.architecture.widths == space.full().widths
        assert set(entry.architecture.bits) == set(space.quantizable_layers)
    one_shot = Architecture.from_dict(result.extra["one_shot"])
    assert result.history[0].architecture == one_shot
    assert result.history[1].architecture == uniform_bits_architecture(space, space.full(), budget.size_bits, None)
    assert space.size_bits(one_shot) <= budget.size_bits
    # exact: no other assignment within the budget has a smaller summed drop (checked against a greedy bound)
    drops = searcher.bit_drops()
    assert sum(drops[k][v] for k, v in one_shot.bits.items()) <= sum(
        drops[k][v] for k, v in result.history[1].architecture.bits.items()) + 1e-12
    record = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert record["search"] == "bits" and record["bits"]["measured"] == len(plan)
    assert Architecture.from_dict(record["one_shot"]) == one_shot


def test_a_second_budget_reuses_the_cached_profile(setup: tuple[SearchSpace, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    space = setup[0]
    cache = {"profile_cache": str(tmp_path / "cache"), "profile_key": "tiny-resnet|synthetic|l1|seed0"}
    first_eval = _evaluator(setup)
    first = SEARCHERS.create("sensitivity", SearchContext(space, first_eval, Budget.from_fractions(
        space, 1.0, size=0.15), run_dir=tmp_path / "a", search="bits"), **cache)
    first.search(1)
    n_profile = len(first.bit_profile_plan())
    assert len(first_eval.calls) == n_profile + 1
    capsys.readouterr()

    second_eval = _evaluator(setup)
    budget = Budget.from_fractions(space, 1.0, size=0.125, bops=0.02)
    second = SEARCHERS.create("sensitivity", SearchContext(space, second_eval, budget, run_dir=tmp_path / "b",
                                                           search="bits"), **cache)
    start = time.perf_counter()
    result = second.search(1)
    assert time.perf_counter() - start < 5.0
    assert len(second_eval.calls) == 1  # the one-shot answer only: no evaluation for the profile
    assert budget.violations(space, result.best) == []
    assert result.extra["profile_reused"]["bits"] == n_profile and result.extra["profile_measured"]["bits"] == 0
    assert "reused" in capsys.readouterr().err
    record = json.loads((tmp_path / "b" / "profile.json").read_text())
    assert record["bits"]["reused"] == n_profile and record["bits"]["cache"].startswith(str(tmp_path / "cache"))
    # another key (another base model or proxy) never sees that profile
    other = SensitivitySearcher(SearchContext(space, _evaluator(setup), budget, search="bits"),
                                profile_cache=cache["profile_cache"], profile_key="another model", quiet=True)
    assert len(other.pending_bit_profile()) == n_profile


def test_both_allocates_bits_at_the_threshold_widths(setup: tuple[SearchSpace, Any], tmp_path: Path) -> None:
    space = setup[0]
    budget = Budget.from_fractions(space, 0.5, size=0.08)
    evaluator = _evaluator(setup)
    searcher = SensitivitySearcher(SearchContext(space, evaluator, budget, search="both"), steps=4,
                                   profile_cache=tmp_path, profile_key="k", quiet=True)
    result = searcher.search(5)
    assert len(result.history) == 5
    for entry in result.history:
        assert budget.violations(space, entry.architecture) == []
    best = Architecture.from_dict(result.extra["one_shot"])
    assert space.flops(best) < space.full_flops and set(best.bits) == set(space.quantizable_layers)
    # the widths profile went to the cache too: a widths search of another budget measures nothing
    widths_eval = _evaluator(setup)
    widths = SensitivitySearcher(SearchContext(space, widths_eval, Budget(space.flops_budget(0.3))), steps=4,
                                 profile_cache=tmp_path, profile_key="k", quiet=True)
    widths.search(1)
    assert len(widths_eval.calls) == 1


def test_drops_are_monotone_and_additive() -> None:
    options = {"conv": [(w, a) for w in (2, 4, 8) for a in (2, 4, 8)]}
    points = {FULL: {"float": {"accuracy": 0.9}},
              "conv": {"w8": {"accuracy": 0.91}, "w4": {"accuracy": 0.85}, "w2": {"accuracy": 0.87},
                       "a8": {"accuracy": 0.89}, "a4": {"accuracy": 0.8}, "a2": {"accuracy": 0.5}}}
    drops = bit_drops(points, options)["conv"]
    assert drops[(8, 8)] == pytest.approx(0.01)  # a gain counts as no drop
    assert drops[(2, 8)] == pytest.approx(0.05 + 0.01)  # w2 measured better than w4: the worse w4 drop holds
    assert drops[(4, 2)] == pytest.approx(0.05 + 0.4)


# the ladder -----------------------------------------------------------------------------------------------------
def test_ladder_holds_uniform_and_the_one_shot_answer() -> None:
    a, b, u, s = (Architecture({"g": w}) for w in (3, 4, 5, 6))
    chosen = select_candidates([(a, 0.7, 9), (b, 0.8, 9)], top_k=1, uniform=(u, 0.5, 9), one_shot=(s, 0.6, 9))
    assert [c.origin for c in chosen] == ["search #1", "uniform", "sensitivity one-shot"]
    merged = select_candidates([(s, 0.9, 9)], top_k=1, uniform=(u, 0.5, 9), one_shot=(s, 0.9, 9))
    assert [c.origin for c in merged] == ["search #0 = sensitivity one-shot", "uniform"]


def test_rerank_stage_enters_the_one_shot_answer_when_cached_and_says_why_not(
        setup: tuple[SearchSpace, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Free from a cached profile; without a ladder (``finetune_epochs`` 0) and without a cached profile it is
    skipped and nothing is measured (with a ladder it is measured: tests/test_ladder_one_shot.py)."""
    from automl_prune.config import SearchConfig
    from automl_prune.run.base_model import BaseModel
    from automl_prune.run.rerank_stage import one_shot_entrant
    from automl_prune.run.search_stage import profile_options

    space, (model, splits) = setup
    config = SearchConfig(model="tiny-resnet", dataset="synthetic", agent="random", size="0.15", flops=1.0,
                          cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"), finetune_epochs=0)
    identity = {"sha256": "abc", "data_fingerprint": "def"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "base.json").write_text(json.dumps(identity))
    base = BaseModel(model=model, meta={}, splits=splits, space=space)
    budget = Budget.from_fractions(space, 1.0, size=0.15)
    evaluator = _evaluator(setup)
    searched = SimpleNamespace(history=[], extra={})
    assert one_shot_entrant(config, base, evaluator, searched, budget, tmp_path / "run") is None
    assert "without the sensitivity one-shot answer" in capsys.readouterr().err and not evaluator.calls
    assert "it would cost" in searched.extra["ladder_one_shot"]["skipped"]
    # a sensitivity run with the same key fills the cache; then any searcher's ladder gets the answer for free
    SEARCHERS.create("sensitivity", SearchContext(space, _evaluator(setup), Budget.from_fractions(
        space, 1.0, size=0.2), search="bits"), quiet=True, **profile_options(config, identity)).search(1)
    entrant = one_shot_entrant(config, base, evaluator, searched, budget, tmp_path / "run")
    assert entrant is not None and budget.violations(space, entrant[0]) == []
    assert len(evaluator.calls) == 1  # its own score only
    assert "enters the re-ranking from the cached profile" in capsys.readouterr().err
    assert searched.extra["ladder_one_shot"]["evaluations"] == 0
    found, _ = cached_one_shot(space, budget, "bits", **profile_options(config, identity))
    assert found == entrant[0]


def test_pipeline_reuses_the_profile_for_another_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--agent sensitivity --search bits`` twice through the pipeline, at two sizes: the second run evaluates
    nothing for its profile, says so, records it in ``profile.json`` and meets its size budget."""
    from automl_prune.config import SearchConfig
    from automl_prune.run.pipeline import run_search

    common = {"model": "tiny-cnn", "dataset": "synthetic", "agent": "sensitivity", "search": "bits", "flops": 1.0,
              "episodes": 2, "workers": 0, "pretrain_epochs": 0.3, "finetune_epochs": 0.05, "rerank_top_k": 1,
              "rerank_rungs": 1, "bn_batches": 1, "calibration_size": 64, "val_size": 100, "progress": False,
              "cache_dir": str(tmp_path / "cache"), "onnx": False}
    first = run_search(SearchConfig(size="0.2", out=str(tmp_path / "a"), **common))
    measured = json.loads((tmp_path / "a" / "profile.json").read_text())["bits"]["measured"]
    assert measured > 0 and first["evaluations"] == 2
    capsys.readouterr()
    second = run_search(SearchConfig(size="0.15", out=str(tmp_path / "b"), **common))
    log = capsys.readouterr().err
    record = json.loads((tmp_path / "b" / "profile.json").read_text())
    assert record["bits"]["measured"] == 0 and record["bits"]["reused"] == measured
    assert "no evaluation for the profile (reused)" in log
    assert "sensitivity one-shot" in log  # the ladder's entrants name it
    assert second["compressed"]["size_bits"] <= math.floor(0.15 * second["base"]["size_bits"])
    # the summary and its table say what the profile cost in each run, beside the search's own evaluations
    assert first["profile"]["measured"] == measured and first["profile"]["reused"] == 0
    assert second["profile"] == {"measured": 0, "reused": measured,
                                 "solve_seconds": pytest.approx(second["profile"]["solve_seconds"])}
    table = (tmp_path / "b" / "summary.md").read_text()
    assert re.search(rf"sensitivity profile \(in search time\) +\| - +\| 0 evaluations measured, {measured} read "
                     "from the cache", table)


def test_allocation_benchmark_plan_and_table(tmp_path: Path) -> None:
    """benchmarks/allocation.py: the plan's rows, and the table's paired differences and cost columns."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    allocation = pytest.importorskip("allocation")
    cells = allocation.plan(None, ["widths", "bits"], allocation.AGENTS, [0, 1, 2])
    assert len(cells) == 3 * (2 * 2 + 2) * 4
    assert {(c.model, c.budget) for c in cells if c.kind == "bits"} == {("resnet20", 1.0), ("mobilenetv2-small", 1.0)}
    assert [c.agent for c in cells[:4]] == ["uniform", "sensitivity", "ddpg", "optuna"]  # the profile first
    narrowed = allocation.plan(["resnet56", "resnet20"], ["widths", "bits"], ["uniform"], [0], budgets=[0.1])
    assert [(c.model, c.kind, c.budget) for c in narrowed] == [("resnet56", "widths", 0.1), ("resnet20", "widths", 0.1),
                                                               ("resnet56", "bits", 1.0), ("resnet20", "bits", 1.0)]
    import argparse

    args = argparse.Namespace(dataset="synthetic", data_root=None, episodes=40, cache_dir=str(tmp_path / "cache"),
                              quiet=True, workers=0, threads=1, criterion="auto", pretrain_seed=0,
                              pretrain_epochs=1.0, finetune_epochs=0.5, uniform_bits=4)
    started = allocation.plan(["resnet56"], ["widths"], ["ddpg", "ddpg-start"], [2], budgets=[0.25])
    plain, start = (allocation.config_of(args, c, 40, tmp_path / c.agent) for c in started)
    assert (plain.agent, plain.search_start) == ("ddpg", "uniform")
    assert (start.agent, start.search_start, start.episodes, start.flops) == ("ddpg", "one-shot", 40, 0.25)
    assert started[1].key(40) == "resnet56|widths|0.25|ddpg-start|2|e40"
    assert started[1].run_dir(tmp_path, 40).parts[-2:] == ("ddpg-start-e40", "seed2")
    [hedged_cell] = allocation.plan(["resnet56"], ["widths"], ["sensitivity-hedged"], [1], budgets=[0.1])
    hedged = allocation.config_of(args, hedged_cell, 40, tmp_path / "hedged")
    assert (hedged.agent, hedged.search_start, hedged.episodes) == ("sensitivity", "uniform", 40)
    assert hedged_cell.key(40) == "resnet56|widths|0.1|sensitivity-hedged|1|e40"
    joint = allocation.plan(["tiny-resnet"], ["joint"], ["uniform", "ddpg"], [0])
    assert [(c.kind, c.budget) for c in joint] == [("joint", 0.5), ("joint", 0.5)]
    uniform_joint, ddpg_joint = (allocation.config_of(args, c, 40, tmp_path / c.agent) for c in joint)
    assert (ddpg_joint.resolved_search, ddpg_joint.flops, ddpg_joint.agent) == ("both", 0.5, "ddpg")
    from agents import uniform_architecture
    from automl_prune.config import parse_size
    from automl_prune.run.base_model import load_base

    space = load_base(uniform_joint).space  # the size budget is the uniform width of 50% FLOPs at 4/4 bits
    four_bits = space.size_bits(space.uniform_bits(4, 4, uniform_architecture(space, space.flops_budget(0.5))))
    assert uniform_joint.size == ddpg_joint.size == f"{-(-four_bits // 8)}B" and not uniform_joint.fill_budget
    assert parse_size(ddpg_joint.size) == ("bits", 8 * -(-four_bits // 8))
    rows = []
    for seed, (uniform, one_shot, ddpg) in enumerate([(0.80, 0.82, 0.81), (0.70, 0.73, 0.69), (0.75, 0.76, 0.78)]):
        for method, acc, measured in (("uniform", uniform, 0), ("sensitivity", one_shot, 309), ("ddpg-e40", ddpg, 0)):
            rows.append({"key": f"{method}{seed}", "model": "resnet20", "kind": "bits", "budget": 1.0,
                         "method": method, "seed": seed, "test_acc": acc, "evaluations": 1, "size_ratio": 0.13,
                         "flops_ratio": 1.0, "profile_measured": measured if seed == 0 else 0,
                         "profile_reused": 0 if seed == 0 else 309, "search_seconds": 1.0, "rerank_seconds": 2.0,
                         "chosen_origin": "search #0 = sensitivity one-shot" if method == "sensitivity" else "uniform"})
    for row in rows:
        allocation.append_result(tmp_path / allocation.RESULTS, row)
    table = allocation.report(tmp_path)
    line = next(x for x in table.splitlines() if "| sensitivity" in x)
    assert "+2.00 ± 1.00 (n=3)" in line  # per-seed differences 2, 3, 1
    assert "uniform 0, one-shot 3" in line and "(+206 reused)" in line
    ddpg = next(x for x in table.splitlines() if "| ddpg-e40" in x)
    assert "+1.00 ± 2.00 (n=3)" in ddpg and "-1.00 ± 3.00 (n=3)" in ddpg  # 1, -1, 3 and -1, -4, 2
    assert (tmp_path / "allocation.md").exists()


def test_agent_auto_runs_the_one_shot_allocator_for_widths_or_bits_alone_and_ddpg_for_both() -> None:
    """The measured default (docs/benchmarks.md, the allocation benchmark): ``agent: auto`` is ``sensitivity``
    when only widths or only bits are searched, ``ddpg`` for both; an explicit agent is kept, and a one-shot
    search start (a searcher's option) resolves to ``ddpg``. The run directory records the resolved name."""
    from automl_prune.config import SearchConfig

    assert SearchConfig().agent == "sensitivity"
    assert SearchConfig(flops=0.25, search_start="one-shot").agent == "ddpg"
    assert SearchConfig(size="0.125", flops=1.0).agent == "sensitivity"
    assert SearchConfig(size="0.125", flops=0.5).agent == "ddpg"  # both
    assert SearchConfig(bops=0.05, flops=1.0).agent == "sensitivity"
    assert SearchConfig(size="0.125", flops=1.0, agent="optuna").agent == "optuna"
    assert SearchConfig(size="0.125", flops=1.0, search_start="one-shot").agent == "ddpg"
    assert SearchConfig(size="0.125", flops=1.0).to_dict()["agent"] == "sensitivity"


def test_the_solver_cannot_write_into_the_users_standard_output(capfd: pytest.CaptureFixture[str]) -> None:
    """HiGHS may print a debug line from C++ whatever ``disp`` says; the solve's standard output is discarded at
    the file-descriptor level and restored afterwards."""
    import os

    from agents.bit_knapsack import _solver_output_hidden

    with _solver_output_hidden():
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
    print("after the solve", flush=True)
    assert capfd.readouterr().out == "after the solve\n"
