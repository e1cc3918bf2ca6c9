"""Searches that start from the sensitivity searcher's one-shot answer (``start="one-shot"``, issue 28).

DDPG, PPO and Optuna propose the answer first (widths, bits and both), from a cached profile for free or after
measuring the profile with their own evaluator (those evaluations counted in the search's); the default start
is unchanged; other agents are refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from agents import SEARCHERS, SearchContext
from agents.budget import uniform_architecture
from agents.rl_base import _SB3Searcher
from agents.sensitivity import SensitivitySearcher
from agents.start import one_shot_start
from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.models import build_model
from search_spaces import Architecture, Budget, SearchSpace
from tests.fakes import AnalyticEvaluator

STARTING = ("ddpg", "ppo", "optuna")
KEY = {"base": "test", "proxy": "analytic"}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    torch.manual_seed(0)
    model = build_model("vgg-small", 1, 10, 16)
    return SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25, model_name="vgg-small")


def _budget(space: SearchSpace, search: str) -> Budget:
    return Budget.from_fractions(space, 0.5 if search != "bits" else 1.0, size=None if search == "widths" else 0.1)


def _options(name: str, **extra: Any) -> dict[str, Any]:
    small: dict[str, dict[str, Any]] = {
        "ddpg": {"warmup_episodes": 2, "batch_size": 8, "net_arch": (16,)},
        "ppo": {"episodes_per_rollout": 2, "n_epochs": 1, "net_arch": (16,)},
        "optuna": {"n_startup_trials": 2}}
    return {**small[name], **extra}


def _answer(space: SearchSpace, budget: Budget, search: str) -> Architecture:
    """The one-shot answer, computed apart from any searcher: the 5-step profile, measured in full."""
    profiler = SensitivitySearcher(SearchContext(space, AnalyticEvaluator(space), budget, search=search), steps=5,
                                   quiet=True)
    profiler.search(1)
    assert profiler.one_shot_architecture is not None
    return profiler.one_shot_architecture


@pytest.fixture(scope="module")
def cache(space: SearchSpace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the profiles (widths and bits) of this space and evaluator."""
    folder = tmp_path_factory.mktemp("profile-cache")
    for search in ("widths", "both"):
        found = one_shot_start(space, AnalyticEvaluator(space), _budget(space, search), search, profile_cache=folder,
                               profile_key=KEY)
        assert found.evaluations > 0
    return folder


@pytest.mark.parametrize("search", ["widths", "bits", "both"])
@pytest.mark.parametrize("name", STARTING)
def test_started_from_the_one_shot_answer_it_is_proposed_first(name: str, search: str, space: SearchSpace,
                                                               cache: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    budget = _budget(space, search)
    evaluator = AnalyticEvaluator(space)
    context = SearchContext(space, evaluator, budget, seed=0, search=search)
    searcher = SEARCHERS.create(name, context, start="one-shot", profile_cache=cache, profile_key=KEY,
                                **_options(name))
    result = searcher.search(3)
    answer = _answer(space, budget, search)
    assert answer != uniform_architecture(space, budget.flops)  # the start is not the default one
    assert space.complete(result.history[0].architecture) == space.complete(answer)
    assert len(result.history) == 3 and len(evaluator.calls) == 3  # the cached profile cost nothing
    assert all(budget.fits(space, e.architecture) for e in result.history)
    assert result.extra["search_start"]["evaluations"] == 0
    assert Architecture.from_dict(result.extra["one_shot"]) == answer
    lines = [x for x in capsys.readouterr().err.splitlines() if "one-shot" in x]  # Optuna logs its own lines too
    assert len(lines) == 1 and lines[0].startswith(f"{name} starts from the sensitivity one-shot answer from the "
                                                   f"cached profile {cache}")
    assert lines[0].endswith("; cost: no evaluation")


@pytest.mark.parametrize("name", STARTING)
def test_without_a_cached_profile_its_evaluations_count_toward_the_search(name: str, space: SearchSpace,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    budget = _budget(space, "widths")
    profile_points = len(SensitivitySearcher(SearchContext(space, AnalyticEvaluator(space), budget),
                                             steps=5).profile_plan())
    evaluator = AnalyticEvaluator(space)
    make = lambda: SEARCHERS.create(name, SearchContext(space, evaluator, budget, seed=0, run_dir=tmp_path),  # noqa: E731
                                    start="one-shot", **_options(name))
    n = profile_points + 3
    result = make().search(n)
    assert len(evaluator.calls) == n and len(result.history) == 3  # the profile took its share of the n
    assert result.history[0].architecture == _answer(space, budget, "widths")
    assert result.extra["search_start"]["evaluations"] == profile_points
    err = capsys.readouterr().err
    assert (f"{name} starts from the sensitivity one-shot answer from its profile, measured with the search's "
            f"evaluator ({profile_points} evaluations); cost: {profile_points} of the search's {n} evaluations, "
            f"3 left for {name}") in err
    record = json.loads((tmp_path / "search_start.json").read_text())
    assert record["evaluations"] == profile_points and record["architecture"] == result.extra["one_shot"]
    # The same run again (a resume): the recorded start, nothing measured again, the same evaluations left.
    again = make()
    if name != "optuna":  # the RL agents resume from their saved state; Optuna from its study in run_dir
        again.restore(tmp_path / "agent_state")
    assert len(again.search(n).history) == 3 and len(evaluator.calls) == n


def test_a_profile_over_the_whole_search_leaves_the_start_alone(space: SearchSpace) -> None:
    budget = _budget(space, "widths")
    evaluator = AnalyticEvaluator(space)
    searcher = SEARCHERS.create("optuna", SearchContext(space, evaluator, budget), start="one-shot")
    result = searcher.search(2)
    assert [e.architecture for e in result.history] == [_answer(space, budget, "widths")]


@pytest.mark.parametrize("name", ["ddpg", "ppo"])
def test_the_lower_wall_gives_way_to_the_start(name: str, space: SearchSpace, cache: Path) -> None:
    """With a wall at the whole budget, the start (a little under it) is still the first episode, exactly."""
    budget = _budget(space, "widths")
    answer = _answer(space, budget, "widths")
    assert space.flops(answer) < budget.flops
    searcher = SEARCHERS.create(name, SearchContext(space, AnalyticEvaluator(space), budget), start="one-shot",
                                profile_cache=cache, profile_key=KEY, min_flops_fraction=1.0, **_options(name))
    assert searcher.search(2).history[0].architecture == answer
    assert isinstance(searcher, _SB3Searcher)
    assert searcher.min_flops_fraction < space.flops(answer) / budget.flops


def test_ddpg_warms_up_around_the_start(space: SearchSpace, cache: Path) -> None:
    """The warm-up samples the truncated normal around the start's actions: with no spread, every warm-up
    episode is the start; the default warm-up (uniform random actions) is not."""
    budget = _budget(space, "widths")
    answer = _answer(space, budget, "widths")

    def history(**start: Any) -> list[Architecture]:
        searcher = SEARCHERS.create("ddpg", SearchContext(space, AnalyticEvaluator(space), budget), noise_sigma=0.0,
                                    profile_cache=cache, profile_key=KEY, **_options("ddpg", warmup_episodes=3),
                                    **start)
        return [e.architecture for e in searcher.search(3).history]

    assert history(start="one-shot") == [answer] * 3
    assert answer not in history()


@pytest.mark.parametrize("name", STARTING)
def test_the_default_start_is_unchanged(name: str, space: SearchSpace) -> None:
    budget = _budget(space, "widths")

    def history(**start: Any) -> list[Architecture]:
        searcher = SEARCHERS.create(name, SearchContext(space, AnalyticEvaluator(space), budget, seed=0),
                                    **_options(name), **start)
        result = searcher.search(3)
        assert "search_start" not in result.extra and "one_shot" not in result.extra
        return [e.architecture for e in result.history]

    default = history()
    assert default == history(start="uniform")
    if name == "optuna":
        assert default[0] == uniform_architecture(space, budget.flops)  # as before: uniform is the first trial


def test_unknown_start_is_refused(space: SearchSpace) -> None:
    with pytest.raises(ConfigError, match="unknown start 'best'"):
        SEARCHERS.create("optuna", SearchContext(space, AnalyticEvaluator(space), _budget(space, "widths")),
                         start="best")


@pytest.mark.parametrize("agent", ["random", "sensitivity", "dmcp", "uniform", "global"])
def test_other_agents_are_refused_in_one_line(agent: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SearchConfig(agent=agent, search_start="one-shot")
    message = str(caught.value)
    assert "\n" not in message and repr(agent) in message
    assert "ddpg, ppo, optuna and optuna-mo" in message


@pytest.mark.parametrize("agent", ["ddpg", "ppo", "optuna", "optuna-mo"])
def test_supported_agents_take_the_setting(agent: str) -> None:
    assert SearchConfig(agent=agent, search_start="one-shot").search_start == "one-shot"


def test_the_run_starts_from_the_one_shot_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--search-start one-shot`` end to end: the profile is measured once and cached, its evaluations are logged
    and counted, the start is the first evaluation, and a second run of another budget takes it from the cache."""
    from automl_prune.cli import main

    tiny = ["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "1", "--no-progress",
            "--finetune-epochs", "0", "--workers", "0", "--agent", "ddpg", "--agent-option", "warmup_episodes=1",
            "--search-start", "one-shot", "--episodes", "40", "--cache-dir", str(tmp_path / "cache")]
    assert main([*tiny, "--flops", "0.5", "--out", str(tmp_path / "a")]) == 0
    start = json.loads((tmp_path / "a" / "search_start.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").read_text().splitlines()]
    assert 0 < start["evaluations"] < 40 and len(history) == 40 - start["evaluations"]
    assert history[0]["architecture"] == start["architecture"]
    err = capsys.readouterr().err
    assert (f"ddpg starts from the sensitivity one-shot answer from its profile, measured with the search's "
            f"evaluator ({start['evaluations']} evaluations); cost: {start['evaluations']} of the search's 40 "
            f"evaluations, {40 - start['evaluations']} left for ddpg") in err
    assert main([*tiny, "--flops", "0.3", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "search_start.json").read_text())["evaluations"] == 0
    assert len((tmp_path / "b" / "history.jsonl").read_text().splitlines()) == 40
    assert "ddpg starts from the sensitivity one-shot answer from the cached profile" in capsys.readouterr().err
