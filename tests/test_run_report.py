"""The run report: written by every search and by `automl-prune report`, Markdown plus a self-contained HTML."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from automl_prune.cli import main
from automl_prune.report.plots import pareto_front
from automl_prune.report.run_report import write_report

TINY = ["--model", "tiny-resnet", "--dataset", "synthetic", "--pretrain-epochs", "1", "--no-progress",
        "--workers", "0", "--episodes", "4", "--flops", "0.5", "--finetune-epochs", "0.2",
        "--criterion", "l1"]  # the report is under test, not the criterion (l1 needs no calibration)
RUNS = {"random": ["--agent", "random"], "optuna-mo": ["--agent", "optuna-mo"],
        "bits": ["--agent", "random", "--size", "0.125"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    out = {}
    for name, extra in RUNS.items():
        out[name] = root / name
        code = main(["search", *TINY, *extra, "--out", str(out[name]), "--cache-dir", str(root / "cache")])
        assert code == 0
    return out


def _links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def _check_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert 400 <= width <= 3000 and 300 <= height <= 2000, (path, width, height)
    return width, height


@pytest.mark.parametrize("name", list(RUNS))
def test_search_writes_a_report_with_the_table_and_every_picture(runs: dict[str, Path], name: str) -> None:
    run = runs[name]
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    assert "| FLOPs" in md and "| val accuracy (after fine-tune)" in md and "| chosen by re-ranking" in md
    assert "<table>" in page and "chosen by re-ranking" in page
    links = _links(md)
    expected = {"figures/tradeoff.png", "figures/search_curve.png", "best/widths.png", "ladder.png"}
    assert expected <= set(links)
    for link in links:
        _check_png(run / link)
    # one self-contained file: every picture inlined, nothing fetched from elsewhere
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(links)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "| re-rank time (incl. fine-tune)" in md and "| candidate | origin" in md


def test_bits_run_reports_size_and_bits_per_layer(runs: dict[str, Path]) -> None:
    run = runs["bits"]
    md = (run / "report.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "figures/bits.png" in _links(md)
    assert "| size (bytes)" in md and "size \u2264 0.125 of the float32 model" in md
    for layer, (weight, activation) in summary["bits"].items():
        assert re.search(rf"\| {re.escape(layer)}\s+\| {weight}\s+\| {activation}\s+\|", md)
    # a second panel (accuracy against size) makes the trade-off picture wider than a widths-only run's
    assert _check_png(run / "figures" / "tradeoff.png")[0] > _check_png(runs["random"] / "figures" / "tradeoff.png")[0]
    assert "figures/bits.png" not in (runs["random"] / "report.md").read_text()


def test_optuna_mo_run_reports_its_pareto_front(runs: dict[str, Path]) -> None:
    run = runs["optuna-mo"]
    front = json.loads((run / "summary.json").read_text())["pareto_front"]
    md = (run / "report.md").read_text()
    assert "## Pareto front of optuna-mo" in md
    section = md.split("## Pareto front of optuna-mo", 1)[1]
    assert len([line for line in section.splitlines() if line.startswith("| ")]) == len(front) + 1
    assert "Pareto front" not in (runs["random"] / "report.md").read_text().split("## Re-ranking ladder")[1]


def test_report_command_rewrites_the_report_and_keeps_the_environment(runs: dict[str, Path], capsys) -> None:
    run = runs["random"]
    (run / "report.md").unlink()
    (run / "report.html").unlink()
    before = os.environ.get("MPLCONFIGDIR")
    assert main(["report", str(run)]) == 0
    assert os.environ.get("MPLCONFIGDIR") == before
    assert "report.md" in capsys.readouterr().out
    assert (run / "report.md").is_file() and (run / "report.html").is_file()


def test_report_of_a_missing_or_unfinished_run_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    for path in (tmp_path / "nowhere", tmp_path):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err and str(path) in lines[0], err


def test_pareto_front_keeps_the_best_accuracy_for_at_most_each_cost() -> None:
    points = [(0.5, 0.2), (0.3, 0.1), (0.4, 0.25), (0.3, 0.15), (0.6, 0.22), (0.7, 0.3)]
    assert pareto_front(points) == [(0.3, 0.15), (0.4, 0.25), (0.7, 0.3)]
    assert pareto_front([]) == []


def test_report_of_a_hand_written_run_marks_an_unevaluated_choice(tmp_path: Path) -> None:
    """The chosen architecture need not be in the history (uniform, no proxy score); bad lines are left out."""
    summary = {
        "model": "m", "dataset": "d", "agent": "random", "flops_budget": 0.5, "evaluations": 3,
        "base": {"flops": 1000, "params": 100, "val_acc": 0.5, "test_acc": 0.5, "size_bits": 3200, "bops": 10},
        "compressed": {"flops": 450, "params": 40, "val_acc_before_finetune": None, "val_acc_after_finetune": 0.4,
                       "test_acc": 0.4},
        "search_seconds": 1.0, "finetune_seconds": 1.0, "architecture": {"a": 4},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    lines = [json.dumps({"architecture": {"widths": {"a": w}}, "metrics": {"accuracy": acc, "flops": f,
                                                                           "flops_ratio": f / 1000}})
             for w, acc, f in [(2, 0.2, 300), (6, 0.4, 700), (3, 0.3, 400)]]
    (tmp_path / "history.jsonl").write_text("\n".join([*lines, '{"trunc']) + "\n")
    md, page = write_report(tmp_path)
    text = md.read_text()
    assert "1 unreadable or unscored line(s)" in text and "not one the search evaluated" in text
    assert set(_links(text)) == {"figures/tradeoff.png", "figures/search_curve.png"}
    for link in _links(text):
        _check_png(tmp_path / link)
    assert page.read_text().count("data:image/png;base64,") == 2
