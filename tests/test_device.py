"""One device setting: the decision and its reason, CUDA settings refused without a GPU, precision, determinism,
random state in checkpoints, and the caller's model left as it was.

GPU paths that cannot run on a CPU machine are tested with mocks where that is honest (the decision when a
kernel fails, the precision a GPU's capability gives, the CUDA random state a checkpoint carries) and otherwise
marked ``cuda`` (skipped without a working GPU).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import automl_prune
from automl_prune.config import SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.train import device as dev
from automl_prune.train.training import Trainer

NO_CUDA = dev.resolve_device("auto").device.type != "cuda"


@pytest.fixture
def fresh_probe():
    """The kernel probe's cache emptied before and after (a test that mocks CUDA must not leave its answer)."""
    dev._kernel_runs.cache_clear()
    yield
    dev._kernel_runs.cache_clear()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a working GPU")
def test_auto_is_the_cpu_here_with_a_reason() -> None:
    decision = dev.resolve_device("auto")
    assert decision.device == torch.device("cpu")
    assert decision.reason.startswith("auto: no usable GPU")
    assert "cpu" in str(decision) and decision.reason in str(decision)
    assert dev.current_device() == torch.device("cpu")


def test_cpu_is_the_cpu_and_the_run_device_is_what_the_run_decided() -> None:
    decision = dev.resolve_device("cpu")
    assert decision.device == torch.device("cpu") and decision.setting == "cpu"
    with dev.use_device(decision, precision="fp32", gpus_per_worker=0.0):
        assert dev.current_device() == torch.device("cpu")
        assert dev.current_precision() == "fp32" and dev.current_gpus_per_worker() == 0.0
    assert dev.current_precision() == "auto"


def test_device_settings_are_parsed_and_bad_ones_refused() -> None:
    for good, expected in (("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda:0"),
                           ("CUDA:12", "cuda:12"), (" cpu ", "cpu")):
        assert dev.check_device_setting(good) == expected
        assert SearchConfig(device=good).device == expected
    for bad in ("gpu", "cpu:0", "cuda:x", "cuda:", "auto:1", "mps", ""):
        with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
            dev.check_device_setting(bad)
        with pytest.raises(ConfigError, match="`device` must be one of auto, cpu, cuda or cuda:N"):
            SearchConfig(device=bad)


def test_a_gpu_whose_first_kernel_fails_is_not_chosen(monkeypatch, fresh_probe) -> None:
    """``torch.cuda.is_available()`` true, the first kernel failing (a GPU older than the build's kernels)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)

    def no_kernel(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    real_arange = torch.arange
    monkeypatch.setattr(torch, "arange", lambda *a, **k: no_kernel() if "cuda" in str(k.get("device", ""))
                        else real_arange(*a, **k))
    decision = dev.resolve_device("auto")
    assert decision.device == torch.device("cpu")
    assert "a test kernel failed on GPU 0: CUDA error: no kernel image" in decision.reason
    with pytest.raises(ConfigError, match=r"--device cuda:0: no usable GPU \(a test kernel failed"):
        dev.resolve_device("cuda:0")
    with pytest.raises(ConfigError, match=r"--device cuda:3: no usable GPU \(GPU 3 does not exist"):
        dev.resolve_device("cuda:3")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a working GPU")
def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    from automl_prune.cli import main

    for setting in ("cuda", "cuda:1"):
        run = tmp_path / f"run-{setting.replace(':', '')}"
        code = main(["search", "--model", "tiny-cnn", "--dataset", "synthetic", "--pretrain-epochs", "0.2",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(run), "--no-progress", "--workers", "0",
                     "--agent", "random", "--episodes", "2", "--device", setting])
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert f"--device {setting}: no usable GPU" in lines[0]
        assert not run.exists()
    assert not (tmp_path / "cache").exists()  # nothing was trained or cached either
    with pytest.raises(ConfigError, match="no usable GPU"):  # the Python API refuses it the same way
        automl_prune.search(nn.Linear(2, 2), train=None, val=None, device="cuda", out=str(tmp_path / "api"))
    assert not (tmp_path / "api").exists()


def test_gpu_shares_and_default_workers_follow_the_gpus(monkeypatch) -> None:
    monkeypatch.setattr(dev, "gpu_count", lambda setting="auto": 0 if setting == "cpu" else 4)
    config = SearchConfig()
    assert config.gpu_count == 4 and config.resolved_gpus_per_worker == 1.0
    assert config.resolved_workers == 4  # one worker per GPU
    assert SearchConfig(gpus_per_worker=0.5).resolved_workers == 8
    assert SearchConfig(gpus_per_worker=0.3).resolved_workers == 13
    assert SearchConfig(workers=2).resolved_workers == 2
    import os

    cpus = os.cpu_count() or 1
    assert SearchConfig(device="cpu").resolved_gpus_per_worker == 0.0
    assert SearchConfig(device="cpu").resolved_workers == cpus
    assert SearchConfig(gpus_per_worker=0).resolved_workers == cpus  # CPU workers asked for
    monkeypatch.setattr(dev, "gpu_count", lambda setting="auto": 0)
    assert SearchConfig().resolved_gpus_per_worker == 0.0 and SearchConfig().resolved_workers == cpus
    with pytest.raises(ConfigError, match=r"share of one GPU in \[0, 1\]"):
        SearchConfig(gpus_per_worker=2.0)
    with pytest.raises(ConfigError, match="asks for GPUs, but `device` is cpu"):
        SearchConfig(device="cpu", gpus_per_worker=0.5)


def test_gpu_workers_must_fit_a_local_ray(monkeypatch) -> None:
    from automl_prune.run.pipeline import _check_gpu_workers

    monkeypatch.setattr(dev, "gpu_count", lambda setting="auto": 2)
    _check_gpu_workers(SearchConfig(workers=4, gpus_per_worker=0.5))
    with pytest.raises(ConfigError, match=r"3 workers x 1 GPU each need 3 GPUs, but the run has 2"):
        _check_gpu_workers(SearchConfig(workers=3))
    _check_gpu_workers(SearchConfig(workers=3, address="127.0.0.1:1"))  # a cluster's GPUs are its own
    monkeypatch.setattr(dev, "gpu_count", lambda setting="auto": 0)
    with pytest.raises(ConfigError, match="asks for GPUs, but this machine has none"):
        _check_gpu_workers(SearchConfig(workers=2, gpus_per_worker=1.0))


def test_precision_is_fp32_on_the_cpu_and_follows_the_gpu(monkeypatch) -> None:
    for setting in dev.PRECISIONS:
        resolved = dev.resolve_precision(setting, "cpu")
        assert resolved == dev.FP32 and resolved.dtype is None and resolved.scaler() is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert dev.resolve_precision("auto", "cuda").name == "bf16"
    assert dev.resolve_precision("auto", "cuda").dtype is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    half = dev.resolve_precision("auto", "cuda:1")
    assert half.name == "fp16" and half.dtype is torch.float16 and half.needs_scaler and half.device_type == "cuda"
    assert dev.resolve_precision("bf16", "cuda").name == "bf16"
    assert dev.resolve_precision("fp32", "cuda") == dev.FP32
    assert not dev.resolve_precision("bf16", "cuda").needs_scaler
    with dev.use_device(dev.resolve_device("cpu"), precision="fp16"):
        assert dev.resolve_precision(None, "cuda").name == "fp16"  # None: the run's setting
    with pytest.raises(ConfigError, match="`precision` must be one of"):
        dev.resolve_precision("half", "cuda")
    with pytest.raises(ConfigError, match="`precision` must be one of"):
        SearchConfig(precision="int8")


def _tiny_splits():
    from automl_prune.data.datasets import load_dataset

    return load_dataset("synthetic", seed=0)


def _dropout_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


def test_a_reduced_precision_asks_nothing_of_the_cpu() -> None:
    splits = _tiny_splits()
    weights = []
    for precision in ("fp32", "bf16", "fp16", "auto"):
        model = _dropout_net()
        trainer = Trainer(model, splits, epochs=1, max_steps=6, lr=0.05, batch_size=64, device="cpu",
                          precision=precision)
        assert trainer.precision == dev.FP32 and trainer.scaler is None
        trainer.run(progress=False)
        weights.append([p.detach().clone() for p in model.parameters()])
        assert "cuda_rng" not in trainer.state_dict() and "scaler" not in trainer.state_dict()
    assert all(torch.equal(a, b) for other in weights[1:] for a, b in zip(weights[0], other, strict=True))


def test_rng_states_carry_the_gpus_generator(monkeypatch) -> None:
    """The checkpoint helpers save and restore the CUDA generator of a GPU device (mocked here: the plumbing, not
    the generator), and leave it alone on the CPU."""
    saved = {"state": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": saved["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((str(device), state)))
    gpu = torch.device("cuda:1")
    states = dev.get_rng_states(gpu)
    assert set(states) == {"cpu", "cuda"} and torch.equal(states["cuda"], saved["state"])
    before = torch.rand(3)
    dev.set_rng_states(states, gpu)
    assert torch.equal(torch.rand(3), before)  # the CPU generator went back too
    assert calls and calls[0][0] == "cuda:1" and torch.equal(calls[0][1], saved["state"])
    assert set(dev.get_rng_states(torch.device("cpu"))) == {"cpu"}
    calls.clear()
    dev.set_rng_states(states, torch.device("cpu"))
    assert calls == []


@pytest.mark.cuda
def test_a_gpu_fine_tune_in_segments_equals_one_run() -> None:
    """Dropout on the GPU draws from the CUDA generator: a checkpoint must carry it for an exact continuation."""
    splits = _tiny_splits()
    one = _dropout_net()
    Trainer(one, splits, epochs=1, max_steps=8, lr=0.05, batch_size=64, device="cuda", precision="fp32",
            channels_last=False).run(progress=False)
    first = _dropout_net()
    trainer = Trainer(first, splits, epochs=1, max_steps=8, lr=0.05, batch_size=64, device="cuda",
                      precision="fp32", channels_last=False)
    trainer.run(until=3, progress=False)
    state = trainer.state_dict()
    assert "cuda_rng" in state
    torch.cuda.manual_seed_all(12345)  # whatever happens in between must not matter
    second = _dropout_net()
    resumed = Trainer(second, splits, epochs=1, max_steps=8, lr=0.05, batch_size=64, device="cuda",
                      precision="fp32", channels_last=False)
    resumed.load_state_dict(state)
    resumed.run(progress=False)
    for a, b in zip(one.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_mixed_precision_trains_on_the_gpu() -> None:
    splits = _tiny_splits()
    model = _dropout_net()
    stats = Trainer(model, splits, epochs=1, max_steps=5, lr=0.05, batch_size=64, device="cuda",
                    precision="auto").run(progress=False)
    assert stats["steps"] == 5 and stats["train_loss"] == stats["train_loss"]  # finite, read once at the end


def test_deterministic_run_sets_and_restores_the_callers_flags() -> None:
    import os

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    with dev.deterministic_run(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (before[3] or ":4096:8")
        with dev.cudnn_benchmark(torch.device("cuda")):  # no autotuning in a deterministic run
            assert not torch.backends.cudnn.benchmark
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    assert after == before
    with dev.cudnn_benchmark(torch.device("cpu")):
        assert torch.backends.cudnn.benchmark == before[2]


class _Frozen(nn.Module):
    """A user model in training mode with a frozen stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        for parameter in self.stem.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def _fingerprint(model: nn.Module) -> dict[str, object]:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "device": {p.device for p in model.parameters()}, "training": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()]}


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    sa, sb = a["state"], b["state"]
    assert isinstance(sa, dict) and isinstance(sb, dict)
    return (sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
            and all(a[k] == b[k] for k in ("device", "training", "requires_grad")))


def test_the_users_model_is_copied_never_moved_or_changed(tmp_path) -> None:
    from automl_prune.scoring.evaluator import Evaluator

    splits = _tiny_splits()
    model = _Frozen().train()
    before = _fingerprint(model)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    result = automl_prune.search(model, train=(splits.train.images, splits.train.labels),
                                 val=(splits.val.images, splits.val.labels), flops=0.6, agent="random",
                                 out=tmp_path / "run", episodes=2, workers=0, finetune_epochs=0.1, rerank_top_k=1,
                                 criterion="l1", progress=False, device="cpu", deterministic=True,
                                 cache_dir=tmp_path / "cache")
    assert _same(before, _fingerprint(model))
    assert flags == (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark)  # the run's determinism was the run's only
    compute = json.loads((tmp_path / "run" / "summary.json").read_text())["compute"]
    assert compute["device"] == "cpu" and compute["precision"] == "fp32" and compute["deterministic"] is True
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cpu"
    assert result.metrics["compressed"]["flops"] <= 0.6 * result.metrics["base"]["flops"]
    # The evaluator on its own: it scores a copy, in eval mode, and leaves the caller's model training.
    from search_spaces import SearchSpace

    space = SearchSpace.from_model(copy.deepcopy(model).eval(), splits.val.images[:1])
    evaluator = Evaluator(model, space, splits.train.images, splits.val.images, splits.val.labels, device="cpu",
                          bn_batches=2, bn_batch_size=32)
    assert evaluator.model is not model and not evaluator.model.training
    evaluator.evaluate(space.from_ratios(0.5))
    assert _same(before, _fingerprint(model))
