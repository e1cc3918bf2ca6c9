"""The pictures of a run's report: accuracy against cost, the search curve, and the bits per layer.

Every figure is drawn on its own Agg canvas (``Figure`` + ``FigureCanvasAgg``, never pyplot), so a caller's
backend and open figures are left alone; the caller decides where matplotlib keeps its font cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TradeoffPanel", "pareto_front", "plot_bits", "plot_search_curve", "plot_tradeoffs"]

_EVAL = "#3b75af"
_OVER = "#9a9a9a"
_FRONT = "#d1495b"
_BUDGET = "#2a9d55"
_CHOSEN = "#f4a300"


@dataclass
class TradeoffPanel:
    """One panel of accuracy (fraction) against one cost (fraction of the base model)."""

    cost_label: str
    costs: list[float]
    accuracies: list[float]
    within: list[bool]
    budget: float | None = None
    budget_label: str = "budget"
    chosen: tuple[float, float | None] | None = None
    search_best: tuple[float, float] | None = None
    reported_front: list[tuple[float, float]] = field(default_factory=list)
    reported_front_label: str = "searcher's Pareto front"
    score_name: str = "accuracy"


def _score_axis(score_name: str) -> tuple[float, str]:
    """Top-1 accuracy is drawn in percent; a custom metric (the Python API's ``metric=``) as it is."""
    if score_name == "accuracy":
        return 100.0, "proxy validation accuracy (%)"
    return 1.0, f"proxy validation {score_name}"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The ``(cost, accuracy)`` points with the highest accuracy for at most their cost, by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _draw_panel(ax: Any, panel: TradeoffPanel) -> None:
    scale, ylabel = _score_axis(panel.score_name)
    pct = [scale * a for a in panel.accuracies]
    inside = [(c, a) for c, a, w in zip(panel.costs, pct, panel.within, strict=True) if w]
    outside = [(c, a) for c, a, w in zip(panel.costs, pct, panel.within, strict=True) if not w]
    if inside:
        ax.scatter(*zip(*inside, strict=True), s=18, color=_EVAL, alpha=0.6, label="evaluated, within budget",
                   zorder=2)
    if outside:
        ax.scatter(*zip(*outside, strict=True), s=18, color=_OVER, marker="x", alpha=0.7,
                   label="evaluated, over a budget", zorder=2)
    front = pareto_front(list(zip(panel.costs, pct, strict=True)))
    marked = [panel.budget or 0.0, panel.chosen[0] if panel.chosen else 0.0]
    right = 1.08 * max([*panel.costs, *marked]) or 1.0  # zoomed to the points: bits make size and BOPs tiny
    if front:
        xs = [c for c, _ in front] + [right]
        ys = [a for _, a in front] + [front[-1][1]]
        ax.step(xs, ys, where="post", color=_FRONT, linewidth=1.6,
                label=f"Pareto front (best {panel.score_name} at \u2264 this cost)", zorder=3)
    if panel.reported_front:
        ax.scatter([c for c, _ in panel.reported_front], [scale * a for _, a in panel.reported_front], s=70,
                   facecolors="none", edgecolors="#6a3d9a", linewidths=1.4, marker="D",
                   label=panel.reported_front_label, zorder=4)
    if panel.budget is not None:
        ax.axvline(panel.budget, color=_BUDGET, linestyle="--", linewidth=1.4,
                   label=f"{panel.budget_label} ({panel.budget:.3g})", zorder=1)
    if panel.search_best is not None:
        cost, acc = panel.search_best
        ax.scatter([cost], [scale * acc], s=110, facecolors="none", edgecolors="black", linewidths=1.3,
                   label="search's best (before re-ranking)", zorder=5)
    if panel.chosen is not None:
        chosen_cost, chosen_acc = panel.chosen
        if chosen_acc is None:
            ax.axvline(chosen_cost, color=_CHOSEN, linewidth=2.0, label="chosen (not scored by the proxy)", zorder=5)
        else:
            ax.scatter([chosen_cost], [scale * chosen_acc], s=220, marker="*", color=_CHOSEN, edgecolors="black",
                       linewidths=0.8, label="chosen architecture", zorder=6)
    ax.set_xlabel(panel.cost_label)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.0, right)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)


def plot_tradeoffs(panels: Sequence[TradeoffPanel], path: str | Path, title: str) -> Path:
    """Accuracy against each cost of ``panels``, side by side, with Pareto front, budget and chosen point."""
    fig, axes = _new_figure(5.8 * len(panels) + 1.2, 5.0, ncols=len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel)
        ax.set_title(f"{panel.score_name} vs {panel.cost_label.split(' (')[0]}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_search_curve(accuracies: Sequence[float], within: Sequence[bool], path: str | Path, title: str,
                      score_name: str = "accuracy") -> Path:
    """Best proxy score within budget so far against evaluation number, every evaluation as a faint dot."""
    fig, (ax,) = _new_figure(7.5, 4.2)
    numbers = list(range(1, len(accuracies) + 1))
    scale, ylabel = _score_axis(score_name)
    pct = [scale * a for a in accuracies]
    inside = [(n, a) for n, a, w in zip(numbers, pct, within, strict=True) if w]
    outside = [(n, a) for n, a, w in zip(numbers, pct, within, strict=True) if not w]
    if inside:
        ax.scatter(*zip(*inside, strict=True), s=14, color=_EVAL, alpha=0.35, label="evaluation within budget")
    if outside:
        ax.scatter(*zip(*outside, strict=True), s=14, color=_OVER, alpha=0.5, marker="x",
                   label="evaluation over a budget")
    best: list[float | None] = []
    running: float | None = None
    for a, w in zip(pct, within, strict=True):
        if w and (running is None or a > running):
            running = a
        best.append(running)
    shown: list[tuple[float, float]] = [(n, b) for n, b in zip(numbers, best, strict=True) if b is not None]
    if shown:
        shown.append((len(numbers) + 0.5, shown[-1][1]))  # the last best holds to the end of the axis
        ax.step(*zip(*shown, strict=True), where="post", color=_FRONT, linewidth=2.0,
                label="best within budget so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation number (in the order evaluated)")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0.5, max(len(numbers), 1) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_bits(bits: dict[str, Sequence[int]], path: str | Path, title: str) -> Path:
    """Grouped bars of the weight and activation bits of every layer."""
    names = list(bits)
    fig, (ax,) = _new_figure(max(7.5, 0.45 * len(names) + 2.0), 4.4)
    xs = range(len(names))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [bits[n][0] for n in names], width, color=_EVAL, label="weight bits")
    ax.bar([x + width / 2 for x in xs], [bits[n][1] for n in names], width, color=_CHOSEN, label="activation bits")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("bits per value")
    top = max([8, *(max(b) for b in bits.values())])
    ax.set_ylim(0, top + 2.5)
    ax.set_yticks(range(0, top + 1, 2 if top > 8 else 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
