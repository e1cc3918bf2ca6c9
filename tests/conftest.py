"""Shared test set-up: one torch thread (measured far faster here than two), fixed seeds."""

from __future__ import annotations

import pytest
import torch

from automl_prune.runtime import configure_torch

configure_torch()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
