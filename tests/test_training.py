from __future__ import annotations

from pathlib import Path

import pytest
import torch

import automl_prune.train.training as training
from automl_prune.data.datasets import load_dataset
from automl_prune.errors import CheckpointError, ConfigError
from automl_prune.models import build_model
from automl_prune.models.checkpoints import (
    cache_path,
    checkpoint_hash,
    data_fingerprint,
    load_checkpoint,
    load_into,
    pretrain_or_load,
    save_checkpoint,
)
from automl_prune.train.training import evaluate_accuracy, train


@pytest.fixture(scope="module")
def splits():  # type: ignore[no-untyped-def]
    return load_dataset("synthetic")


def test_tiny_cnn_learns_synthetic_data(splits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 1, 10, 16)
    before, _ = evaluate_accuracy(model, splits.val)
    stats = train(model, splits, epochs=3, lr=0.1, batch_size=64, seed=0, progress=False)
    after, loss = evaluate_accuracy(model, splits.val)
    assert after > 0.5 > before + 0.2  # chance is 0.1
    assert stats["steps"] == 3 * (1800 // 64) and loss < 2.0
    assert model.training  # evaluate_accuracy restores the mode


def test_training_is_deterministic_for_a_seed(splits) -> None:  # type: ignore[no-untyped-def]
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("tiny-resnet", 1, 10, 16)
        train(model, splits, epochs=1, lr=0.05, batch_size=64, seed=7, progress=False, max_steps=5)
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_max_steps_and_fractional_epochs(splits) -> None:  # type: ignore[no-untyped-def]
    model = build_model("tiny-cnn", 1, 10, 16)
    assert train(model, splits, epochs=0.5, batch_size=100, progress=False)["steps"] == 9
    assert train(model, splits.train, epochs=5, batch_size=100, progress=False, max_steps=3)["steps"] == 3
    with pytest.raises(ConfigError, match="epochs"):
        train(model, splits, epochs=0, progress=False)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("tiny-resnet", 1, 10)
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, {"model": "tiny-resnet", "val_acc": 0.5})
    state, meta = load_checkpoint(path)
    assert meta == {"model": "tiny-resnet", "val_acc": 0.5}
    other = load_into(build_model("tiny-resnet", 1, 10), state, meta, "tiny-resnet")
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key])
    assert len(checkpoint_hash(path)) == 64
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp file left behind


def test_corrupt_or_missing_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny-cnn", 1, 10), {"model": "tiny-cnn"})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_wrong_model_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", build_model("tiny-cnn", 1, 10), {"model": "tiny-cnn"})
    state, meta = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"for model 'tiny-cnn'.*'tiny-resnet'"):
        load_into(build_model("tiny-resnet", 1, 10), state, meta, "tiny-resnet")
    with pytest.raises(CheckpointError, match="missing"):
        load_into(build_model("tiny-resnet", 1, 10), state, meta)
    with pytest.raises(CheckpointError, match=r"'fc\.weight' has shape"):
        load_into(build_model("tiny-cnn", 1, 7), state, meta, "tiny-cnn")


def test_pretrain_or_load_reuses_the_cache(
    tmp_path: Path,
    splits,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    kwargs = {"epochs": 1, "seed": 0, "cache_dir": tmp_path, "progress": False, "splits": splits, "lr": 0.05}
    model, meta = pretrain_or_load("tiny-cnn", "synthetic", **kwargs)
    assert not meta["cached"] and 0 <= meta["val_acc"] <= 1 and 0 <= meta["test_acc"] <= 1
    assert meta["in_channels"] == 1 and meta["num_classes"] == 10 and meta["input_size"] == 16
    assert Path(meta["path"]) == cache_path(tmp_path, "tiny-cnn", "synthetic", seed=0, epochs=1, lr=0.05,
                                            data=data_fingerprint(splits))

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("train() called although the checkpoint is cached")

    monkeypatch.setattr(training, "train", no_training)
    again, meta2 = pretrain_or_load("tiny-cnn", "synthetic", **kwargs)
    assert meta2["cached"] and meta2["val_acc"] == meta["val_acc"] and meta2["sha256"] == meta["sha256"]
    x = splits.val.images[:8]
    assert torch.equal(model(x), again(x))


def test_cache_path_sanitizes_torchvision_names(tmp_path: Path) -> None:
    path = cache_path(tmp_path, "torchvision:resnet18", "fashion-mnist", seed=1, epochs=2)
    assert path.name == "torchvision-resnet18__fashion-mnist__s1__e2.pt"


def test_trainer_in_segments_equals_one_run(splits) -> None:  # type: ignore[no-untyped-def]
    """The ladder's contract: stopping at rungs, saving and continuing gives the weights of one run."""
    torch.manual_seed(0)
    reference = build_model("tiny-resnet", 1, 10, 16)
    segmented = build_model("tiny-resnet", 1, 10, 16)
    segmented.load_state_dict(reference.state_dict())
    options = {"epochs": 2.0, "lr": 0.05, "batch_size": 64, "seed": 3}
    train(reference, splits, progress=False, **options)

    first = training.Trainer(segmented, splits, **options)
    first.run(until=10, progress=False)  # mid-epoch
    state = first.state_dict()
    second = training.Trainer(segmented, splits, **options)
    second.load_state_dict(state)
    second.run(until=40, progress=False)  # across the epoch boundary (28 steps per epoch)
    stats = second.run(progress=False)
    assert stats["steps"] == 2 * (1800 // 64)
    for a, b in zip(reference.state_dict().values(), segmented.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_training_leaves_the_global_rng_alone(splits) -> None:  # type: ignore[no-untyped-def]
    model = build_model("tiny-cnn", 1, 10, 16)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(model, splits, epochs=1, lr=0.05, batch_size=64, seed=7, progress=False, max_steps=2)
    assert torch.equal(torch.rand(3), expected)


def test_distillation_weight_zero_is_plain_training_and_a_teacher_changes_the_result() -> None:
    from automl_prune.data.datasets import load_dataset
    from automl_prune.models import build_model
    from automl_prune.train.training import Trainer

    splits = load_dataset("synthetic", seed=0)

    def trained(**kwargs) -> dict:
        torch.manual_seed(0)
        model = build_model("tiny-cnn", 1, 10, 16)
        Trainer(model, splits, epochs=1, lr=0.05, max_steps=5, seed=1, **kwargs).run(progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(3)
    teacher = build_model("tiny-cnn", 1, 10, 16).eval()
    plain = trained()
    weight_zero = trained(teacher=teacher, distill_weight=0.0)
    distilled = trained(teacher=teacher, distill_weight=0.7, distill_temperature=2.0)
    assert all(torch.equal(plain[k], weight_zero[k]) for k in plain)
    assert any(not torch.equal(plain[k], distilled[k]) for k in plain)
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's teacher is left as it was
