"""Shared test set-up: one torch thread (measured far faster here than two), fixed seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from automl_prune.train.runtime import configure_torch

configure_torch()


@pytest.fixture(autouse=True)
def _ladder_measures_no_profile(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ladder's one-shot entrant measures its profile by default (``one_shot_entrant: always``), which
    doubled the suite's time; only the tests marked ``one_shot_entrant`` (tests/test_ladder_one_shot.py) let it.
    Elsewhere a recorded or cached one-shot answer still enters; a profile to measure is skipped, as
    ``if-cheaper`` skips a costly one."""
    if request.node.get_closest_marker("one_shot_entrant"):
        return
    from automl_prune.run import rerank_stage

    monkeypatch.setattr(rerank_stage, "_measured_entrant",
                        lambda *args, **kwargs: (None, "not measured in this test (tests/conftest.py)", 0))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Ray tests first: they are the longest file (multi-process searches, minutes), so under `make test`'s
    two workers (one file each) one worker runs them while the other takes the rest, instead of one worker
    finishing them alone at the end. Tests marked ``cuda`` are skipped where no CUDA kernel runs."""
    items.sort(key=lambda item: Path(str(item.fspath)).name != "test_ray.py")  # a stable sort keeps the rest
    marked = [item for item in items if item.get_closest_marker("cuda") is not None]
    if marked:
        from automl_prune.train.device import resolve_device

        decision = resolve_device("auto")
        if decision.device.type != "cuda":
            skip = pytest.mark.skip(reason=f"needs CUDA: {decision.reason}")
            for item in marked:
                item.add_marker(skip)
