"""Each top-level package imports on its own, first, in a fresh interpreter (no import cycles)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["automl_prune", "search_spaces", "envs", "agents", "automl_prune.cli",
                                    "automl_prune.cost.flops", "automl_prune.scoring.evaluator"])
def test_imports_first(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
