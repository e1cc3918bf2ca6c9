"""Streaming image folders: the same splits as the in-memory path, chosen by size, a search end to end, and a
loader that never holds the folder in memory."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import SearchContext
from automl_prune.cli import main
from automl_prune.data.datasets import iterate_batches, load_dataset
from automl_prune.data.streaming import LazyImages, estimate_decoded_bytes
from automl_prune.errors import ConfigError, DatasetNotFoundError
from automl_prune.scoring.evaluator import accuracy_and_loss
from search_spaces import Budget

CLASSES = ("circle", "square", "stripes")
TRAIN_PER_CLASS, TEST_PER_CLASS = 100, 20


def _image(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A 64x64 RGB picture of its class (a bright disc, a square or stripes) on noise, at a random place."""
    pixels = rng.integers(0, 90, size=(size, size, 3)).astype(np.uint8)
    cy, cx = rng.integers(20, 44, size=2)
    yy, xx = np.mgrid[:size, :size]
    if kind == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
    elif kind == "square":
        mask = (abs(yy - cy) < 10) & (abs(xx - cx) < 10)
    else:
        mask = (xx // 4) % 2 == 0
    pixels[mask] = rng.integers(160, 256, size=3).astype(np.uint8)
    return pixels


def _write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for part, count in per_class.items():
        for kind in CLASSES:
            folder = root / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_image(kind, rng)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """360 generated 64x64 PNGs: 3 classes, 100 train and 20 test images each."""
    return _write_folder(tmp_path_factory.mktemp("images"), {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS})


def _count_largest_load(monkeypatch) -> dict[str, int]:
    """Patch `LazyImages` indexing to record (under ``"load"``) the most images one read decoded."""
    largest = {"load": 0}
    original = LazyImages.__getitem__

    def counting(self, index):
        out = original(self, index)
        largest["load"] = max(largest["load"], len(out) if out.dim() == 4 else 1)
        return out

    monkeypatch.setattr(LazyImages, "__getitem__", counting)
    return largest


def test_streamed_splits_are_the_in_memory_splits_read_from_disk(folder, capsys) -> None:
    stats = {"mean": (0.3, 0.3, 0.3), "std": (0.25, 0.25, 0.25)}
    streamed = load_dataset("imagefolder", folder, seed=3, stream=True, loader_workers=0, **stats)
    in_memory = load_dataset("imagefolder", folder, seed=3, stream=False, **stats)
    err = capsys.readouterr().err
    assert "streaming from disk" in err and "decoded into memory" in err
    assert len(err.strip().splitlines()) == 2  # one line per load, stating the choice
    for name in ("train", "val", "test"):
        lazy, held = getattr(streamed, name), getattr(in_memory, name)
        assert isinstance(lazy.images, LazyImages) and isinstance(held.images, torch.Tensor)
        assert lazy.images.shape == held.images.shape and lazy.images.dtype == held.images.dtype
        assert torch.equal(lazy.labels, held.labels)  # the same fixed-seed partition of the training files
        index = torch.tensor([len(lazy) - 1, 0, 5])
        assert torch.allclose(lazy.images[index], held.images[index], atol=1e-5)
        assert torch.allclose(lazy.images[2:9], held.images[2:9], atol=1e-5)
        assert torch.allclose(lazy.images[-1], held.images[-1], atol=1e-5)
    assert len(streamed.train) + len(streamed.val) == 3 * TRAIN_PER_CLASS and len(streamed.val) == 30
    assert not set(streamed.train.images.paths) & set(streamed.val.images.paths)
    assert streamed.spec == in_memory.spec
    other_seed = load_dataset("imagefolder", folder, seed=4, stream=True, loader_workers=0, **stats)
    assert set(other_seed.val.images.paths) != set(streamed.val.images.paths)


def test_batches_cover_the_split_once_through_dataloader_workers(folder) -> None:
    splits = load_dataset("imagefolder", folder, stream=True, loader_workers=1, input_size=48, resize=56)
    split = splits.train
    assert split.images.workers == 1 and split.images.shape[1:] == (3, 48, 48)
    batches = list(iterate_batches(split, 64, shuffle=True, seed=0, augment=True, spec=splits.spec))
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, len(split) - 256]
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(split.labels.tolist())
    assert all(x.shape[1:] == (3, 48, 48) and x.dtype == torch.float32 for x, _ in batches)
    # Normalized with the mean and std measured on a sample of the training images.
    pixels = torch.cat([x for x, _ in iterate_batches(split, 100, shuffle=False, seed=0)])
    assert pixels.mean().abs() < 0.15 and (pixels.std() - 1).abs() < 0.15
    assert len(splits.spec.mean) == 3 and min(splits.spec.std) > 0


def test_choice_is_automatic_by_decoded_size_and_can_be_overridden(folder, capsys, monkeypatch) -> None:
    decoded = estimate_decoded_bytes(3 * (TRAIN_PER_CLASS + TEST_PER_CLASS), 32)
    small = load_dataset("imagefolder", folder, stream_limit_bytes=decoded + 1, loader_workers=0)
    large = load_dataset("imagefolder", folder, stream_limit_bytes=decoded - 1, loader_workers=0)
    assert isinstance(small.train.images, torch.Tensor) and isinstance(large.train.images, LazyImages)
    lines = capsys.readouterr().err.strip().splitlines()
    assert "within the" in lines[0] and "decoded into memory" in lines[0]
    assert "over the" in lines[1] and "streaming from disk" in lines[1]
    monkeypatch.setenv("AUTOML_PRUNE_STREAM", "1")
    assert isinstance(load_dataset("imagefolder", folder, loader_workers=0).val.images, LazyImages)
    monkeypatch.setenv("AUTOML_PRUNE_STREAM", "0")
    monkeypatch.setenv("AUTOML_PRUNE_STREAM_LIMIT_MB", "0")
    assert isinstance(load_dataset("imagefolder", folder).val.images, torch.Tensor)
    monkeypatch.setenv("AUTOML_PRUNE_STREAM", "sometimes")
    with pytest.raises(ConfigError, match="AUTOML_PRUNE_STREAM must be one of"):
        load_dataset("imagefolder", folder)


def test_bad_folders_and_whole_split_operations_are_one_clear_line(folder, tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train/ and test/"):
        load_dataset("imagefolder", tmp_path, stream=True)
    splits = load_dataset("imagefolder", folder, stream=True, loader_workers=0)
    with pytest.raises(ConfigError, match="AUTOML_PRUNE_STREAM=0"):
        splits.val.images.to("cpu")
    broken = _write_folder(tmp_path / "broken", {"train": 4, "test": 2})
    (broken / "test" / "square" / "0001.png").write_bytes(b"not a png")
    lazy = load_dataset("imagefolder", broken, stream=True, loader_workers=1)
    with pytest.raises(DatasetNotFoundError) as caught:
        list(iterate_batches(lazy.test, 4, shuffle=False, seed=0))  # decoded by a DataLoader worker process
    message = str(caught.value)
    assert "0001.png is not a readable image" in message and "\n" not in message and "Traceback" not in message


def _rss_bytes() -> int:
    """Resident anonymous memory of this process (where tensors live; library pages the kernel may drop and
    reload are left out, so they cannot be mistaken for growth)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def test_loader_does_not_hold_the_folder_in_memory(folder) -> None:
    """At 288x288 the folder decodes to ~360 MB of float32; reading every batch (training order, evaluation)
    must not grow memory with the folder. Once a few batches have set up the allocator, a whole pass over all
    three splits grew resident memory by ~0 MB here; holding just the training split would add ~290 MB."""
    splits = load_dataset("imagefolder", folder, stream=True, input_size=288, loader_workers=0,
                          mean=(0.3,) * 3, std=(0.25,) * 3)
    decoded = sum(len(s) for s in (splits.train, splits.val, splits.test)) * 3 * 288 * 288 * 4
    assert decoded > 350e6
    # Pickled (what Ray's object store receives): file names and the transform, a few bytes per image.
    assert len(pickle.dumps(splits)) < 100 * 360
    restored = pickle.loads(pickle.dumps(splits.val))
    assert torch.equal(restored.images[:3], splits.val.images[:3])
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    # Lazy imports (PIL plugins) and the allocator's first blocks for batches of this size, before measuring.
    for _ in zip(range(4), iterate_batches(splits.train, 16, shuffle=True, seed=1), strict=False):
        pass
    accuracy_and_loss(model, splits.val.images, splits.val.labels, 16)
    baseline, peak, seen = _rss_bytes(), 0, 0
    for split in (splits.train, splits.val, splits.test):
        for x, _ in iterate_batches(split, 16, shuffle=True, seed=0):
            seen += len(x)
            peak = max(peak, _rss_bytes() - baseline)
        accuracy_and_loss(model, split.images, split.labels, 16)
        peak = max(peak, _rss_bytes() - baseline)
    assert seen == 360
    # The allocator's own noise reached 45-54 MB in some runs on a loaded 2-core machine (0-25 MB in most);
    # holding the training split alone would add ~290 MB.
    assert peak < decoded / 4, f"memory grew by {peak / 1e6:.0f} MB reading a folder of {decoded / 1e6:.0f} MB"


def test_search_runs_end_to_end_on_a_streamed_folder(folder, tmp_path, capsys, monkeypatch) -> None:
    """Streaming, the input size and the loader workers come from the config (here its flags)."""
    largest = _count_largest_load(monkeypatch)
    run = tmp_path / "run"
    code = main(["search", "--model", "tiny-cnn", "--dataset", "imagefolder", "--data-root", str(folder),
                 "--pretrain-epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(run),
                 "--no-progress", "--workers", "0", "--agent", "random", "--episodes", "2", "--flops", "0.5",
                 "--finetune-epochs", "0.1", "--rerank-top-k", "1", "--calibration-size", "64",
                 "--stream", "on", "--input-size", "40", "--loader-workers", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "streaming from disk" in err and "3x40x40" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "imagefolder" and summary["compressed"]["test_acc"] is not None
    assert summary["compressed"]["flops"] <= 0.5 * summary["base"]["flops"]
    assert (run / "best" / "arch.json").is_file()
    # Images were only ever read a batch at a time: never the 270 training images at once.
    assert 0 < largest["load"] <= 128
    code = main(["search", "--model", "tiny-cnn", "--dataset", "imagefolder", "--data-root", str(folder),
                 "--stream", "sometimes", "--out", str(tmp_path / "refused")])
    assert code == 2 and "`stream` must be one of ['auto', 'on', 'off']" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_evaluator_scores_streamed_and_in_memory_data_the_same(folder) -> None:
    from automl_prune.models import build_model
    from automl_prune.scoring.evaluator import Evaluator
    from search_spaces import SearchSpace

    stats = {"mean": (0.3, 0.3, 0.3), "std": (0.25, 0.25, 0.25)}
    streamed = load_dataset("imagefolder", folder, stream=True, loader_workers=0, **stats)
    in_memory = load_dataset("imagefolder", folder, stream=False, **stats)
    model = build_model("tiny-cnn", 3, len(CLASSES), 32).eval()
    space = SearchSpace.from_model(model, in_memory.val.images[:1])
    arch = space.from_ratios(0.5)
    scores = []
    for splits in (streamed, in_memory):
        evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                              train_labels=splits.train.labels, bn_batches=2, bn_batch_size=64, finetune_steps=2,
                              finetune_batch_size=32, seed=0, device="cpu")
        metrics = evaluator.evaluate(arch)
        scores.append((metrics.accuracy, metrics.loss, evaluator.base_accuracy()))
    assert isinstance(streamed.val.images, LazyImages)
    assert scores[0][0] == scores[1][0] and scores[0][2] == scores[1][2]
    assert scores[0][1] == pytest.approx(scores[1][1], rel=1e-4)


def test_a_streamed_validation_split_is_decoded_once_for_every_candidate(folder, capsys, monkeypatch) -> None:
    from automl_prune.data import streaming
    from automl_prune.models import build_model
    from automl_prune.scoring.evaluator import Evaluator
    from search_spaces import SearchSpace

    stats = {"mean": (0.3, 0.3, 0.3), "std": (0.25, 0.25, 0.25)}
    splits = load_dataset("imagefolder", folder, stream=True, loader_workers=0, **stats)
    reads = {"val": 0}
    original = LazyImages.iter_batches

    def counting(self, batches, **kwargs):
        batches = list(batches)
        if self is splits.val.images:
            reads["val"] += sum(len(b) for b in batches)
        return original(self, batches, **kwargs)

    monkeypatch.setattr(LazyImages, "iter_batches", counting)
    model = build_model("tiny-cnn", 3, len(CLASSES), 32).eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 3, 32, 32))

    def scores(evaluator: Evaluator) -> list[float]:
        return [evaluator.evaluate(space.from_ratios(r)).accuracy for r in (0.5, 0.7)] + [evaluator.base_accuracy()]

    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=1,
                          seed=0, device="cpu")
    held = scores(evaluator)
    assert reads["val"] == len(splits.val.images)  # three scores, one read of the split
    assert "read once and kept in memory" in capsys.readouterr().err
    # Too large for the limit: it stays on disk and every score reads it again, with the same results.
    monkeypatch.setattr(streaming, "stream_limit_bytes", lambda: 1)
    reads["val"] = 0
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, bn_batches=1,
                          seed=0, device="cpu")
    assert scores(evaluator) == held
    assert reads["val"] == 3 * len(splits.val.images)


def test_dmcp_searches_a_streamed_folder_as_it_searches_it_in_memory(folder, monkeypatch) -> None:
    """DMCP trains its supernet on streamed images a batch at a time, and finds what the in-memory copy finds."""
    from agents.dmcp import DMCPSearcher
    from automl_prune.models import build_model
    from automl_prune.scoring.evaluator import Evaluator
    from search_spaces import SearchSpace

    largest = _count_largest_load(monkeypatch)
    stats = {"mean": (0.3, 0.3, 0.3), "std": (0.25, 0.25, 0.25)}
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 3, len(CLASSES), 32).eval()
    space = SearchSpace.from_model(model, torch.zeros(1, 3, 32, 32))
    found = []
    for stream in (True, False):
        splits = load_dataset("imagefolder", folder, stream=stream, loader_workers=0, **stats)
        evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels,
                              train_labels=splits.train.labels, bn_batches=1, bn_batch_size=32, seed=0, device="cpu")
        searcher = DMCPSearcher(SearchContext(space, evaluator, Budget(space.flops_budget(0.5)), seed=0), steps=4,
                                warmup_steps=1, batch_size=16, calibration_steps=20)
        searcher.train()
        found.append((searcher.expected_widths(), searcher.final_architecture().widths))
    assert isinstance(splits.train.images, torch.Tensor)  # the second pass was the in-memory one
    assert found[0][1] == found[1][1]
    assert found[0][0] == pytest.approx(found[1][0], rel=1e-4)
    assert 0 < largest["load"] <= 32  # batches (and the BN calibration), never the whole training split
