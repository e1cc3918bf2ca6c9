"""Settings are checked before anything is written: bad numbers, paths of the wrong kind, resume flags.

Each case must end with exit code 2, one line on stderr naming the setting, no traceback, and no run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automl_prune.cli import main
from automl_prune.config import SearchConfig

TINY = ["--model", "tiny-cnn", "--dataset", "synthetic", "--episodes", "2"]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *names: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    # progress lines may come first (e.g. the device decision); the error is one line, the last
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0] and "Traceback" not in err, err
    assert any(name in errors[0] for name in names), err
    return errors[0]


@pytest.mark.parametrize(("flag", "value", "key"), [
    ("--finetune-epochs", "nan", "finetune_epochs"),
    ("--distill-temperature", "nan", "distill_temperature"),
    ("--distill-temperature", "inf", "distill_temperature"),
    ("--time-limit", "nan", "time_limit"),
    ("--time-limit", "inf", "time_limit"),
    ("--seed", "-1", "seed"),
    ("--pretrain-epochs", "0", "pretrain_epochs"),
    ("--flops", "nan", "flops"),
])
def test_a_bad_number_on_the_command_line_is_one_line_and_no_run_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, key: str) -> None:
    out = tmp_path / "run"
    _refused(capsys, ["search", *TINY, "--out", str(out), "--cache-dir", str(tmp_path / "cache"), flag, value], key)
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("yaml_line", "key"), [
    ("finetune_lr: -1", "finetune_lr"),
    ("finetune_lr: 0", "finetune_lr"),
    ("finetune_lr: .nan", "finetune_lr"),
    ("bn_batches: 0", "bn_batches"),
    ("seed: -1", "seed"),
    ("proxy_finetune_steps: -5", "proxy_finetune_steps"),
    ("val_size: 0", "val_size"),
])
def test_a_bad_number_in_the_yaml_file_is_one_line_and_no_run_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_line: str, key: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_line + "\n")
    out = tmp_path / "run"
    _refused(capsys, ["search", *TINY, "--config", str(config), "--out", str(out)], key)
    assert not out.exists()


def _paths(tmp_path: Path) -> tuple[Path, Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    a_folder = tmp_path / "a_folder"
    a_folder.mkdir()
    return a_file, a_folder


@pytest.mark.parametrize(("case", "setting"), [
    ("config_is_folder", "config"),
    ("config_under_file", "config"),
    ("weights_is_folder", "weights"),
    ("out_is_file", "out"),
    ("out_under_file", "out"),
    ("cache_is_file", "cache-dir"),
    ("data_root_is_file", "data-root"),
    ("export_arch_is_folder", "arch"),
    ("export_out_is_file", "out"),
    ("report_run_dir_is_file", "run-dir"),
    ("resume_run_dir_is_file", "run-dir"),
    ("resume_run_dir_missing", "run-dir"),
])
def test_a_path_of_the_wrong_kind_names_the_setting_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, setting: str) -> None:
    a_file, a_folder = _paths(tmp_path)
    out = tmp_path / "run"
    search = ["search", *TINY]
    argv = {
        "config_is_folder": [*search, "--config", str(a_folder), "--out", str(out)],
        "config_under_file": [*search, "--config", str(a_file / "c.yaml"), "--out", str(out)],
        "weights_is_folder": [*search, "--weights", str(a_folder), "--out", str(out)],
        "out_is_file": [*search, "--out", str(a_file)],
        "out_under_file": [*search, "--out", str(a_file / "run")],
        "cache_is_file": [*search, "--cache-dir", str(a_file), "--out", str(out)],
        "data_root_is_file": [*search, "--data-root", str(a_file), "--out", str(out)],
        "export_arch_is_folder": ["export", *TINY[:4], "--arch", str(a_folder), "--out", str(out)],
        "export_out_is_file": ["export", *TINY[:4], "--arch", str(a_file), "--out", str(a_file)],
        "report_run_dir_is_file": ["report", str(a_file)],
        "resume_run_dir_is_file": ["resume", str(a_file)],
        "resume_run_dir_missing": ["resume", str(tmp_path / "missing")],
    }[case]
    err = _refused(capsys, argv, setting)
    assert "must be" in err or "no such" in err or "nothing can be inside" in err
    assert not out.exists()


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = SearchConfig(model="tiny-cnn", dataset="synthetic", out=str(run), seed=3)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return run


@pytest.mark.parametrize(("flags", "key"), [
    (["--model", "tiny-resnet"], "--model"),
    (["--seed", "4"], "--seed"),
    (["--dataset", "fashion-mnist"], "--dataset"),
    (["--pretrain-epochs", "7"], "--pretrain-epochs"),
    (["--config", "missing.yaml"], "--config"),
])
def test_resume_refuses_a_flag_that_defines_the_run(
        saved_run: Path, capsys: pytest.CaptureFixture[str], flags: list[str], key: str) -> None:
    _refused(capsys, ["resume", str(saved_run), *flags], key)


def test_resume_takes_what_may_change(saved_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import automl_prune.run.pipeline as pipeline

    seen: list[SearchConfig] = []
    monkeypatch.setattr(pipeline, "run_search", lambda config: seen.append(config))
    data = tmp_path / "data"
    data.mkdir()
    code = main(["resume", str(saved_run), "--data-root", str(data), "--cache-dir", str(tmp_path / "c2"),
                 "--workers", "0", "--threads", "1", "--seed", "3", "--model", "tiny-cnn"])
    assert code == 0
    (config,) = seen
    assert (config.data_root, config.cache_dir, config.workers, config.threads) == (
        str(data), str(tmp_path / "c2"), 0, 1)
    assert (config.seed, config.model, config.out) == (3, "tiny-cnn", str(saved_run))


@pytest.mark.parametrize("width", ['"abc"', "2.7", "true"])
def test_an_architecture_width_that_is_not_a_channel_count_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], width: str) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text('{"widths": {"features.0": ' + width + "}}")
    _refused(capsys, ["export", *TINY[:4], "--arch", str(arch), "--out", str(tmp_path / "x")], "features.0")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("source", "expected"), [
    ("def small_net(:\n    pass\n", "syntax error in module"),
    ("import no_such_package_here\n", "cannot import module"),
    ("raise RuntimeError('boom at import')\n", "raised RuntimeError: boom at import"),
])
def test_a_user_model_file_that_fails_to_import_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], source: str,
        expected: str) -> None:
    import sys

    name = f"broken_{abs(hash(source)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    err = _refused(capsys, ["search", "--model", f"{name}:small_net", "--dataset", "synthetic",
                            "--out", str(tmp_path / "run")], expected)
    assert f"{name}:small_net" in err
    assert sys.path == path_before and not (tmp_path / "run").exists()


def test_an_unreachable_budget_blames_round_to_when_round_to_holds_the_minimum_up() -> None:
    import torch

    from automl_prune.errors import BudgetError
    from automl_prune.models import build_model
    from search_spaces import SearchSpace

    model = build_model("tiny-cnn", 1, 10, 16)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), round_to=8)
    with pytest.raises(BudgetError, match="lower round_to"):
        space.flops_budget(0.05)
    space = SearchSpace.from_model(model, torch.zeros(1, 1, 16, 16), min_keep_ratio=0.9)
    with pytest.raises(BudgetError, match="lower min_keep_ratio"):
        space.flops_budget(0.05)


def test_a_parameter_of_the_model_itself_is_named_as_such() -> None:
    import torch
    from torch import nn

    from automl_prune.errors import ConfigError
    from search_spaces import SearchSpace

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(1, 8, 3), nn.PReLU(8), nn.Linear(8, 10)
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc((self.act(self.conv(x)) * self.scale).mean((2, 3)))

    with pytest.raises(ConfigError, match=r"parameters held by the model itself \('scale'\)"):
        SearchSpace.from_model(Scaled(), torch.zeros(1, 1, 8, 8))


def _tiny_state(tmp_path: Path, poison: bool) -> Path:
    import torch

    from automl_prune.models import build_model

    model = build_model("tiny-cnn", 1, 10, 16)
    state = model.state_dict()
    if poison:
        name = next(k for k, v in state.items() if v.is_floating_point() and k.endswith("weight"))
        state[name][0] = float("nan")
    path = tmp_path / "w.pt"
    torch.save(state, path)
    return path


def test_weights_with_nan_are_one_line_naming_the_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["search", *TINY, "--weights", str(_tiny_state(tmp_path, True)), "--out",
                            str(tmp_path / "run")], "holds NaN or infinite values")
    assert "weight" in err and not (tmp_path / "run").exists()


def test_a_pickled_module_as_weights_is_one_line_without_terminal_colours(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from automl_prune.models import build_model

    path = tmp_path / "module.pt"
    torch.save(build_model("tiny-cnn", 1, 10, 16), path)  # the whole module, not a state dict
    err = _refused(capsys, ["search", *TINY, "--weights", str(path), "--out", str(tmp_path / "run")],
                   "cannot be read as a state dict")
    assert "\x1b" not in err


@pytest.mark.parametrize("problem", ["nan_image", "negative_label", "nan_weight"])
def test_the_python_api_refuses_non_finite_data_and_weights_and_negative_labels(tmp_path: Path, problem: str) -> None:
    import torch

    import automl_prune
    from automl_prune.errors import AutoMLPruneError
    from automl_prune.models import build_model

    model = build_model("tiny-cnn", 1, 10, 16)
    images, labels = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    if problem == "nan_image":
        images[3, 0, 0, 0] = float("nan")
    elif problem == "negative_label":
        labels[5] = -1
    else:
        with torch.no_grad():
            next(model.parameters())[0] = float("inf")
    with pytest.raises(AutoMLPruneError, match=r"NaN or infinite|label -1") as caught:
        automl_prune.search(model, train=(images, labels), val=(images, labels), out=tmp_path / "run", workers=0)
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()
