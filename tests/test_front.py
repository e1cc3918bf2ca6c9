"""A front of budgets (issue 28): several values of one budget run one search each, from one profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from automl_prune.cli import main
from automl_prune.errors import ConfigError
from automl_prune.run.front import split_front

TINY = ["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.3", "--no-progress",
        "--workers", "0", "--episodes", "2", "--finetune-epochs", "0.05", "--rerank-top-k", "1", "--rerank-rungs",
        "1", "--calibration-size", "64"]


def test_split_front_takes_one_list_and_refuses_the_rest() -> None:
    assert split_front({"flops": [0.5]}) == ({"flops": 0.5}, None, [])
    assert split_front({"flops": [0.5, 0.25], "size": ["0.2"]}) == ({"flops": 0.5, "size": "0.2"}, "flops",
                                                                     [0.5, 0.25])
    with pytest.raises(ConfigError, match="varies one budget, but flops and size are both lists"):
        split_front({"flops": [0.5, 0.25], "size": ["0.2", "0.1"]})
    with pytest.raises(ConfigError, match=r"`flops` lists 0.5 more than once"):
        split_front({"flops": [0.5, 0.25, 0.5]})
    with pytest.raises(ConfigError, match="`size` is an empty list"):
        split_front({"size": []})


def test_a_bad_front_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "front"
    assert main([*TINY, "--flops", "0.5", "0.5", "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 2
    assert main([*TINY, "--flops", "0.5", "1.5", "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and "more than once" in err[0] and "1.5" in err[1] and "Traceback" not in "".join(err)
    assert not out.exists() and not (tmp_path / "c").exists()


def test_the_yaml_file_takes_a_front_too(tmp_path: Path) -> None:
    from automl_prune.config import load_config_file

    path = tmp_path / "front.yaml"
    path.write_text("flops: [0.5, 0.25]\nsize: 0.2\n")
    assert load_config_file(path) == {"flops": [0.5, 0.25], "size": "0.2"}
    path.write_text("flops: [0.5, big]\n")
    with pytest.raises(ConfigError, match="`flops` must be a number"):
        load_config_file(path)


def test_a_size_front_measures_the_profile_once_and_exports_every_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "front"
    args = [*TINY, "--agent", "sensitivity", "--search", "bits", "--size", "0.2", "0.15", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "front: budget 1/2 (--size 0.2)" in err and "front: budget 2/2 (--size 0.15)" in err
    first, second = (json.loads((out / f"size-{tag}" / "summary.json").read_text()) for tag in ("0.2", "0.15"))
    assert first["profile"]["measured"] > 0 and first["profile"]["reused"] == 0
    assert second["profile"]["measured"] == 0 and second["profile"]["reused"] == first["profile"]["measured"]
    for tag, summary, budget in (("0.2", first, 0.2), ("0.15", second, 0.15)):
        assert summary["compressed"]["size_bits"] <= budget * summary["base"]["size_bits"]
        assert (out / f"size-{tag}" / "best" / "arch.json").exists()
    front = json.loads((out / "front.json").read_text())
    assert front["budget"] == "size" and [r["value"] for r in front["rows"]] == ["0.2", "0.15"]
    assert [r["profile_reused"] > 0 for r in front["rows"]] == [False, True]
    assert front["rows"][1]["size_ratio"] <= 0.15 < front["rows"][0]["size_ratio"] <= 0.2
    table = (out / "front.md").read_text()
    assert "| --size" in table and str(out / "size-0.15") in table
    with Image.open(out / "front.png") as picture:
        assert picture.size[0] > 300

    # The same command again: both budgets are finished, nothing runs.
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "budget 1/2 (--size 0.2) already finished" in err and "budget 2/2 (--size 0.15) already finished" in err
    assert "searching" not in err
