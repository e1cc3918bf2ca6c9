"""`--agent global`: one threshold on mean-normalised channel scores over every group, bisected to the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import SEARCHERS, SearchContext
from automl_prune.cli import main
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.prune.calibration import Calibration
from automl_prune.scoring.evaluator import Evaluator
from automl_prune.train.training import train
from search_spaces import Budget, SearchSpace


@pytest.fixture(scope="module")
def setup():
    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("tiny-resnet", 1, 10, 16)
    train(model, splits, epochs=1, lr=0.05, max_steps=20, progress=False)
    model = model.to(memory_format=torch.contiguous_format).eval()
    space = SearchSpace.from_model(model, splits.val.images[:1])
    calibration = Calibration.from_split(splits.train.images, splits.train.labels, samples=64)
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=2,
                          criterion="l1-std", calibration=calibration)
    return space, evaluator


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
def test_threshold_is_the_lowest_that_fits(setup, fraction: float) -> None:
    space, evaluator = setup
    budget = space.flops_budget(fraction)
    searcher = SEARCHERS.create("global", SearchContext(space, evaluator, Budget(budget), seed=0))
    result = searcher.search(5)
    assert len(result.history) == 1  # deterministic: one evaluation
    best = result.best
    assert space.flops(best) <= budget
    scores = searcher._normalised_scores()
    thresholds = np.unique(np.concatenate(list(scores.values())))
    kept_at = {t: searcher.architecture_at(float(t), scores) for t in thresholds}
    fitting = [t for t, arch in kept_at.items() if space.flops(arch) <= budget]
    assert best == kept_at[min(fitting)]  # no lower threshold (more channels kept) fits
    assert SEARCHERS.create("global", SearchContext(space, evaluator, Budget(budget), seed=1)).architecture() == best


def test_full_budget_keeps_every_channel(setup) -> None:
    space, evaluator = setup
    searcher = SEARCHERS.create("global", SearchContext(space, evaluator, Budget(space.flops_budget(1.0)), seed=0))
    assert searcher.architecture().widths == space.full().widths


def test_cli_global_with_l1_std_and_a_set_choosing_criterion_refused(tmp_path, capsys) -> None:
    common = ["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.3",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "0", "--agent", "global",
              "--flops", "0.5", "--finetune-epochs", "0.05", "--rerank-top-k", "1", "--calibration-size", "64"]
    assert main([*common, "--criterion", "l1-std", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main([*common, "--criterion", "ccp", "--out", str(tmp_path / "ccp")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "per-channel scores" in err
    assert not (tmp_path / "ccp").exists()
