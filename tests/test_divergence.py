"""A fine-tune that diverges stops the run with one line; a training split under one batch is refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from automl_prune.cli import main
from automl_prune.data.datasets import load_dataset
from automl_prune.errors import TrainingDivergedError
from automl_prune.models import build_model
from automl_prune.train.training import Trainer

TINY = ["--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.2", "--no-progress", "--agent",
        "random", "--episodes", "2", "--rerank-top-k", "0"]


def test_the_trainer_stops_when_the_loss_is_not_finite() -> None:
    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 1, 10, 16)
    trainer = Trainer(model, splits, epochs=1, lr=1e12, batch_size=64)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        trainer.run(progress=False)


@pytest.mark.parametrize("workers", ["0", "2"], ids=["in-process", "ray-tune-trials"])
def test_a_diverging_fine_tune_is_one_line_and_exports_nothing(tmp_path: Path, capsys, workers: str) -> None:
    run = tmp_path / "run"
    code = main(["search", *TINY, "--workers", workers, "--finetune-lr", "1e12", "--finetune-epochs", "0.5",
                 "--out", str(run), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "diverged" in errors[0] and err.strip().splitlines()[-1] == errors[0]
    if workers == "0":  # under Ray, Tune itself logs the failed trial's traceback before the run's one line
        assert "Traceback" not in err
    assert not (run / "best").exists() and not (run / "summary.json").exists()
    assert json.loads((run / "config.json").read_text())["finetune_lr"] == 1e12  # the search itself was kept


def test_a_training_split_under_one_batch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    import automl_prune
    from automl_prune.errors import ConfigError

    model = build_model("tiny-cnn", 1, 10, 16)
    images, labels = torch.randn(100, 1, 16, 16), torch.randint(0, 10, (100,))
    with pytest.raises(ConfigError, match="100 images, fewer than one fine-tune batch of 128"):
        automl_prune.search(model, train=(images, labels), val=(images, labels), out=tmp_path / "run", workers=0)
    assert not (tmp_path / "run").exists()
