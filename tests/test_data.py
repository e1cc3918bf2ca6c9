from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from automl_prune.data.datasets import DEFAULT_FASHION_MNIST_ROOT, iterate_batches, load_dataset
from automl_prune.errors import ConfigError, DatasetNotFoundError, UnknownNameError


def test_synthetic_splits_shapes_and_types() -> None:
    splits = load_dataset("synthetic")
    assert splits.spec.in_channels == 1 and splits.spec.input_size == 16 and splits.spec.num_classes == 10
    assert splits.train.images.shape == (1800, 1, 16, 16)
    assert splits.val.images.shape == (200, 1, 16, 16)
    assert splits.test.images.shape == (500, 1, 16, 16)
    assert splits.train.images.dtype == torch.float32 and splits.train.labels.dtype == torch.int64
    assert set(splits.train.labels.tolist()) == set(range(10))


def test_synthetic_rgb_is_three_channel_32px() -> None:
    splits = load_dataset("synthetic-rgb", val_size=100, subset=50)
    assert splits.train.images.shape == (50, 3, 32, 32)
    assert len(splits.val) == 100


def test_same_seed_same_splits_other_seed_other_val() -> None:
    a, b, c = (
        load_dataset("synthetic", seed=0),
        load_dataset("synthetic", seed=0),
        load_dataset("synthetic", seed=1),
    )
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)  # the test set never depends on the split seed


def test_val_is_disjoint_from_train_and_together_they_are_the_training_files() -> None:
    splits = load_dataset("synthetic", val_size=300)
    train = {tuple(row.tolist()) for row in splits.train.images.flatten(1)}
    val = {tuple(row.tolist()) for row in splits.val.images.flatten(1)}
    assert not train & val
    assert len(splits.train) + len(splits.val) == 2000


def test_bad_val_size_and_unknown_name() -> None:
    with pytest.raises(ConfigError, match="val_size"):
        load_dataset("synthetic", val_size=5000)
    with pytest.raises(UnknownNameError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion-minst")


def test_iterate_batches_covers_every_image_once_and_is_seeded() -> None:
    split = load_dataset("synthetic").train
    batches = list(iterate_batches(split, 256, shuffle=True, seed=3))
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())
    assert [len(y) for _, y in batches][-1] == 1800 % 256
    again = torch.cat([y for _, y in iterate_batches(split, 256, shuffle=True, seed=3)])
    assert torch.equal(labels, again)
    dropped = list(iterate_batches(split, 256, shuffle=False, seed=None, drop_last=True))
    assert all(len(y) == 256 for _, y in dropped)


def test_augment_keeps_shape_and_changes_images() -> None:
    splits = load_dataset("synthetic")
    x, _ = next(iterate_batches(splits.train, 64, shuffle=False, seed=0))
    xa, _ = next(iterate_batches(splits.train, 64, shuffle=False, seed=0, augment=True, spec=splits.spec))
    assert xa.shape == x.shape and not torch.equal(xa, x)
    with pytest.raises(ConfigError, match="spec"):
        next(iterate_batches(splits.train, 64, shuffle=False, seed=0, augment=True))


def test_missing_fashion_mnist_root_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", tmp_path)
    assert "--data-root" in str(info.value) and str(tmp_path) in str(info.value)


def test_truncated_idx_file_is_reported(tmp_path: Path) -> None:
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + np.array([10, 28, 28], dtype=">i4").tobytes() + b"\x00" * 100)
    with pytest.raises(DatasetNotFoundError, match="not a valid gzipped IDX"):
        load_dataset("fashion-mnist", tmp_path)


def test_cifar10_without_root_says_what_to_do() -> None:
    with pytest.raises(DatasetNotFoundError, match="--data-root"):
        load_dataset("cifar10")


@pytest.mark.skipif(
    not (Path(DEFAULT_FASHION_MNIST_ROOT) / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_loads() -> None:
    splits = load_dataset("fashion-mnist", val_size=5000, subset=1000)
    assert splits.train.images.shape == (1000, 1, 28, 28)
    assert len(splits.val) == 5000 and len(splits.test) == 10000
    assert splits.test.labels.bincount().tolist() == [1000] * 10
    assert abs(float(splits.test.images.mean())) < 0.1 and abs(float(splits.test.images.std()) - 1) < 0.1
