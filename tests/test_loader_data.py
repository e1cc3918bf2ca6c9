"""The user's DataLoaders are the data: read when needed, never collected whole (issue 26)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import automl_prune
from automl_prune.data.loader_split import LoaderSplit
from automl_prune.errors import ConfigError
from automl_prune.scoring.evaluator import Evaluator
from search_spaces import SearchSpace

TRAIN_ITEMS = 200_000


class Generated(Dataset):
    """``n`` 1 x 16 x 16 images made in ``__getitem__`` (nothing is stored); the label is the brightest quadrant.
    ``calls`` counts ``__getitem__`` (the loaders below use no worker processes, so it counts every read)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.calls = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.calls += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = int(torch.randint(0, 4, (), generator=generator))
        image = torch.randn(1, 16, 16, generator=generator) * 0.5
        row, col = divmod(label, 2)
        image[:, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] += 1.5
        return image, label


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_a_search_reads_what_it_scores_and_fine_tunes_on_not_the_whole_training_set(tmp_path, capsys) -> None:
    train_set, val_set = Generated(TRAIN_ITEMS, 0), Generated(96, 1)
    train = DataLoader(train_set, batch_size=32, shuffle=True)
    val = DataLoader(val_set, batch_size=32)
    torch.manual_seed(0)
    model = SmallNet().eval()
    episodes, bn_batches = 3, 2
    result = automl_prune.search(model, train, val, flops=0.5, agent="random", episodes=episodes, workers=0,
                                 out=tmp_path / "run",
                                 cache_dir=tmp_path / "cache", criterion="l1", bn_batches=bn_batches, rerank_top_k=0,
                                 finetune_epochs=0.002, progress=False)  # 0.002 x 6250 batches: 13 steps
    summary = result.metrics
    ladder = summary["rerank"]
    candidates, rungs = len(ladder["candidates"]), len(ladder["rungs"])
    # What the search needs, in items: every score reads the 96 validation items at most once (the search keeps
    # them after its first read); every build recalibrates batch norm on bn_batches x 128 training items; every
    # fine-tune step reads one batch of 32; a few first batches identify and check the data.
    scores = builds = summary["evaluations"] + candidates * rungs + 2
    steps = candidates * max(ladder["rungs"])
    needed = scores * len(val_set) + builds * bn_batches * 128 + steps * 32 + 10 * 32
    assert val_set.calls <= scores * len(val_set)
    assert train_set.calls <= needed, (train_set.calls, needed)
    assert train_set.calls < 0.05 * TRAIN_ITEMS, train_set.calls  # never the whole training set
    assert summary["compressed"]["flops"] <= 0.5 * summary["base"]["flops"]
    assert (tmp_path / "run" / "best" / "arch.json").exists()
    assert "candidates are scored on all of it" in capsys.readouterr().err


def test_val_batches_scores_candidates_on_the_first_batches_and_the_final_model_on_all(tmp_path, capsys) -> None:
    val_set = Generated(160, 1)
    val = DataLoader(val_set, batch_size=32)
    model = SmallNet().eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16))
    evaluator = Evaluator(model, space, LoaderSplit(DataLoader(Generated(512, 0), batch_size=64), "train"),
                          LoaderSplit(val, "val"), bn_batches=1, val_batches=2, device="cpu")
    evaluator.evaluate(space.from_ratios(0.5))
    # One batch to estimate the size, then the two scored batches, kept: later scores read nothing.
    assert val_set.calls == 32 + 2 * 32
    evaluator.evaluate(space.from_ratios(0.7))
    evaluator.base_accuracy()
    assert val_set.calls == 32 + 2 * 32
    assert "its first 2 batches (the final model is scored on all of it)" in capsys.readouterr().err


def test_a_loader_that_cannot_reach_ray_workers_or_is_one_pass_is_refused_up_front(tmp_path) -> None:
    data = Generated(64, 0)
    lambda_loader = DataLoader(data, batch_size=16, collate_fn=lambda items: torch.utils.data.default_collate(items))
    with pytest.raises(ConfigError, match=r"cannot be sent to the 2 Ray worker processes.*workers=0"):
        automl_prune.search(SmallNet(), lambda_loader, DataLoader(data, batch_size=16), workers=2,
                            out=tmp_path / "run", cache_dir=tmp_path / "cache")
    generator = (batch for batch in DataLoader(data, batch_size=16))
    with pytest.raises(ConfigError, match="one-pass iterator"):
        automl_prune.search(SmallNet(), generator, DataLoader(data, batch_size=16), workers=0, out=tmp_path / "run",
                            cache_dir=tmp_path / "cache")
    assert not (tmp_path / "run").exists()


def test_fine_tunes_draw_the_loaders_batches_with_its_own_shuffling(tmp_path) -> None:
    from automl_prune.train.training import Trainer

    seen: list[int] = []

    class Recording(Generated):
        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            seen.append(index)
            return super().__getitem__(index)

    loader = DataLoader(Recording(256, 0), batch_size=32, shuffle=True)
    trainer = Trainer(SmallNet(), LoaderSplit(loader, "train"), epochs=1.5, lr=0.01, seed=0, device="cpu")
    assert trainer.steps_per_epoch == 8 and trainer.total_steps == 12
    trainer.run(until=5, progress=False)
    trainer.run(progress=False)  # continues the same pass, then starts the next one
    assert len(seen) == 12 * 32
    first, second = seen[:256], seen[256:]
    assert sorted(first) == list(range(256))  # one whole pass, shuffled, then the next pass
    assert first != list(range(256)) and len(set(second)) == len(second)


def test_the_run_directory_does_not_hold_the_loaders_data(tmp_path) -> None:
    train = DataLoader(Generated(4096, 0), batch_size=64, shuffle=True)
    val = DataLoader(Generated(64, 1), batch_size=64)
    automl_prune.search(SmallNet().eval(), train, val, flops=0.5, agent="random", episodes=2, workers=0,
                        out=tmp_path / "run", cache_dir=tmp_path / "cache", criterion="l1", rerank_top_k=0,
                        finetune_epochs=0.05, progress=False)
    total = sum(p.stat().st_size for p in (tmp_path / "run").rglob("*") if p.is_file())
    data_bytes = 4096 * 16 * 16 * 4
    assert total < data_bytes, total
    base = json.loads((tmp_path / "run" / "base.json").read_text())
    assert base["data_fingerprint"]


def test_dmcp_which_indexes_training_images_refuses_a_loader_up_front(tmp_path) -> None:
    data = DataLoader(Generated(64, 0), batch_size=16)
    with pytest.raises(ConfigError, match="agent dmcp trains its supernet on indexed training images"):
        automl_prune.search(SmallNet(), data, data, agent="dmcp", workers=0, out=tmp_path / "run",
                            cache_dir=tmp_path / "cache")
    assert not (tmp_path / "run").exists()


def test_a_trainer_lets_go_of_a_loader_pass_and_its_worker_processes() -> None:
    import multiprocessing

    from automl_prune.train.training import Trainer

    loader = DataLoader(Generated(512, 0), batch_size=64, shuffle=True, num_workers=2)
    trainer = Trainer(SmallNet(), LoaderSplit(loader, "train"), epochs=1, lr=0.01, seed=0, device="cpu")
    trainer.run(until=3, progress=False)
    assert multiprocessing.active_children()  # mid-pass: the loader's workers are alive for the next segment
    trainer.release_data()  # before other data is read (a rung's score): no forked worker inherits this pass
    assert not multiprocessing.active_children()
    trainer.run(progress=False)  # a new pass to the end of the plan, then let go of by itself
    assert trainer.step == trainer.total_steps and not multiprocessing.active_children()
