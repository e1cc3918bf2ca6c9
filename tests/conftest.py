"""Shared test set-up: one torch thread (measured far faster here than two), fixed seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from automl_prune.train.runtime import configure_torch

configure_torch()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Ray tests first: they are the longest file (multi-process searches, minutes), so under `make test`'s
    two workers (one file each) one worker runs them while the other takes the rest, instead of one worker
    finishing them alone at the end."""
    items.sort(key=lambda item: Path(str(item.fspath)).name != "test_ray.py")  # a stable sort keeps the rest
