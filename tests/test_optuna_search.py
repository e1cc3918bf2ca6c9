"""Optuna searchers: the budget guarantee, the Pareto front, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from agents import SEARCHERS, SearchContext
from agents.optuna_mo import OptunaMOSearcher
from agents.optuna_search import OptunaSearcher
from agents.pareto import dominates, pareto_front
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.scoring.evaluator import Evaluator
from search_spaces import Architecture, Budget, SearchSpace

REPO = Path(__file__).resolve().parents[1]

# The subprocess of the kill test and the in-process resume build exactly this set-up.
SETUP = """
import torch
from automl_prune.data.datasets import load_dataset
from automl_prune.scoring.evaluator import Evaluator
from automl_prune.models import build_model
from search_spaces import SearchSpace

def make_setup():
    splits = load_dataset("synthetic")
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=2)
    return space, evaluator, space.flops_budget(0.5)
"""


class CountingEvaluator:
    """Delegates to an `Evaluator` and counts the calls."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner = inner
        self.calls: list[Architecture] = []

    def evaluate(self, architecture: Architecture) -> Any:
        self.calls.append(architecture)
        return self.inner.evaluate(architecture)


@pytest.fixture(scope="module")
def setup() -> tuple[SearchSpace, Evaluator, int]:
    splits = load_dataset("synthetic")
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.25)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=2)
    return space, evaluator, space.flops_budget(0.5)


def _load(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'optuna.db'}")


def _states(study: optuna.Study) -> dict[TrialState, int]:
    counts: dict[TrialState, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def test_tpe_stays_within_budget_and_records_projections(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    searcher = SEARCHERS.create("optuna", SearchContext(space, evaluator, Budget(budget), seed=0, run_dir=tmp_path),
                                n_startup_trials=4)
    assert isinstance(searcher, OptunaSearcher)
    result = searcher.search(12)
    assert len(result.history) == 12
    assert space.flops(result.best) <= budget and result.best_metrics["flops"] <= budget
    assert all(e.metrics["flops"] <= budget for e in result.history)
    trials = _load(tmp_path, searcher.study_name).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 12
    for t in trials:  # the recorded widths are exactly what was evaluated, and the value is its accuracy
        entry = result.history[t.user_attrs["history_index"]]
        assert entry.architecture.widths == t.user_attrs["widths"]
        assert t.value == entry.metrics["accuracy"]
        proposed = searcher.architecture_from_params(t.params)
        assert t.user_attrs["projected"] == (space.flops(proposed) > budget)
    # A 50% budget with factors up to 2x the uniform ratio makes some suggestions go over it.
    assert any(t.user_attrs["projected"] for t in trials)
    assert result.extra["storage"] == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"


def test_in_memory_study_survives_save_and_restore(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    first = OptunaSearcher(SearchContext(space, evaluator, Budget(budget), seed=1), n_startup_trials=3)
    before = first.search(4).history
    first.save(tmp_path / "state")
    second = OptunaSearcher(SearchContext(space, evaluator, Budget(budget), seed=1), n_startup_trials=3)
    second.restore(tmp_path / "state")
    after = second.search(8).history
    assert len(after) == 8
    assert [e.architecture for e in after[:4]] == [e.architecture for e in before]
    assert _states(second.study) == {TrialState.COMPLETE: 8}


def test_resumed_study_does_not_replay_the_random_start(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    OptunaSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), n_startup_trials=20).search(3)
    OptunaSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), n_startup_trials=20).search(6)
    params = [tuple(sorted(t.params.items())) for t in _load(tmp_path, f"optuna-{budget}").get_trials()]
    assert len(params) == 6 and len(set(params)) == 6


def test_a_sampler_saved_before_later_trials_is_not_restored(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Ctrl-C saves the sampler after 3 trials; the resumed run does 3 more and is killed (no save); the next
    # resume must not restore the 3-trial sampler, which would propose trials 4-6 again as 7-9.
    space, evaluator, budget = setup

    def searcher() -> OptunaSearcher:
        return OptunaSearcher(SearchContext(space, evaluator, Budget(budget), seed=2, run_dir=tmp_path),
                              n_startup_trials=20)

    first = searcher()
    first.search(3)
    first.save(tmp_path / "agent_state")
    second = searcher()
    second.restore(tmp_path / "agent_state")
    second.search(6)  # then killed: nothing saved
    third = searcher()
    third.restore(tmp_path / "agent_state")
    history = third.search(9).history
    assert [e.architecture for e in history[6:9]] != [e.architecture for e in history[3:6]]
    params = [tuple(sorted(t.params.items())) for t in _load(tmp_path, f"optuna-{budget}").get_trials()]
    assert len(params) == 9 and len(set(params)) == 9


def test_resume_refuses_a_study_of_another_budget(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    OptunaSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), study_name="s").search(1)
    other = OptunaSearcher(SearchContext(space, evaluator, Budget(budget - 1000), run_dir=tmp_path), study_name="s")
    with pytest.raises(ValueError, match="budget_flops"):
        other.search(2)


def test_pareto_front_of_hand_made_points() -> None:
    points = [
        {"accuracy": 0.5, "flops": 10, "id": "a"},
        {"accuracy": 0.6, "flops": 20, "id": "b"},
        {"accuracy": 0.55, "flops": 25, "id": "dominated by b"},
        {"accuracy": 0.6, "flops": 20, "id": "tie of b"},
        {"accuracy": 0.4, "flops": 10, "id": "dominated by a"},
        {"accuracy": 0.9, "flops": 50, "id": "c"},
    ]
    assert [p["id"] for p in pareto_front(points)] == ["a", "b", "c"]
    with pytest.raises(KeyError, match="flops"):
        pareto_front([{"accuracy": 1.0}])


def test_multi_objective_front_is_non_dominated_and_written(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    searcher = SEARCHERS.create("optuna-mo", SearchContext(space, evaluator, Budget(budget), seed=0, run_dir=tmp_path),
                                population_size=6)
    assert isinstance(searcher, OptunaMOSearcher)
    result = searcher.search(18)
    front = result.extra["pareto_front"]
    assert front and all(p["flops"] <= budget for p in front)
    for a in front:
        for b in front:
            assert not dominates(a, b), (a, b)
    # Every evaluated point is on the front or dominated by a point of it.
    on_front = {p["index"] for p in front}
    for entry in result.history:
        point = {"accuracy": entry.metrics["accuracy"], "flops": entry.metrics["flops"]}
        assert entry.index in on_front or any(
            dominates(p, point) or (p["accuracy"], p["flops"]) == (point["accuracy"], point["flops"]) for p in front
        )
    written = json.loads((tmp_path / "pareto.json").read_text())
    assert written["front"] == front and written["budget_flops"] == budget
    for p in written["front"]:
        assert space.flops(Architecture.from_dict(p["architecture"])) == p["flops"]
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="must be one of"):
        OptunaMOSearcher(SearchContext(space, evaluator, Budget(budget)), sampler="cmaes")


class _Crash(BaseException):
    """Stands in for kill -9 at an exact point (not an `Exception`, so nothing catches it)."""


def test_crash_between_history_append_and_tell_is_not_evaluated_twice(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, evaluator, budget = setup
    first = OptunaSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=tmp_path), n_startup_trials=3)
    tells = 0

    def crashing_tell(study: optuna.Study, trial: Any, values: Any) -> None:
        nonlocal tells
        tells += 1
        if tells == 3:
            raise _Crash
        study.tell(trial, list(values))

    first._tell = crashing_tell  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        first.search(5)
    assert len(first.history) == 3 and _states(first.study) == {TrialState.COMPLETE: 2, TrialState.RUNNING: 1}

    counting = CountingEvaluator(evaluator)
    second = OptunaSearcher(SearchContext(space, counting, Budget(budget), run_dir=tmp_path), n_startup_trials=3)
    result = second.search(5)
    assert second.recovered == {"adopted": 1, "retried": 0}
    assert len(result.history) == 5 and len(counting.calls) == 2  # the third was taken from the history
    assert _states(second.study) == {TrialState.COMPLETE: 5}
    indices = sorted(t.user_attrs["history_index"] for t in second.study.get_trials())
    assert indices == [0, 1, 2, 3, 4]


def test_kill_minus_9_mid_trial_resumes_and_retries_it(tmp_path: Path) -> None:
    n_trials, killed_after = 7, 3
    run_dir = tmp_path / "run"
    script = tmp_path / "search.py"
    script.write_text(SETUP + textwrap.dedent(f"""
        import time
        from pathlib import Path
        from automl_prune.train.runtime import configure_torch
        from agents import SearchContext
        from agents.optuna_search import OptunaSearcher
        from search_spaces import Budget

        configure_torch()
        space, evaluator, budget = make_setup()

        class Slow:
            calls = 0

            def evaluate(self, architecture):
                Slow.calls += 1
                Path({str(tmp_path)!r}, f"evaluating-{{Slow.calls}}").touch()
                time.sleep(0.4 if Slow.calls <= {killed_after} else 60)  # the next one hangs until killed
                return evaluator.evaluate(architecture)

        context = SearchContext(space, Slow(), Budget(budget), run_dir={str(run_dir)!r})
        OptunaSearcher(context, n_startup_trials=3).search({n_trials})
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "AUTOML_PRUNE_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        marker = tmp_path / f"evaluating-{killed_after + 1}"
        deadline = time.monotonic() + 90
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"search exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the search subprocess never reached the trial to kill")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL

    namespace: dict[str, Any] = {}
    exec(SETUP, namespace)
    space, evaluator, budget = namespace["make_setup"]()
    study_name = f"optuna-{budget}"
    killed = _load(run_dir, study_name)
    assert _states(killed) == {TrialState.COMPLETE: killed_after, TrialState.RUNNING: 1}
    interrupted = next(t for t in killed.get_trials() if t.state == TrialState.RUNNING)
    context = SearchContext(space, evaluator, Budget(budget), run_dir=run_dir)
    before = [e.architecture for e in OptunaSearcher(context).history.entries]
    assert len(before) == killed_after

    searcher = OptunaSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=run_dir), n_startup_trials=3)
    result = searcher.search(n_trials)
    trials = searcher.study.get_trials()
    assert searcher.recovered == {"adopted": 0, "retried": 1}
    assert _states(searcher.study) == {TrialState.COMPLETE: n_trials, TrialState.FAIL: 1}
    assert [e.architecture for e in result.history[:killed_after]] == before  # finished trials kept
    assert len(result.history) == n_trials
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == interrupted.number)
    assert retry.state == TrialState.COMPLETE and retry.params == interrupted.params
    assert retry.user_attrs["widths"] == interrupted.user_attrs["widths"]
    assert trials[interrupted.number].state == TrialState.FAIL
    # Running it again finds nothing to do and changes nothing.
    again = OptunaSearcher(SearchContext(space, evaluator, Budget(budget), run_dir=run_dir)).search(n_trials)
    assert len(again.history) == n_trials
