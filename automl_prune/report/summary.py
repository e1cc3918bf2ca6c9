"""Results people look at: the summary table and a picture of the per-layer widths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["format_table", "plot_widths", "summary_rows"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def summary_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """Rows of the base-vs-compressed table printed at the end of a search."""
    base, comp = summary["base"], summary["compressed"]

    # A custom metric (the Python API's ``metric=``) is named in the summary and shown as a plain number.
    score = summary.get("metric") or "accuracy"

    def pct(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{100 * x:.2f}%" if "metric" not in summary else f"{x:.4g}"

    rows = [
        ["FLOPs", f"{base['flops']:,}", f"{comp['flops']:,} ({comp['flops'] / base['flops']:.3f}x)"],
        ["params", f"{base['params']:,}", f"{comp['params']:,} ({comp['params'] / base['params']:.3f}x)"],
        [f"val {score} (before fine-tune)", pct(base["val_acc"]), pct(comp["val_acc_before_finetune"])],
        [f"val {score} (after fine-tune)", pct(base["val_acc"]), pct(comp.get("val_acc_after_finetune"))],
        [f"test {score} (after fine-tune)", pct(base["test_acc"]), pct(comp["test_acc"])],
        ["search time", "-", f"{summary['search_seconds']:.1f} s ({summary['evaluations']} evaluations)"],
        ["fine-tune time", "-", f"{summary['finetune_seconds']:.1f} s"],
    ]
    stages = []  # what each stage cost beyond the search's own evaluations: what it added over the one-shot answer
    profile = summary.get("profile") or {}
    if profile:  # a sensitivity search: its profile is inside the search time
        stages.append(["sensitivity profile (in search time)", "-",
                       f"{profile['measured']} evaluations measured, {profile['reused']} read from the cache; "
                       f"solved in {profile['solve_seconds']:.2f} s"])
    start = summary.get("search_start") or {}
    if "evaluations" in start:  # a one-shot search start: its profile is inside the search time
        stages.append(["one-shot start (in search time)", "-", f"{start['evaluations']} profile evaluations"])
    one_shot = summary.get("one_shot") or {}
    if "evaluations" in one_shot:  # the ladder's one-shot entrant, beyond the search's evaluations
        stages.append(["one-shot entrant (ladder)", "-",
                       f"{one_shot['seconds']:.1f} s ({one_shot['evaluations']} profile evaluations)"])
    rows[6:6] = stages
    if summary.get("loss"):
        rows.append(["fine-tune loss", "-", summary["loss"]])
    if summary.get("bits") and base.get("size_bits") and comp.get("size_bits"):
        rows[2:2] = [
            ["size (bytes)", f"{base['size_bits'] / 8:,.0f}",
             f"{comp['size_bits'] / 8:,.0f} ({comp['size_bits'] / base['size_bits']:.3f}x)"],
            ["BOPs", f"{base['bops']:,}", f"{comp['bops']:,} ({comp['bops'] / base['bops']:.4f}x)"],
        ]
        rows.append(["accuracy of the quantized model", "-", "simulated (fake-quantized on float kernels)"])
    int8 = summary.get("int8") or {}
    latency = int8.get("latency_ms")
    if int8.get("skipped"):
        rows.append(["int8 realisation", "-", str(int8["skipped"])])
    if latency:
        for batch, value in latency.items():
            rows.append([f"latency, batch {batch} (ONNX Runtime, 1 thread)", f"{value['float_onnxruntime']:.2f} ms "
                         "float", f"{value['int8_onnxruntime']:.2f} ms with the 8/8-bit layers in int8"])
    return rows


def plot_widths(full: dict[str, int], kept: dict[str, int], path: str | Path, title: str) -> Path:
    """Bar chart of channels per group: full width behind, kept width in front.

    Drawn on its own Agg canvas (no pyplot, no `matplotlib.use`), so a caller's backend and figures are left
    alone. matplotlib keeps a font cache under ``MPLCONFIGDIR`` (default: the home directory); a command that
    wants it elsewhere sets that for its own process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(full)
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(names))
    ax.bar(xs, [full[n] for n in names], color="#d0d0d0", label="base")
    ax.bar(xs, [kept.get(n, full[n]) for n in names], color="#3b75af", label="kept")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
