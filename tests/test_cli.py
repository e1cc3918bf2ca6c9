"""The CLI end to end on tiny settings, and bad input: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from automl_prune.cli import main
from automl_prune.data.datasets import load_dataset
from automl_prune.models.checkpoints import cache_path, data_fingerprint

TINY = ["--dataset", "synthetic", "--pretrain-epochs", "1", "--no-progress"]
SEARCH_IN_PROCESS = ["--workers", "0"]  # Ray has its own tests (tests/test_ray.py); these check the CLI


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_model_suggests_the_close_name(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "pretrain", "--model", "resnet2O", *TINY, "--cache-dir", str(tmp_path))
    assert code == 2
    assert "did you mean 'resnet20'" in _one_error_line(err)


def test_missing_dataset_says_how_to_install(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "pretrain", "--model", "tiny-cnn", "--dataset", "fashion-mnist",
                        "--data-root", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path))
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in _one_error_line(err)


def test_corrupt_and_mismatched_checkpoints(capsys, tmp_path) -> None:
    cache = tmp_path / "cache"
    code, out, _ = _run(capsys, "pretrain", "--model", "tiny-cnn", *TINY, "--cache-dir", str(cache))
    assert code == 0 and "val accuracy" in out
    data = data_fingerprint(load_dataset("synthetic", seed=0))  # the split the CLI made
    good = cache_path(cache, "tiny-cnn", "synthetic", seed=0, epochs=1, data=data)
    assert good.exists()
    other = cache_path(cache, "tiny-resnet", "synthetic", seed=0, epochs=1, data=data)
    shutil.copy(good, other)  # a tiny-cnn checkpoint where tiny-resnet's should be
    code, _, err = _run(capsys, "pretrain", "--model", "tiny-resnet", *TINY, "--cache-dir", str(cache))
    assert code == 2 and "tiny-cnn" in _one_error_line(err)
    good.write_bytes(good.read_bytes()[:100])  # truncated
    code, _, err = _run(capsys, "pretrain", "--model", "tiny-cnn", *TINY, "--cache-dir", str(cache))
    assert code == 2 and str(good) in _one_error_line(err)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    code = main(["search", "--model", "tiny-resnet", *TINY, *SEARCH_IN_PROCESS, "--cache-dir", str(root / "cache"),
                 "--agent", "random",
                 "--episodes", "3", "--flops", "0.5", "--finetune-epochs", "0.2", "--out", str(root / "run")])
    assert code == 0
    return root


def test_search_writes_everything_into_the_run_dir(searched: Path) -> None:
    run = searched / "run"
    summary = json.loads((run / "summary.json").read_text())
    arch = json.loads((run / "best" / "arch.json").read_text())
    assert arch["flops"] <= 0.5 * arch["base_flops"]
    assert summary["evaluations"] == 3
    assert len((run / "history.jsonl").read_text().splitlines()) == 3
    for name in ("weights.pt", "widths.png"):
        assert (run / "best" / name).stat().st_size > 0
    widened = summary.get("widened_from")
    if widened is not None:  # leftover budget spent by widening: a superset of the searcher's pick
        assert widened["flops"] < summary["compressed"]["flops"] <= int(0.5 * arch["base_flops"])
        assert all(arch["widths"][k] >= v for k, v in widened["architecture"].items())


def test_widening_spends_the_leftover_budget_and_never_exceeds_it() -> None:
    import numpy as np

    from automl_prune.run.search_stage import spend_leftover_budget
    from search_spaces import Budget
    from tests.helpers import trained

    _, _, space = trained()
    budget = space.flops_budget(0.5)
    rng = np.random.default_rng(0)
    for _ in range(10):
        arch = space.sample(rng)
        while space.flops(arch) > budget:
            arch = space.sample(rng)
        wide = spend_leftover_budget(arch, space, Budget(budget))
        assert space.flops(arch) <= space.flops(wide) <= budget
        assert all(wide.widths[k] >= v for k, v in arch.widths.items())
        # nothing more fits: every group one step wider would break the budget
        for d in space.decisions:
            choices = d.choices()
            i = choices.index(wide.widths[d.name])
            if i + 1 < len(choices):
                assert space.flops({**wide.widths, d.name: choices[i + 1]}) > budget


def test_search_resumes_and_refuses_other_settings(searched: Path, capsys) -> None:
    run = searched / "run"
    common = ["search", "--model", "tiny-resnet", *TINY, *SEARCH_IN_PROCESS, "--cache-dir", str(searched / "cache"),
              "--agent", "random",
              "--finetune-epochs", "0", "--out", str(run)]
    code, _, err = _run(capsys, *common, "--episodes", "5", "--flops", "0.5")
    assert code == 0 and "3 of 5 evaluations already done" in err
    assert len((run / "history.jsonl").read_text().splitlines()) == 5
    code, _, err = _run(capsys, *common, "--episodes", "5", "--flops", "0.25")
    assert code == 2 and "flops: 0.5 -> 0.25" in _one_error_line(err)


def test_export_rejects_foreign_and_out_of_range_architectures(searched: Path, capsys, tmp_path) -> None:
    common = ["export", "--model", "tiny-resnet", *TINY, "--cache-dir", str(searched / "cache")]
    arch = json.loads((searched / "run" / "best" / "arch.json").read_text())
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"model": "vgg-small", "widths": {"features.0": 8}}))
    code, _, err = _run(capsys, *common, "--arch", str(foreign), "--out", str(tmp_path / "x"))
    assert code == 2 and "'vgg-small'" in _one_error_line(err)
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(json.dumps({"widths": {"features.0": 8}}))
    code, _, err = _run(capsys, *common, "--arch", str(unnamed), "--out", str(tmp_path / "x"))
    assert code == 2 and "another model" in _one_error_line(err)
    name = next(iter(arch["widths"]))
    too_wide = tmp_path / "wide.json"
    too_wide.write_text(json.dumps({"widths": {name: arch["full_widths"][name] + 5}}))
    code, _, err = _run(capsys, *common, "--arch", str(too_wide), "--out", str(tmp_path / "x"))
    assert code == 2 and f"width of group {name!r} must be between" in _one_error_line(err)
    code, _out, _ = _run(capsys, *common, "--arch", str(searched / "run" / "best" / "arch.json"),
                        "--out", str(tmp_path / "ok"))
    assert code == 0 and (tmp_path / "ok" / "arch.json").exists()


def test_bad_config_key_is_named(capsys, tmp_path) -> None:
    config = tmp_path / "search.yaml"
    config.write_text("episdes: 3\n")
    code, _, err = _run(capsys, "search", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code == 2 and "did you mean 'episodes'" in _one_error_line(err)


def test_settings_that_fail_leave_no_run_directory(capsys, tmp_path) -> None:
    """A bad setting or a dataset that does not load is refused before the run directory is touched."""
    run = tmp_path / "run"
    code, _, err = _run(capsys, "search", "--model", "tiny-cnn", *TINY, *SEARCH_IN_PROCESS, "--cache-dir",
                        str(tmp_path / "cache"), "--criterion", "no-such", "--out", str(run))
    assert code == 2 and "no-such" in _one_error_line(err)
    code, _, err = _run(capsys, "search", "--model", "tiny-cnn", "--dataset", "cifar10", "--data-root",
                        str(tmp_path / "missing"), "--no-progress", "--out", str(run))
    assert code == 2 and _one_error_line(err)
    code, _, err = _run(capsys, "search", "--model", "tiny-cnn", *TINY, *SEARCH_IN_PROCESS, "--cache-dir",
                        str(tmp_path / "cache"), "--agent-option", "no_such_option=1", "--out", str(run))
    assert code == 2 and "no_such_option" in _one_error_line(err)
    for bad, named in ((["--threads", "0"], "`threads`"), (["--agent", "optuna", "--storage", "bad://x"], "bad://x"),
                       (["--storage", "sqlite:///s.db"], "drop --storage")):
        code, _, err = _run(capsys, "search", "--model", "tiny-cnn", *TINY, *SEARCH_IN_PROCESS, "--cache-dir",
                            str(tmp_path / "cache"), *bad, "--out", str(run))
        assert code == 2 and named in _one_error_line(err)
    assert not run.exists(), "a refused command must not create or touch the run directory"
    (tmp_path / "a-file").write_text("not a directory")
    code, _, err = _run(capsys, "search", "--model", "tiny-cnn", *TINY, "--out", str(tmp_path / "a-file"))
    assert code == 2 and "existing file" in _one_error_line(err)
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_resume_with_other_agent_options_is_refused(searched: Path, capsys) -> None:
    run = searched / "run"
    common = ["search", "--model", "tiny-resnet", *TINY, *SEARCH_IN_PROCESS, "--cache-dir", str(searched / "cache"),
              "--agent", "random", "--flops", "0.5", "--finetune-epochs", "0", "--out", str(run)]
    code, _, err = _run(capsys, *common, "--episodes", "5", "--agent-option", "spread=3.0")
    assert code == 2 and "agent_options" in _one_error_line(err) and "spread" in _one_error_line(err)


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("flops: 0.5\nagent: [ddpg\nepisodes: 3\n")
    code, _, err = _run(capsys, "search", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert code == 2
    assert f"{bad}:3:9: not valid YAML" in _one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_distilled_fine_tune_runs_and_a_changed_recipe_re_ranks_afresh(capsys, tmp_path) -> None:
    args = ["search", "--model", "tiny-cnn", *TINY, *SEARCH_IN_PROCESS, "--cache-dir", str(tmp_path / "cache"),
            "--agent", "random", "--episodes", "2", "--flops", "0.5", "--finetune-epochs", "0.1",
            "--rerank-top-k", "0", "--out", str(tmp_path / "run"), "--distill"]
    assert main(args) == 0
    recipe = json.loads((tmp_path / "run" / "rerank_recipe.json").read_text())["recipe"]
    assert recipe["distill"] is True and recipe["distill_weight"] == 0.5
    capsys.readouterr()
    assert main([*args, "--distill-weight", "0.9"]) == 0
    assert "re-ranking afresh" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "rerank_recipe.json").read_text())["recipe"]["distill_weight"] == 0.9
