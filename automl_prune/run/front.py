"""A front of budgets: one search per budget from one command, sharing the sensitivity profile.

``--flops 0.5 0.25 0.1`` (or a list of ``--size`` or ``--bops`` values, or the same list in the YAML file) runs
the whole pipeline once per budget, each in ``OUT/<budget>-<value>/`` with its own re-ranking, fine-tune and
export, in the order given. The profile is cached in ``--cache-dir`` per base model, data and proxy, so the
first budget measures it and every later one reads it: ``--agent sensitivity`` re-solves each budget without
re-scoring, and every other searcher's ladder enters the one-shot answer for free. ``OUT/front.json``,
``OUT/front.md`` and ``OUT/front.png`` gather the budgets' results as they finish; the same command again
resumes the budget that was interrupted and skips the finished ones (their summaries are read back).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automl_prune.config import FRONT_KEYS, SearchConfig
from automl_prune.errors import ConfigError
from automl_prune.run.base_model import log
from automl_prune.run.run_dir import check_run_dir, write_json

__all__ = ["FRONT_KEYS", "front_configs", "run_front", "split_front"]

def split_front(values: dict[str, Any]) -> tuple[dict[str, Any], str | None, list[Any]]:
    """Settings with at most one budget given as a list: the settings with its first value, its key and values.

    A one-element list is that value (no front). Two budgets given as lists, an empty list or a value given
    twice is one clear `ConfigError`.
    """
    values = dict(values)
    lists = {key: list(values[key]) for key in FRONT_KEYS if isinstance(values.get(key), (list, tuple))}
    for key, budgets in lists.items():
        if not budgets:
            raise ConfigError(f"`{key}` is an empty list; give one budget or several (e.g. --{key} 0.5 0.25 0.1)")
        if len(budgets) == 1:
            values[key] = budgets[0]
    fronts = {key: budgets for key, budgets in lists.items() if len(budgets) > 1}
    if len(fronts) > 1:
        raise ConfigError(f"a front of budgets varies one budget, but {' and '.join(sorted(fronts))} are both lists "
                          "(give several values to one of them, one value to the others)")
    if not fronts:
        return values, None, []
    [(key, budgets)] = fronts.items()
    tags = [_tag(b) for b in budgets]
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        raise ConfigError(f"`{key}` lists {', '.join(repeated)} more than once; give each budget of the front once")
    values[key] = budgets[0]
    return values, key, budgets


def front_configs(config: SearchConfig, key: str, budgets: Sequence[Any]) -> list[SearchConfig]:
    """One config per budget, in ``OUT/<key>-<value>``; each is validated here, before anything is written."""
    out = Path(config.out)
    return [config.replace(**{key: budget, "out": str(out / f"{key}-{_tag(budget)}")}) for budget in budgets]


def run_front(config: SearchConfig, key: str, budgets: Sequence[Any]) -> list[dict[str, Any]]:
    """Run the pipeline for every budget; returns (and writes to ``OUT/front.*``) one row per budget."""
    from automl_prune.run.pipeline import run_search

    configs = front_configs(config, key, budgets)
    for sub in configs:  # another search in a budget's folder is refused before any budget runs
        check_run_dir(sub, Path(sub.out))
    out = Path(config.out)
    rows: list[dict[str, Any]] = []
    started, ran = time.monotonic(), 0
    for index, (budget, sub) in enumerate(zip(budgets, configs, strict=True)):
        done = Path(sub.out) / "summary.json"
        if done.exists():
            log(f"front: budget {index + 1}/{len(configs)} (--{key} {budget}) already finished in {sub.out}")
            summary = json.loads(done.read_text())
        else:
            eta = ""
            if ran:
                left = len(configs) - index
                eta = f", about {_duration((time.monotonic() - started) / ran * left)} left"
            log(f"front: budget {index + 1}/{len(configs)} (--{key} {budget}) -> {sub.out}{eta}")
            summary = run_search(sub)
            ran += 1
        rows.append(front_row(key, budget, sub, summary))
        write_front(out, key, rows)
    log(f"front of {len(rows)} budgets: {out / 'front.md'}, {out / 'front.png'}")
    return rows


def front_row(key: str, budget: Any, config: SearchConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """What one budget's run found and cost, from its ``summary.json``."""
    base, comp = summary["base"], summary["compressed"]
    profile = summary.get("profile") or {}
    one_shot = summary.get("one_shot") or {}
    size = (comp["size_bits"] / base["size_bits"]) if base.get("size_bits") and comp.get("size_bits") else None
    bops = (comp["bops"] / base["bops"]) if base.get("bops") and comp.get("bops") else None
    return {
        "budget": key, "value": budget, "run_dir": config.out,
        "flops_ratio": comp["flops"] / base["flops"], "size_ratio": size, "bops_ratio": bops,
        "val_acc": comp.get("val_acc_after_finetune"), "test_acc": comp["test_acc"],
        "chosen": (summary.get("chosen") or {}).get("origin"),
        "evaluations": summary["evaluations"],
        "profile_measured": int(profile.get("measured", 0)) + int(one_shot.get("evaluations", 0)),
        "profile_reused": int(profile.get("reused", 0)),
        "search_seconds": summary["search_seconds"], "rerank_seconds": summary.get("rerank_seconds"),
        "metric": summary.get("metric"),
    }


def write_front(out: Path, key: str, rows: list[dict[str, Any]]) -> None:
    """``front.json`` (the rows), ``front.md`` (their table) and ``front.png`` (score against the budget)."""
    from automl_prune.atomic import atomic_write_text
    from automl_prune.report.summary import format_table

    write_json(out / "front.json", {"budget": key, "rows": rows})
    score = rows[0]["metric"] or "accuracy"
    pct = (lambda x: "-" if x is None else f"{x:.4g}") if rows[0]["metric"] else (
        lambda x: "-" if x is None else f"{100 * x:.2f}%")
    table = format_table(
        [f"--{key}", "FLOPs", "size", "BOPs", f"val {score}", f"test {score}", "chosen", "search evals",
         "profile evals (measured / from cache)", "search s", "re-rank s", "run"],
        [[f"{r['value']}", f"{r['flops_ratio']:.3f}x", _ratio(r["size_ratio"]), _ratio(r["bops_ratio"]),
          pct(r["val_acc"]), pct(r["test_acc"]), r["chosen"] or "-", r["evaluations"],
          f"{r['profile_measured']} / {r['profile_reused']}", f"{r['search_seconds']:.1f}",
          "-" if r["rerank_seconds"] is None else f"{r['rerank_seconds']:.1f}", r["run_dir"]] for r in rows])
    atomic_write_text(out / "front.md", f"# A front of {len(rows)} budgets (--{key})\n\n{table}\n")
    _plot(out / "front.png", key, rows, score)


def _plot(path: Path, key: str, rows: list[dict[str, Any]], score: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ratio = {"flops": "flops_ratio", "size": "size_ratio", "bops": "bops_ratio"}[key]
    points = sorted((r[ratio], r["test_acc"], r["val_acc"]) for r in rows if r[ratio] is not None)
    scale = 1.0 if rows[0]["metric"] else 100.0
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([p[0] for p in points], [scale * p[1] for p in points], "o-", label=f"test {score}")
    vals = [(p[0], p[2]) for p in points if p[2] is not None]
    if vals:
        ax.plot([v[0] for v in vals], [scale * v[1] for v in vals], "s--", alpha=0.7,
                label=f"val {score} (after fine-tune)")
    ax.set_xlabel(f"{key} of the compressed model / base model")
    ax.set_ylabel(f"{score}{' (%)' if scale == 100.0 else ''}")
    ax.set_title(f"One search per --{key} budget, after fine-tune")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}x"


def _tag(budget: Any) -> str:
    """A folder-safe name of a budget value (``0.25``, ``1.5MB``)."""
    if isinstance(budget, float) and math.isfinite(budget):
        return f"{budget:g}"
    return str(budget).strip().replace("/", "_").replace(" ", "")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{max(minutes, 1)} min"
