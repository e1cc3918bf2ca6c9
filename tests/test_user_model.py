"""Bring your own model: `--weights`, `--model package.module:factory`, and the Python API `automl_prune.search`."""

from __future__ import annotations

import json
import os
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import automl_prune
from automl_prune.cli import main
from automl_prune.data.datasets import load_dataset
from automl_prune.models import build_model
from automl_prune.train.training import evaluate_accuracy, train

# `l1`: the criterion is not what these tests check, and `reap` (the default) on resnet18 cost ~3 min per search.
FAST = ["--no-progress", "--workers", "0", "--agent", "random", "--episodes", "2", "--flops", "0.5",
        "--finetune-epochs", "0.1", "--rerank-top-k", "1", "--criterion", "l1"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> tuple[Path, float]:
    """torchvision's resnet18 trained a few steps on the synthetic set; its state dict and val accuracy."""
    splits = load_dataset("synthetic", seed=0)
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 1, 10, 16)
    train(model, splits, epochs=1, lr=0.05, max_steps=6, progress=False)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    model = model.to(memory_format=torch.contiguous_format).eval()
    torch.save(model.state_dict(), path)
    val_acc, _ = evaluate_accuracy(model, splits.val, batch_size=250)
    return path, val_acc


def test_weights_are_the_base_model_and_nothing_is_pretrained(resnet18_weights, tmp_path, capsys) -> None:
    path, val_acc = resnet18_weights
    cache, run = tmp_path / "cache", tmp_path / "run"
    code = main(["search", "--model", "torchvision:resnet18", "--weights", str(path), "--dataset", "synthetic",
                 "--cache-dir", str(cache), "--out", str(run), *FAST])
    _, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["base"]["val_acc"] == pytest.approx(val_acc)
    assert not list(cache.glob("*.pt"))  # no pretrained checkpoint was made
    assert "no pretraining" in err
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert arch["flops"] <= 0.5 * arch["base_flops"]
    from automl_prune.models.checkpoints import checkpoint_hash

    assert arch["base_checkpoint_sha256"] == checkpoint_hash(path)
    assert automl_prune.load(run / "best" / "arch.json") is not None


def test_safetensors_weights_load_the_same(resnet18_weights, tmp_path) -> None:
    from safetensors.torch import save_file

    from automl_prune.models.weights import load_state_dict_file

    path, _ = resnet18_weights
    state = torch.load(path, weights_only=True)
    other = tmp_path / "resnet18.safetensors"
    save_file(state, str(other))
    loaded = load_state_dict_file(other)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_bad_weights_are_one_line_naming_the_key_and_write_nothing(resnet18_weights, tmp_path, capsys) -> None:
    path, _ = resnet18_weights
    state = torch.load(path, weights_only=True)
    state["fc.weight"] = torch.zeros(5, 512)
    wrong = tmp_path / "wrong.pt"
    torch.save(state, wrong)
    run = tmp_path / "run"
    base = ["search", "--model", "torchvision:resnet18", "--dataset", "synthetic", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(run), *FAST]
    assert main([*base, "--weights", str(wrong)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'fc.weight'" in line and "[5, 512]" in line and "[10, 512]" in line
    del state["fc.weight"]
    torch.save(state, wrong)
    assert main([*base, "--weights", str(wrong)]) == 2
    assert "missing key 'fc.weight'" in _one_error_line(capsys.readouterr().err)
    assert main([*base, "--weights", str(tmp_path / "nothing.pt")]) == 2
    assert "no such file" in _one_error_line(capsys.readouterr().err)
    assert main([*base, "--weights", str(tmp_path / "weights.npz")]) == 2
    assert ".safetensors" in _one_error_line(capsys.readouterr().err)
    assert not run.exists()


def test_model_by_import_path_searches_and_reloads(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def small_net(in_channels, num_classes):
            return nn.Sequential(
                nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))
    """))
    monkeypatch.chdir(tmp_path)
    code = main(["search", "--model", "my_models:small_net", "--dataset", "synthetic", "--pretrain-epochs", "0.2",
                 "--cache-dir", "cache", "--out", "run", *FAST])
    _, err = capsys.readouterr()
    assert code == 0, err
    arch = json.loads((tmp_path / "run" / "best" / "arch.json").read_text())
    assert arch["model"] == "my_models:small_net"
    model = automl_prune.load(tmp_path / "run" / "best" / "arch.json")
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert main(["pretrain", "--model", "my_models:nothing_here", "--dataset", "synthetic",
                 "--cache-dir", "cache"]) == 2
    assert "has no attribute 'nothing_here'" in _one_error_line(capsys.readouterr().err)
    assert main(["pretrain", "--model", "no_such_module:net", "--dataset", "synthetic", "--cache-dir", "cache"]) == 2
    assert "cannot import module 'no_such_module'" in _one_error_line(capsys.readouterr().err)


class UserNet(nn.Module):
    """A model the zoo does not know: a residual block and a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def user_search(tmp_path_factory):
    splits = load_dataset("synthetic", seed=3)
    torch.manual_seed(0)
    model = UserNet()
    train(model, splits, epochs=1, lr=0.05, max_steps=20, progress=False)
    model = model.to(memory_format=torch.contiguous_format).eval()
    loaders = {name: DataLoader(TensorDataset(s.images, s.labels), batch_size=64)
               for name, s in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    out = tmp_path_factory.mktemp("api") / "run"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    threads = torch.get_num_threads()
    result = automl_prune.search(model, train=loaders["train"], val=loaders["val"], test=loaders["test"], flops=0.4,
                                 agent="random", out=out, episodes=3, workers=0, finetune_epochs=0.1,
                                 rerank_top_k=1, progress=False, cache_dir=Path(out).parent / "cache")
    after_call = (float(torch.rand(1)), float(np.random.rand()), random.random(), torch.get_num_threads())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    without_call = (float(torch.rand(1)), float(np.random.rand()), random.random(), threads)
    assert after_call == without_call  # the user's random streams and thread count are as they were
    return model, before, loaders, result


def test_api_search_on_a_user_module_meets_the_budget_and_rebuilds(user_search) -> None:
    model, before, loaders, result = user_search
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched
    summary = result.metrics
    assert summary["compressed"]["flops"] <= int(0.4 * summary["base"]["flops"])
    from automl_prune.cost.flops import CostModel
    from automl_prune.graph.analysis import analyze

    x = next(iter(loaders["val"]))[0][:4]
    measured = CostModel(analyze(result.model, x)).full.flops
    assert measured == summary["compressed"]["flops"]
    again = automl_prune.load(result.run_dir / "best" / "arch.json", model=UserNet())
    assert torch.equal(again(x), result.model(x))
    with pytest.raises(automl_prune.errors.InvalidArchitectureError, match="model=MyNet"):
        automl_prune.load(result.run_dir / "best" / "arch.json")
    assert summary["compressed"]["test_acc"] is not None


def test_api_refuses_to_resume_on_another_model_and_bad_settings(user_search) -> None:
    model, _, loaders, result = user_search
    other = UserNet()
    with pytest.raises(automl_prune.errors.ConfigError, match="another base model"):
        automl_prune.search(other, train=loaders["train"], val=loaders["val"], flops=0.4, agent="random",
                            out=result.run_dir, episodes=3, workers=0, finetune_epochs=0.1, rerank_top_k=1,
                            progress=False)
    with pytest.raises(automl_prune.errors.ConfigError, match="did you mean 'episodes'"):
        automl_prune.search(model, train=loaders["train"], val=loaders["val"], episode=3)
    with pytest.raises(automl_prune.errors.ConfigError, match=r"needs one target per input \(4\)"):
        automl_prune.search(model, train=(torch.zeros(4, 1, 16, 16), torch.zeros(3, dtype=torch.long)),
                            val=loaders["val"])


def test_exclude_keeps_matching_layers_full_and_bad_patterns_are_refused(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    common = ["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.2",
              "--cache-dir", str(tmp_path / "cache"), *FAST]
    assert main([*common, "--out", str(tmp_path / "bad"), "--exclude", "no.such.layer"]) == 2
    assert "matches no prunable layer" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()
    full = main(["info", "--model", "tiny-resnet", "--dataset", "synthetic"])
    groups = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()[2:] if line.startswith("|")]
    assert full == 0 and len(groups) >= 2
    target = groups[0]
    assert main([*common, "--out", str(run), "--exclude", target]) == 0
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert target not in summary["architecture"]
    assert arch["widths"][target] == arch["full_widths"][target]
    assert arch["flops"] <= 0.5 * arch["base_flops"]
    assert summary["evaluations"] == 2


def test_time_limit_ends_the_search_and_the_run_still_finishes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.2",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(run), "--no-progress", "--workers", "0",
                 "--agent", "random", "--episodes", "500", "--flops", "0.5", "--finetune-epochs", "0.1",
                 "--time-limit", "1s"])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by_time_limit"] is True
    assert 1 <= summary["evaluations"] < 500
    assert "time limit (1s) ended the search" in err
    assert (run / "best" / "arch.json").exists()
    assert main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--time-limit", "soon",
                 "--out", str(tmp_path / "other")]) == 2
    assert "90s, 30m, 2h" in _one_error_line(capsys.readouterr().err)


def test_compress_is_the_public_function_whatever_was_imported(user_search) -> None:
    import automl_prune.prune.pruning  # a submodule import must not shadow the function

    model, _, loaders, result = user_search
    x = next(iter(loaders["val"]))[0][:2]
    small = automl_prune.compress(model, result.architecture, x)
    assert callable(automl_prune.compress)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("bad", [0, -3, 10_000, 4.9, "abc", True])
def test_compress_refuses_a_width_that_is_not_a_channel_count_of_the_group(user_search, bad) -> None:
    model, _, loaders, result = user_search
    x = next(iter(loaders["val"]))[0][:2]
    group = next(iter(result.architecture.widths))
    with pytest.raises(automl_prune.errors.ConfigError, match=f"width of group {group!r} must be a whole number"):
        automl_prune.compress(model, {group: bad}, x)


def test_compress_with_bits_quantizes_with_the_calibration_or_refuses(user_search) -> None:
    from automl_prune.quantize.fake import QuantMixin

    model, _, loaders, result = user_search
    x = next(iter(loaders["val"]))[0]
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    with_bits = result.architecture.with_bits({name: (4, 8)})
    with pytest.raises(automl_prune.errors.ConfigError, match="pass calibration="):
        automl_prune.compress(model, with_bits, x[:2])
    small = automl_prune.compress(model, with_bits, x[:2], criterion=result.criterion, calibration=[x])
    assert isinstance(small.get_submodule(name), QuantMixin)
    assert result.criterion == "reap"  # the search's default criterion, recorded for compress


def test_excluded_layers_stay_float_when_bits_are_searched(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.2",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(run), "--no-progress", "--workers", "0",
                 "--agent", "random", "--episodes", "3", "--flops", "0.6", "--size", "0.2", "--search", "both",
                 "--finetune-epochs", "0.1", "--exclude", "stem"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bits"] and not any(name.startswith("stem") for name in summary["bits"])  # float
    assert not any(name.startswith("stem") for name in summary["architecture"])  # not searched: full width
    assert summary["compressed"]["size_bits"] <= 0.2 * summary["base"]["size_bits"]
    for line in (run / "history.jsonl").read_text().splitlines():
        assert not any(name.startswith("stem") for name in json.loads(line)["architecture"].get("bits", {}))


def test_a_bits_search_may_exclude_a_layer_that_is_quantizable_but_not_prunable(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    common = ["search", "--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "0.2",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "0", "--agent", "random",
              "--episodes", "2", "--finetune-epochs", "0.05", "--rerank-top-k", "0", "--exclude", "fc"]
    assert main([*common, "--size", "0.3", "--out", str(run)]) == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bits"] and "fc" not in summary["bits"]  # the classifier stays float
    assert main([*common, "--flops", "0.5", "--out", str(tmp_path / "widths")]) == 2  # widths: fc prunes nothing
    assert "matches no prunable layer" in capsys.readouterr().err


def test_an_api_run_resumes_with_a_shuffling_loader(tmp_path) -> None:
    splits = load_dataset("synthetic", seed=3)
    torch.manual_seed(0)
    model = UserNet().eval()
    train_loader = DataLoader(TensorDataset(splits.train.images, splits.train.labels), batch_size=64, shuffle=True)
    val = (splits.val.images, splits.val.labels)
    options = {"flops": 0.5, "agent": "random", "out": tmp_path / "run", "workers": 0, "finetune_epochs": 0.05,
               "rerank_top_k": 0, "progress": False, "cache_dir": tmp_path / "cache"}
    automl_prune.search(model, train=train_loader, val=val, episodes=2, **options)
    automl_prune.search(model, train=train_loader, val=val, episodes=3, **options)  # same data, another order
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 3


def test_an_edited_model_file_is_not_served_stale_weights_from_the_cache(tmp_path) -> None:
    import subprocess
    import sys

    source = textwrap.dedent("""
        from torch import nn

        def net(in_channels, num_classes):
            return nn.Sequential(nn.Conv2d(in_channels, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, num_classes))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def pretrain(width: int) -> subprocess.CompletedProcess[str]:
        (tmp_path / "edited_models.py").write_text(source.replace("WIDTH", str(width)))
        return subprocess.run([sys.executable, "-m", "automl_prune.cli", "pretrain", "--model", "edited_models:net",
                               "--dataset", "synthetic", "--pretrain-epochs", "0.1", "--cache-dir", "cache",
                               "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    first = pretrain(8)
    assert first.returncode == 0, first.stderr[-2000:]
    again = pretrain(8)
    assert again.returncode == 0 and "(cached)" in again.stdout
    edited = pretrain(12)  # same factory name, other code: trained again, not a stale or mismatched checkpoint
    assert edited.returncode == 0, edited.stderr[-2000:]
    assert "(cached)" not in edited.stdout
    assert len(list((tmp_path / "cache").glob("edited_models-net__*.pt"))) == 2
