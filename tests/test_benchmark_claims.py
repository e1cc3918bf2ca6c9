"""Two benchmark processes sharing one output folder never run the same row (benchmarks/quality.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
quality = pytest.importorskip("quality")

KEY = "vgg-small|0.25|optuna|1"


def test_a_row_held_by_a_live_process_is_not_claimed(tmp_path: Path) -> None:
    claim = tmp_path / ".claims" / "vgg-small_0.25_optuna_1.pid"
    claim.parent.mkdir()
    claim.write_text("1")  # pid 1 is always alive
    assert not quality.claim_row(tmp_path, KEY)
    quality.release_row(tmp_path, KEY)  # not ours: must stay
    assert claim.read_text() == "1"


def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim = tmp_path / ".claims" / "vgg-small_0.25_optuna_1.pid"
    claim.parent.mkdir()
    claim.write_text(str(dead.pid))
    assert quality.claim_row(tmp_path, KEY)
    assert quality.claim_row(tmp_path, KEY)  # re-entrant for its owner
    quality.release_row(tmp_path, KEY)
    assert not claim.exists()
    assert quality.claim_row(tmp_path, KEY)
