"""benchmarks/quality.py: processes sharing one output folder never run the same row; the table's arithmetic."""

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


def _row(agent: str, seed: int, acc: float, search: float = 10.0, origin: str | None = None) -> dict:
    return {"key": f"m|0.5|{agent}|{seed}", "model": "m", "budget": 0.5, "agent": agent, "seed": seed,
            "test_acc": acc, "flops_ratio": 0.5, "search_seconds": search, "rerank_seconds": 1.0,
            "evaluations": 1 if agent == "uniform" else 40, "chosen_origin": origin}


def test_the_table_compares_on_matched_seeds_counts_uniform_picks_and_leaves_out_untimed_runs() -> None:
    rows = [_row("uniform", s, a) for s, a in ((0, 0.90), (1, 0.92), (2, 0.94))]
    rows += [_row("ddpg", 0, 0.91, 100.0, "uniform"), _row("ddpg", 1, 0.93, 0.0, "search #3")]
    groups = {g["agent"]: g for g in quality.aggregate(rows)}
    ddpg = groups["ddpg"]
    assert ddpg["vs_uniform"] == pytest.approx(0.01)  # against uniform's seeds 0 and 1 (0.91), not all three
    assert ddpg["picked_uniform"] == (1, 2)
    assert ddpg["untimed"] == 1 and ddpg["search_seconds"][0] == pytest.approx(100.0)
    assert groups["uniform"]["picked_uniform"] is None and groups["uniform"]["vs_uniform"] is None
    table = quality.markdown(quality.aggregate(rows), "header")
    assert "1 of 2" in table and "(1 untimed)" in table and "+1.00 (spread" in table


def test_a_row_whose_run_folder_is_gone_counts_as_uniform_when_it_kept_uniforms_architecture(tmp_path: Path) -> None:
    uniform = {**_row("uniform", 0, 0.90), "architecture": {"conv1": 8, "conv2": 16}}
    kept = {**_row("ddpg", 0, 0.90), "architecture": {"conv1": 8, "conv2": 16}, "run_dir": str(tmp_path / "gone")}
    other = {**_row("optuna", 0, 0.89), "architecture": {"conv1": 6, "conv2": 20}, "run_dir": str(tmp_path / "gone")}
    groups = {g["agent"]: g for g in quality.aggregate([uniform, kept, other])}
    assert groups["ddpg"]["picked_uniform"] == (1, 1)
    assert groups["optuna"]["picked_uniform"] == (0, 1)
    assert quality.chosen_origin(other) is None  # no uniform row to compare with: unknown, not guessed


def _bits_row(agent: str, seed: int, acc: float, bits: int) -> dict:
    return {"key": f"m|bits|{agent}|{seed}", "model": "m", "kind": "bits", "agent": agent, "seed": seed,
            "test_acc": acc, "size_ratio": 0.13, "flops_ratio": 1.0, "bops_ratio": bits * bits / 1024,
            "architecture": {"conv": 8}, "bits": {"conv": [bits, bits]}}


def test_the_bits_table_pairs_seeds_uses_the_sample_spread_and_counts_uniform_picks(tmp_path: Path) -> None:
    bits_quality = pytest.importorskip("bits_quality")
    rows = [_bits_row("uniform", 0, 0.900, 4), _bits_row("uniform", 1, 0.910, 4), _bits_row("uniform", 2, 0.920, 4),
            _bits_row("ddpg", 0, 0.900, 4), _bits_row("ddpg", 1, 0.930, 5)]  # seed 0 kept the uniform entrant
    for row in rows:
        quality.append_result(tmp_path / "results.jsonl", row)
    text = bits_quality.report(tmp_path)
    lines = text.splitlines()
    uniform_line, ddpg_line = (next(line for line in lines if f"| {a} " in line) for a in ("uniform", "ddpg"))
    assert "91.00 +- 1.00" in uniform_line  # sample std (ddof=1) of 90, 91, 92
    # matched seeds 0 and 1: (0 + 2) / 2 = +1.00; spread = max(ddpg 2.12, uniform on seeds 0-1 0.71)
    assert "+1.00 (2.12)" in ddpg_line
    assert "1 of 2" in ddpg_line
    assert (tmp_path / "bits_quality.png").stat().st_size > 0
