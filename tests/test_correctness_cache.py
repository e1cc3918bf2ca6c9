"""The pretrained-model cache is keyed by the data too: another split or another folder is another model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from automl_prune.data.datasets import Split, load_dataset
from automl_prune.models.checkpoints import data_fingerprint, pretrain_or_load


def test_another_validation_split_is_not_served_the_cached_model(tmp_path: Path) -> None:
    kwargs = {"epochs": 0.2, "seed": 0, "cache_dir": tmp_path, "progress": False}
    _, first = pretrain_or_load("tiny-cnn", "synthetic", val_size=100, **kwargs)
    _, same = pretrain_or_load("tiny-cnn", "synthetic", val_size=100, **kwargs)
    _, other = pretrain_or_load("tiny-cnn", "synthetic", val_size=50, **kwargs)
    assert not first["cached"] and same["cached"] and same["path"] == first["path"]
    assert not other["cached"], "a base trained with 100 held-out images was reused for a 50-image split"
    assert other["path"] != first["path"] and other["val_size"] == 50
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_fingerprint_follows_every_image_label_and_split() -> None:
    splits = load_dataset("synthetic", val_size=100, seed=0)
    base = data_fingerprint(splits)
    assert data_fingerprint(load_dataset("synthetic", val_size=100, seed=0)) == base
    assert data_fingerprint(load_dataset("synthetic", val_size=100, seed=1)) != base  # another partition
    assert data_fingerprint(load_dataset("synthetic", val_size=99, seed=0)) != base
    images = splits.train.images.clone()
    images[0, 0, 0, 0] += 1.0  # one pixel of another folder's images
    changed = dataclasses.replace(splits, train=Split(images, splits.train.labels))
    assert data_fingerprint(changed) != base
