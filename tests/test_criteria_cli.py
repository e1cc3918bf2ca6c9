"""Every seed-paper criterion through `search` and `export` on a residual and a depthwise model."""

from __future__ import annotations

import json

import pytest

from automl_prune.cli import main

CRITERIA = ["l1-std", "taylor", "ezcrop", "similarity", "reap", "ccp"]


@pytest.mark.parametrize("model", ["tiny-resnet", "mobilenetv2-small"])
@pytest.mark.parametrize("criterion", CRITERIA)
def test_criterion_searches_and_exports(model: str, criterion: str, tmp_path, capsys) -> None:
    cache, run = tmp_path.parent / f"cache-{model}", tmp_path / "run"
    common = ["--model", model, "--dataset", "synthetic", "--pretrain-epochs", "0.3", "--cache-dir", str(cache),
              "--no-progress", "--criterion", criterion, "--calibration-size", "64"]
    code = main(["search", *common, "--workers", "0", "--agent", "random", "--episodes", "2", "--flops", "0.5",
                 "--finetune-epochs", "0.05", "--rerank-top-k", "0", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert arch["flops"] <= 0.5 * arch["base_flops"]
    code = main(["export", *common, "--arch", str(run / "best" / "arch.json"), "--out", str(tmp_path / "export")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "export" / "weights.pt").exists()


def test_unknown_criterion_lists_the_valid_ones_and_writes_nothing(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.3",
                 "--cache-dir", str(tmp_path / "cache"), "--criterion", "l1std", "--out", str(run), "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'l1-std'" in err and "ccp" in err
    assert not run.exists()


def test_dmcp_ranks_channels_with_a_data_criterion(tmp_path, capsys) -> None:
    code = main(["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.3",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--criterion", "l1-std",
                 "--calibration-size", "64", "--workers", "0", "--agent", "dmcp", "--agent-option", "steps=5",
                 "--episodes", "2", "--flops", "0.5", "--finetune-epochs", "0.05", "--rerank-top-k", "0",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
