"""The report of a finished run: ``RUN_DIR/report.md`` and a self-contained ``RUN_DIR/report.html``.

Both are rendered from one list of blocks (headings, paragraphs, tables, pictures), so they say the same: the
summary table, accuracy against FLOPs (and size, when bits were searched) of every evaluated architecture, the
search curve, the kept channels and bits per layer, the re-ranking ladder, and an optuna-mo Pareto front. The
new pictures go to ``RUN_DIR/figures``; the HTML inlines every picture as a base64 data URI.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl_prune.atomic import atomic_write_text
from automl_prune.config import parse_size
from automl_prune.errors import ConfigError
from automl_prune.report.summary import format_table, summary_rows

__all__ = ["load_run", "write_report"]

_EPS = 1e-9


@dataclass
class Run:
    """What a report is made of: the run's summary, settings and evaluation history."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    skipped_lines: int = 0

    @property
    def size_budget(self) -> float | None:
        """The size budget as a fraction of the float32 model, if one was given."""
        if self.config.get("size") is None:
            return None
        kind, value = parse_size(self.config["size"])
        return value if kind == "fraction" else value / self.summary["base"]["size_bits"]

    @property
    def bops_budget(self) -> float | None:
        """The BOPs budget as a fraction of the 32/32-bit model, if one was given."""
        value = self.config.get("bops")
        return None if value is None else float(value)

    @property
    def score_name(self) -> str:
        """What candidates were scored by: ``accuracy`` (top-1), or the Python API's custom ``metric``."""
        return str(self.summary.get("metric") or "accuracy")

    def format_score(self, value: float) -> str:
        """Top-1 accuracy in percent, a custom metric as it is."""
        return f"{100 * value:.2f}%" if self.score_name == "accuracy" else f"{value:.4g}"

    @property
    def latency(self) -> dict[str, Any] | None:
        """The latency budget's record in the summary (``--latency`` runs only). In such a run the search's
        width cost, ``flops``/``flops_ratio`` in the history, is the predicted latency, not FLOPs."""
        return self.summary.get("latency")

    def within_budget(self, metrics: dict[str, Any]) -> bool:
        """Whether an evaluation met every budget of the run."""
        width_budget = self.latency["budget"] if self.latency else self.summary["flops_budget"]
        if metrics.get("flops_ratio", 0.0) > width_budget + _EPS:
            return False
        size, bops = self.size_budget, self.bops_budget
        if size is not None and metrics.get("size_ratio", 0.0) > size + _EPS:
            return False
        return bops is None or metrics.get("bops_ratio", 0.0) <= bops + _EPS


Block = tuple[Any, ...]  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", relpath, alt)


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; a missing one, or one without a summary, is a `ConfigError`."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"no run directory {path}; pass the --out folder of a search")
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        raise ConfigError(f"{path} holds no finished search (no summary.json); finish it with "
                          f"`automl-prune resume {path}`")
    summary = _read_json(summary_file)
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    history: list[dict[str, Any]] = []
    skipped = 0
    history_file = path / "history.jsonl"
    if history_file.is_file():
        for line in history_file.read_text().splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            metrics = entry.get("metrics") or {}
            if isinstance(metrics.get("accuracy"), (int, float)) and isinstance(metrics.get("flops"), (int, float)):
                history.append(entry)
            else:
                skipped += 1
    return Run(path, summary, config, history, skipped)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds no JSON object")
    return data


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Draw the pictures and write ``report.md`` and ``report.html`` into ``run_dir``; returns both paths.

    matplotlib's font cache goes to ``RUN_DIR/.cache/matplotlib`` (set for this call only), so nothing is
    written outside the run directory.
    """
    from automl_prune.train.runtime import scoped_environ

    run = load_run(run_dir)
    with scoped_environ({"MPLCONFIGDIR": str((run.path / ".cache" / "matplotlib").resolve())}):
        blocks = _blocks(run)
    md = atomic_write_text(run.path / "report.md", _markdown(blocks))
    page = atomic_write_text(run.path / "report.html", _html(blocks, run.path, _title(run)))
    return md, page


def _title(run: Run) -> str:
    s = run.summary
    return f"automl-prune report: {s['model']} on {s['dataset']} ({s['agent']})"


def _budgets(run: Run) -> str:
    parts = [f"FLOPs \u2264 {run.summary['flops_budget']:g} of the base model"]
    if run.latency:
        lat = run.latency
        verdict = "met" if lat.get("met") else ("met within the noise" if lat.get("met_within_noise") else "NOT met")
        parts = [f"latency \u2264 {lat['budget']:g} of the base model's at batch {lat['batch_size']} "
                 f"({lat['threads']} threads; the search budgets the latency table's prediction, the final model is "
                 f"measured: {lat['ratio']:.3f}x, noise \u00b1{lat['noise_ms']:.3f} ms, {verdict})"]
    if run.size_budget is not None:
        parts.append(f"size \u2264 {run.size_budget:.4g} of the float32 model ({run.config['size']})")
    if run.bops_budget is not None:
        parts.append(f"BOPs \u2264 {run.bops_budget:g} of the 32/32-bit model")
    return "; ".join(parts)


def _blocks(run: Run) -> list[Block]:
    s = run.summary
    planned = s.get("evaluations_planned")
    evaluated = f"{s['evaluations']}" + (f" of {planned} planned" if planned else "")
    stopped = " (stopped by the time limit)" if s.get("stopped_by_time_limit") else ""
    blocks: list[Block] = [
        ("h", 1, _title(run)),
        ("p", f"Budgets: {_budgets(run)}. Evaluations: {evaluated}{stopped}."),
        ("h", 2, "Summary"),
        ("table", ["", "base", "compressed"], _summary_table(s)),
    ]
    blocks += _tradeoff_blocks(run)
    blocks += _search_blocks(run)
    blocks += _layer_blocks(run)
    blocks += _ladder_blocks(run)
    blocks += _pareto_blocks(run)
    return blocks


def _summary_table(summary: dict[str, Any]) -> list[list[Any]]:
    rows = summary_rows(summary)
    chosen = summary.get("chosen")
    if chosen:
        rows.append(["chosen by re-ranking", "-", f"{chosen['id']} ({chosen['origin']})"])
    if summary.get("rerank_seconds") is not None:
        rows.append(["re-rank time (incl. fine-tune)", "-", f"{summary['rerank_seconds']:.1f} s"])
    return rows


def _same_architecture(entry: dict[str, Any], widths: dict[str, int], bits: dict[str, Any] | None) -> bool:
    arch = entry.get("architecture") or {}
    if any(widths.get(k) != v for k, v in (arch.get("widths") or {}).items()):
        return False
    if bits is None:
        return True
    return {k: list(v) for k, v in (arch.get("bits") or {}).items()} == {k: list(v) for k, v in bits.items()}


def _chosen_accuracy(run: Run) -> float | None:
    acc = run.summary["compressed"].get("val_acc_before_finetune")
    if acc is not None:
        return float(acc)
    bits = run.summary.get("bits")
    for entry in run.history:
        if _same_architecture(entry, run.summary.get("architecture", {}), bits):
            return float(entry["metrics"]["accuracy"])
    return None


def _search_best(run: Run) -> dict[str, Any] | None:
    best = run.summary.get("search_best")
    if not best:
        return None
    fits = [e for e in run.history if e["metrics"]["accuracy"] == best.get("proxy_accuracy")
            and _same_architecture(e, best.get("architecture", {}), None) and run.within_budget(e["metrics"])]
    return min(fits, key=lambda e: e["metrics"]["flops"], default=None)


def _tradeoff_blocks(run: Run) -> list[Block]:
    from automl_prune.report.plots import TradeoffPanel, plot_tradeoffs

    s, base, comp = run.summary, run.summary["base"], run.summary["compressed"]
    blocks: list[Block] = [("h", 2, "Accuracy against cost")]
    if not run.history:
        return [*blocks, ("p", "No evaluations were recorded (no history.jsonl): nothing to plot.")]
    metrics = [e["metrics"] for e in run.history]
    within = [run.within_budget(m) for m in metrics]
    accs = [float(m["accuracy"]) for m in metrics]
    chosen_acc = _chosen_accuracy(run)
    best = _search_best(run)
    best_metrics = best["metrics"] if best is not None else None
    front = [(p["flops"] / base["flops"], p["accuracy"]) for p in s.get("pareto_front") or []
             if p.get("flops") is not None and p.get("accuracy") is not None]
    if run.latency:
        lat, predicted = run.latency, run.latency["predicted_ms"]
        panels = [TradeoffPanel(
            cost_label=f"predicted latency (fraction of the base model, batch {lat['batch_size']})",
            costs=[m["flops_ratio"] for m in metrics], accuracies=accs, within=within, budget=lat["budget"],
            score_name=run.score_name,
            budget_label="latency budget", chosen=(predicted["compressed"] / predicted["base"], chosen_acc),
            search_best=(best_metrics["flops_ratio"], best_metrics["accuracy"]) if best_metrics else None,
        )]
    else:
        panels = []
    panels = panels or [TradeoffPanel(
        cost_label="FLOPs (fraction of the base model)",
        costs=[m.get("flops_ratio", m["flops"] / base["flops"]) for m in metrics], accuracies=accs, within=within,
        budget=s["flops_budget"], budget_label="FLOPs budget", chosen=(comp["flops"] / base["flops"], chosen_acc),
        search_best=(best_metrics["flops"] / base["flops"], best_metrics["accuracy"]) if best_metrics else None,
        reported_front=front, reported_front_label=f"{s['agent']} Pareto front", score_name=run.score_name,
    )]
    has_size = all(m.get("size_bits") is not None for m in metrics) and base.get("size_bits")
    if s.get("bits") and has_size:
        panels.append(TradeoffPanel(
            cost_label="model size (fraction of the float32 model)",
            costs=[m["size_bits"] / base["size_bits"] for m in metrics], accuracies=accs, within=within,
            budget=run.size_budget, budget_label="size budget", score_name=run.score_name,
            chosen=(comp["size_bits"] / base["size_bits"], chosen_acc),
            search_best=(best_metrics["size_bits"] / base["size_bits"], best_metrics["accuracy"])
            if best_metrics else None,
        ))
    if s.get("bits") and run.bops_budget is not None and all(m.get("bops") is not None for m in metrics):
        panels.append(TradeoffPanel(
            cost_label="BOPs (fraction of the 32/32-bit model)",
            costs=[m["bops"] / base["bops"] for m in metrics], accuracies=accs, within=within,
            budget=run.bops_budget, budget_label="BOPs budget", chosen=(comp["bops"] / base["bops"], chosen_acc),
            score_name=run.score_name,
        ))
    plot_tradeoffs(panels, run.path / "figures" / "tradeoff.png",
                   f"{s['model']} on {s['dataset']} ({s['agent']})\nevery evaluated architecture, scored by "
                   "the search proxy")
    text = (f"Each dot is one evaluated architecture ({len(metrics)}), scored by the search proxy; the step line "
            "is the highest accuracy for at most that cost; the dashed line is the budget; the star is the "
            "architecture chosen by re-ranking, at its proxy accuracy before the final fine-tune.")
    if not any(_same_architecture(e, s.get("architecture", {}), s.get("bits")) for e in run.history):
        text += (" The chosen architecture is not one the search evaluated (the uniform one, or the search's best "
                 "widened to spend the leftover budget), so it may lie off the front.")
    if run.skipped_lines:
        text += f" {run.skipped_lines} unreadable or unscored line(s) of history.jsonl were left out."
    return [*blocks, ("p", text), ("img", "figures/tradeoff.png", "accuracy against FLOPs (and size)")]


def _search_blocks(run: Run) -> list[Block]:
    from automl_prune.report.plots import plot_search_curve

    if not run.history:
        return []
    s = run.summary
    metrics = [e["metrics"] for e in run.history]
    plot_search_curve([float(m["accuracy"]) for m in metrics], [run.within_budget(m) for m in metrics],
                      run.path / "figures" / "search_curve.png",
                      f"{s['model']} ({s['agent']}): best proxy {run.score_name} within budget over the search",
                      score_name=run.score_name)
    return [("h", 2, "Search curve"),
            ("p", "The best proxy validation accuracy within every budget so far, against the number of "
                  "evaluations; each evaluation is a faint dot."),
            ("img", "figures/search_curve.png", "search curve")]


def _layer_blocks(run: Run) -> list[Block]:
    from automl_prune.report.plots import plot_bits

    s = run.summary
    blocks: list[Block] = [("h", 2, "The chosen architecture per layer")]
    if (run.path / "best" / "widths.png").is_file():
        blocks.append(("img", "best/widths.png", "channels kept per group against the base model"))
    widths = s.get("architecture") or {}
    bits = s.get("bits")
    headers = ["group", "channels kept"]
    rows: list[list[Any]] = [[name, width] for name, width in widths.items()]
    blocks.append(("table", headers, rows))
    if bits:
        plot_bits(bits, run.path / "figures" / "bits.png",
                  f"{s['model']}: weight and activation bits per layer of the chosen architecture")
        blocks += [("p", f"Bits of every quantized layer; accuracy is {s.get('accuracy_is', 'simulated')}."),
                   ("img", "figures/bits.png", "weight and activation bits per layer"),
                   ("table", ["layer", "weight bits", "activation bits"],
                    [[name, wa[0], wa[1]] for name, wa in bits.items()])]
    return blocks


def _ladder_blocks(run: Run) -> list[Block]:
    ladder = run.summary.get("rerank")
    if not ladder:
        return []
    base_flops = run.summary["base"]["flops"]
    rungs = list(ladder.get("rungs", []))
    results = {(r["candidate"], r["rung"]): r for r in ladder.get("results", [])}
    winner = ladder.get("winner")
    score = "acc" if run.score_name == "accuracy" else run.score_name
    steps = [f"val {score} after {n} step{'s' if n != 1 else ''}" for n in rungs]
    headers = ["candidate", "origin", f"proxy {score}", "FLOPs (x base)", *steps, "outcome"]
    rows: list[list[Any]] = []
    for cand in ladder.get("candidates", []):
        cid = cand["id"]
        reached = [r for r in range(len(rungs)) if (cid, r) in results]
        accs = [run.format_score(results[(cid, r)]["val_acc"]) if (cid, r) in results else "-"
                for r in range(len(rungs))]
        if cid == winner:
            outcome = "chosen"
        elif reached and max(reached) == len(rungs) - 1:
            outcome = "finished, not chosen"
        elif reached:
            outcome = f"out after rung {max(reached) + 1}"
        else:
            outcome = "not run"
        proxy = cand.get("proxy_accuracy")
        rows.append([cid, cand.get("origin", ""), "-" if proxy is None else run.format_score(proxy),
                     f"{cand['flops'] / base_flops:.3f}", *accs, outcome])
    blocks: list[Block] = [("h", 2, "Re-ranking ladder"),
                           ("p", f"The best candidates of the search, plus uniform widths, fine-tuned in rungs of "
                                 f"the final recipe; the best 1/{ladder.get('eta', '?')} go on after each rung, and "
                                 f"the uniform entrant climbs every rung (the answer the search has to beat).")]
    if (run.path / "ladder.png").is_file():
        blocks.append(("img", "ladder.png", "re-ranking ladder"))
    return [*blocks, ("table", headers, rows)]


def _pareto_blocks(run: Run) -> list[Block]:
    front = run.summary.get("pareto_front")
    if not front:
        return []
    base = run.summary["base"]
    rows = [[p.get("index", "-"), f"{p['flops'] / base['flops']:.3f}", run.format_score(p["accuracy"]),
             f"{p['params']:,}" if p.get("params") is not None else "-"] for p in front]
    return [("h", 2, f"Pareto front of {run.summary['agent']}"),
            ("p", "The searcher's own trade-off of proxy accuracy against FLOPs (the diamonds in the first "
                  "picture)."),
            ("table", ["evaluation", "FLOPs (x base)", f"proxy {run.score_name}", "params"], rows)]


def _markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            out.append(format_table(block[1], block[2]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


def _cell(value: Any) -> str:
    """A table cell as text, formatted like `automl_prune.report.summary.format_table` does."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}"
        "img{max-width:100%;display:block;margin:1em 0}")


def _html(blocks: list[Block], run_dir: Path, title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                           for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((run_dir / block[1]).read_bytes()).decode("ascii")
            out.append(f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
