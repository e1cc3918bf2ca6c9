"""The re-ranking ladder enters the sensitivity one-shot answer beside the uniform one (issue 28).

Free when the search recorded it or a cached profile holds it (unchanged); otherwise its coarsest profile is
measured with the search's own evaluator (as the one-shot search start does) whatever it costs (the default,
``one_shot_entrant`` always; ``if-cheaper`` skips it with its cost when it costs more than the search's own
evaluations, ``never`` skips it), once: the points are kept in the
cache folder and the run directory, and the entrant in ``RUN_DIR/ladder_one_shot.json``, so a resumed run or a
run of another budget measures nothing again. One log line and ``summary.json`` say what it cost.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from agents import SearchContext
from agents.one_shot import cached_one_shot
from agents.sensitivity import SensitivitySearcher
from agents.start import measure_one_shot, one_shot_start
from automl_prune.config import SearchConfig
from automl_prune.models import build_model
from automl_prune.run.base_model import BaseModel
from automl_prune.run.rerank_stage import one_shot_entrant
from automl_prune.run.search_stage import profile_options
from search_spaces import Architecture, Budget, SearchSpace
from tests.fakes import AnalyticEvaluator, FakeMetrics

pytestmark = pytest.mark.one_shot_entrant  # the ladder may measure the profile here (tests/conftest.py)

IDENTITY = {"sha256": "abc", "data_fingerprint": "def"}


class PoolEvaluator(AnalyticEvaluator):
    """Stands in for the Ray worker pool: ``parallelism`` workers, ``evaluate_many`` batches."""

    parallelism = 4

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space)
        self.batches: list[int] = []

    def evaluate_many(self, architectures: list[Architecture]) -> list[FakeMetrics]:
        self.batches.append(len(architectures))
        return [self.evaluate(a) for a in architectures]


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25, model_name="vgg-small")


def _base(space: SearchSpace) -> BaseModel:
    return BaseModel(model=torch.nn.Identity(), meta={}, splits=None, space=space)  # type: ignore[arg-type]


def _config(tmp_path: Path, run: str, **extra: Any) -> SearchConfig:
    run_dir = tmp_path / run
    run_dir.mkdir(exist_ok=True)
    (run_dir / "base.json").write_text(json.dumps(IDENTITY))
    settings: dict[str, Any] = {"model": "vgg-small", "dataset": "synthetic", "agent": "random", "flops": 0.5,
                                "episodes": 500, "cache_dir": str(tmp_path / "cache"), "out": str(run_dir), **extra}
    return SearchConfig(**settings)


def _points(space: SearchSpace, budget: Budget, search: str) -> int:
    """The coarsest profile's points (20% steps; and the bits profile when bits are searched)."""
    profiler = SensitivitySearcher(SearchContext(space, AnalyticEvaluator(space), budget, search=search), steps=5,
                                   quiet=True)
    return (len(profiler.profile_plan()) if profiler.searches_widths else 0) + (
        len(profiler.bit_profile_plan()) if profiler.searches_bits else 0)


def _entrant_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "one-shot answer enters the re-ranking" in line]


def test_without_a_cached_profile_it_is_measured_once_and_reused(space: SearchSpace, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, "a")
    budget = Budget.from_fractions(space, 0.5)
    points = _points(space, budget, "widths")
    evaluator = AnalyticEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    entrant = one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "a")
    assert entrant is not None
    arch, accuracy, flops = entrant
    expected = one_shot_start(space, AnalyticEvaluator(space), budget, "widths")  # the start's answer, apart
    assert arch == space.complete(expected.architecture) and budget.violations(space, arch) == []
    assert len(evaluator.calls) == points + 1  # the profile, then the answer's own score
    assert flops == space.flops(arch) and accuracy == pytest.approx(AnalyticEvaluator(space).evaluate(arch).accuracy)
    err = capsys.readouterr().err
    assert f"measuring the sensitivity profile for the ladder's one-shot entrant: {points} of {points} points" in err
    [line] = _entrant_lines(err)
    assert (f"enters the re-ranking from its profile, measured with the search's evaluator ({points} evaluations); "
            f"cost: {points} profile evaluations, ") in line
    cost = searched.extra["ladder_one_shot"]
    assert cost["evaluations"] == points and cost["seconds"] > 0 and "measured" in cost["origin"]
    record = json.loads((tmp_path / "a" / "ladder_one_shot.json").read_text())
    assert Architecture.from_dict(record["architecture"]) == arch and record["evaluations"] == points
    assert (tmp_path / "a" / "ladder_one_shot" / "sensitivity.json").exists()

    # The same run again (a resume): the recorded entrant, nothing measured, not even its score.
    resumed = AnalyticEvaluator(space)
    again = SimpleNamespace(history=[], extra={})
    assert one_shot_entrant(config, _base(space), resumed, again, budget, tmp_path / "a") == entrant
    assert not resumed.calls
    [line] = _entrant_lines(capsys.readouterr().err)
    assert line.endswith("(an earlier process of this run entered it: nothing measured now)")
    assert again.extra["ladder_one_shot"]["evaluations"] == points  # what it cost this run, all told

    # Another budget, another run directory, the same cache: free.
    other_budget = Budget.from_fractions(space, 0.3)
    other = AnalyticEvaluator(space)
    free = SimpleNamespace(history=[], extra={})
    found = one_shot_entrant(_config(tmp_path, "b", flops=0.3), _base(space), other, free, other_budget,
                             tmp_path / "b")
    assert found is not None and other_budget.violations(space, found[0]) == []
    assert len(other.calls) == 1  # its own score only
    [line] = _entrant_lines(capsys.readouterr().err)
    assert "from the cached profile" in line and "cost: no profile evaluation" in line
    assert free.extra["ladder_one_shot"]["evaluations"] == 0


def test_an_interrupted_measurement_resumes_where_it_stopped(space: SearchSpace, tmp_path: Path) -> None:
    """Points measured before a kill are kept in the run directory; the resumed run measures only the rest
    and counts them all."""
    budget = Budget.from_fractions(space, 0.5)
    points = _points(space, budget, "widths")

    class Dying(AnalyticEvaluator):
        def evaluate(self, architecture: Architecture) -> FakeMetrics:
            if len(self.calls) == 5:
                raise KeyboardInterrupt
            return super().evaluate(architecture)

    config = _config(tmp_path, "run")
    with pytest.raises(KeyboardInterrupt):
        one_shot_entrant(config, _base(space), Dying(space), SimpleNamespace(history=[], extra={}), budget,
                         tmp_path / "run")
    # a fresh cache folder: only the run directory's points count (the cache has them too, as the start's)
    config = _config(tmp_path, "run", cache_dir=str(tmp_path / "other-cache"))
    evaluator = AnalyticEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    assert one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "run") is not None
    assert len(evaluator.calls) == points - 5 + 1
    assert searched.extra["ladder_one_shot"]["evaluations"] == points
    assert "5 of them by an earlier process of this run" in searched.extra["ladder_one_shot"]["origin"]


@pytest.mark.parametrize("search", ["bits", "both"])
def test_bits_searches_get_the_answer_with_bits_measured_on_a_pool(search: str, space: SearchSpace,
                                                                   tmp_path: Path) -> None:
    budget = Budget.from_fractions(space, 1.0 if search == "bits" else 0.5, size=0.1)
    config = _config(tmp_path, "run", size="0.1", flops=1.0 if search == "bits" else 0.5,
                     **({"search": search} if search == "both" else {}))
    assert config.resolved_search == search
    evaluator = PoolEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    entrant = one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "run")
    assert entrant is not None and budget.violations(space, entrant[0]) == []
    assert set(entrant[0].bits) == set(space.quantizable_layers)
    assert (entrant[0].widths == space.full().widths) == (search == "bits")
    points = _points(space, budget, search)
    assert searched.extra["ladder_one_shot"]["evaluations"] == points
    assert sum(evaluator.batches) == points and max(evaluator.batches) == PoolEvaluator.parallelism
    cached, _ = cached_one_shot(space, budget, search, **profile_options(config, IDENTITY))
    assert cached == entrant[0]


def test_a_search_that_recorded_the_answer_costs_nothing_more(space: SearchSpace, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    budget = Budget.from_fractions(space, 0.5)
    answer = measure_one_shot(space, AnalyticEvaluator(space), budget, "widths").architecture
    evaluator = AnalyticEvaluator(space)
    history = [SimpleNamespace(architecture=answer, metrics={"accuracy": 0.5, "flops": space.flops(answer)})]
    searched = SimpleNamespace(history=history, extra={"one_shot": answer.to_dict()})
    entrant = one_shot_entrant(_config(tmp_path, "run", agent="sensitivity"), _base(space), evaluator, searched,
                               budget, tmp_path / "run")
    assert entrant == (space.complete(answer), 0.5, space.flops(answer)) and not evaluator.calls
    [line] = _entrant_lines(capsys.readouterr().err)
    assert "from this search's profile; cost: no profile evaluation" in line
    assert not (tmp_path / "cache").exists()  # nothing measured, nothing cached


def test_without_a_ladder_nothing_is_measured(space: SearchSpace, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    budget = Budget.from_fractions(space, 0.5)
    evaluator = AnalyticEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    config = _config(tmp_path, "run", finetune_epochs=0)
    assert one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "run") is None
    assert not evaluator.calls and "re-ranking without the sensitivity one-shot answer" in capsys.readouterr().err
    assert "skipped" in searched.extra["ladder_one_shot"]


def test_the_run_enters_uniform_and_the_one_shot_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end with ``--agent random`` and an empty cache: the ladder's entrants include both, the log and
    the summary say what the one-shot answer cost; resuming the run and a run of another budget measure
    nothing for it."""
    from automl_prune.cli import main

    tiny = ["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.3", "--no-progress",
            "--workers", "0", "--agent", "random", "--episodes", "40", "--finetune-epochs", "0.05", "--rerank-top-k",
            "1", "--rerank-rungs", "1", "--calibration-size", "64",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*tiny, "--flops", "0.5", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    origins = [c["origin"] for c in summary["rerank"]["candidates"]]
    assert any("uniform" in o.split(" = ") for o in origins)
    assert any("sensitivity one-shot" in o.split(" = ") for o in origins)
    cost = summary["one_shot"]
    assert cost["evaluations"] > 0 and cost["seconds"] > 0 and summary["evaluations"] == 40
    [line] = _entrant_lines(err)
    assert f"cost: {cost['evaluations']} profile evaluations, " in line
    assert "one-shot entrant (ladder)" in (tmp_path / "a" / "summary.md").read_text()

    assert main([*tiny, "--flops", "0.5", "--out", str(tmp_path / "a")]) == 0  # the finished run, resumed
    err = capsys.readouterr().err
    assert "measuring the sensitivity profile" not in err
    [line] = _entrant_lines(err)
    assert line.endswith("nothing measured now)")
    again = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert again["rerank"]["candidates"] == summary["rerank"]["candidates"]

    assert main([*tiny, "--flops", "0.3", "--out", str(tmp_path / "b")]) == 0  # another budget: from the cache
    err = capsys.readouterr().err
    assert "measuring the sensitivity profile" not in err
    other = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert other["one_shot"]["evaluations"] == 0 and "from the cached profile" in other["one_shot"]["origin"]
    assert any("sensitivity one-shot" in c["origin"] for c in other["rerank"]["candidates"])


def test_by_default_it_enters_even_when_its_profile_costs_more_than_the_search(
        space: SearchSpace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``one_shot_entrant`` always (the default): the ladder holds the one-shot answer whatever its cost."""
    budget = Budget.from_fractions(space, 0.5)
    points = _points(space, budget, "widths")
    evaluator = AnalyticEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    config = _config(tmp_path, "run", episodes=2)
    assert config.one_shot_entrant == "always"
    entrant = one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "run")
    assert entrant is not None and budget.violations(space, entrant[0]) == []
    assert len(evaluator.calls) == points + 1 and searched.extra["ladder_one_shot"]["evaluations"] == points
    assert len(_entrant_lines(capsys.readouterr().err)) == 1


def test_never_and_agent_uniform_enter_nothing_and_measure_nothing(
        space: SearchSpace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = Budget.from_fractions(space, 0.5)
    evaluator = AnalyticEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    config = _config(tmp_path, "run", one_shot_entrant="never")
    assert one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "run") is None
    assert "one_shot_entrant is never" in capsys.readouterr().err and not evaluator.calls
    assert searched.extra["ladder_one_shot"] == {"skipped": "one_shot_entrant is never"}
    uniform = _config(tmp_path, "uniform", agent="uniform")  # the naive answer alone: the benchmarks' baseline
    assert one_shot_entrant(uniform, _base(space), evaluator, searched, budget, tmp_path / "uniform") is None
    assert "--agent uniform asks for the uniform answer alone" in capsys.readouterr().err and not evaluator.calls


def test_a_bad_one_shot_entrant_is_one_clear_error(tmp_path: Path) -> None:
    from automl_prune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"`one_shot_entrant` must be one of \['always', 'if-cheaper', 'never'\], "
                                          r"but got 'sometimes'"):
        _config(tmp_path, "run", one_shot_entrant="sometimes")


def test_if_cheaper_skips_a_profile_costlier_than_the_search_with_its_cost(
        space: SearchSpace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = Budget.from_fractions(space, 0.5)
    points = _points(space, budget, "widths")
    evaluator = AnalyticEvaluator(space)
    searched = SimpleNamespace(history=[], extra={})
    config = _config(tmp_path, "run", episodes=points - 1, one_shot_entrant="if-cheaper")
    assert one_shot_entrant(config, _base(space), evaluator, searched, budget, tmp_path / "run") is None
    err = capsys.readouterr().err
    assert f"would cost {points} evaluations, more than the search's {points - 1}" in err
    assert not evaluator.calls and "would cost" in searched.extra["ladder_one_shot"]["skipped"]  # nothing measured


def test_measuring_the_entrants_profile_shows_a_bar_only_when_the_caller_announces_it(
        space: SearchSpace, capfd: pytest.CaptureFixture[str]) -> None:
    """The ladder announces the profile it measures; its points then advance a bar (with an ETA) on stderr."""
    budget = Budget.from_fractions(space, 0.5)
    told: list[int] = []
    measure_one_shot(space, AnalyticEvaluator(space), budget, "widths", announce=lambda n, _total: told.append(n))
    [n] = told
    err = capfd.readouterr().err
    assert "sensitivity: one-shot profile" in err and f"{n}/{n}" in err
    measure_one_shot(space, AnalyticEvaluator(space), budget, "widths")
    assert capfd.readouterr().err == ""
