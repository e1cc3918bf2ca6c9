"""Accuracy-FLOPs Pareto fronts: which evaluated architectures no other one beats, as JSON and a plot."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from automl_prune.atomic import atomic_write, atomic_write_text

__all__ = ["dominates", "pareto_front", "plot_pareto", "write_pareto_json"]


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], *, maximize: str = "accuracy",
              minimize: str = "flops") -> bool:
    """Whether ``a`` is at least as good as ``b`` in both objectives and strictly better in one."""
    no_worse = a[maximize] >= b[maximize] and a[minimize] <= b[minimize]
    better = a[maximize] > b[maximize] or a[minimize] < b[minimize]
    return bool(no_worse and better)


def pareto_front(points: Sequence[Mapping[str, Any]], *, maximize: str = "accuracy",
                 minimize: str = "flops") -> list[dict[str, Any]]:
    """The non-dominated entries of ``points``, by ascending ``minimize`` (FLOPs).

    Args:
        points: Mappings holding at least the two objective keys (other keys are carried along).
        maximize: The key to maximize (accuracy).
        minimize: The key to minimize (FLOPs).

    Returns:
        Copies of the non-dominated points; of several points with identical objective values only the
        first is kept, so no two entries of the front tie.

    Raises:
        KeyError: A point lacks one of the objective keys (the message names the point and the keys).
    """
    for i, p in enumerate(points):
        missing = [k for k in (maximize, minimize) if k not in p]
        if missing:
            raise KeyError(f"point {i} has no {missing} (it has {sorted(p)}); every point needs "
                           f"{maximize!r} and {minimize!r}")
    # Sort by cost ascending, then accuracy descending: a point is on the front iff it is strictly more
    # accurate than every cheaper-or-equal point before it.
    order = sorted(range(len(points)), key=lambda i: (points[i][minimize], -points[i][maximize], i))
    front: list[dict[str, Any]] = []
    best = float("-inf")
    for i in order:
        if points[i][maximize] > best:
            front.append(dict(points[i]))
            best = points[i][maximize]
    return front


def write_pareto_json(path: str | Path, front: Sequence[Mapping[str, Any]], *,
                      budget_flops: int | None = None, full_flops: int | None = None,
                      objective: str | None = None, budget: int | None = None, full: int | None = None) -> Path:
    """Write the front as JSON atomically (temp file, then `os.replace`); returns the path.

    The file holds ``{"budget_flops", "full_flops", "front": [{"architecture", "flops", "accuracy", ...}]}``;
    for a front over another cost than FLOPs also ``objective`` (its key in the points: ``"size_bits"``,
    ``"bops"``), its ``budget`` and its value for the ``full`` model.
    """
    path = Path(path)
    data: dict[str, Any] = {"budget_flops": budget_flops, "full_flops": full_flops,
                            "front": [dict(p) for p in front]}
    if objective is not None:
        data.update(objective=objective, budget=budget, full=full)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def plot_pareto(path: str | Path, points: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
                *, budget_flops: int | None = None, full_flops: int | None = None,
                title: str = "Accuracy vs FLOPs", xlabel: str = "FLOPs") -> Path:
    """Draw every evaluated point, the front as a step line, and the budget, into a PNG (Agg backend).

    Args:
        path: Where the PNG goes (written atomically).
        points: Every evaluated point (``accuracy``, ``flops``).
        front: The non-dominated subset (see `pareto_front`).
        budget_flops: Drawn as a vertical line when given.
        full_flops: When given, the x axis is the fraction of the full model's FLOPs.
        title: Plot title.
        xlabel: What the x axis (the points' ``flops``) measures.
    """
    import io

    # A bare Figure renders through Agg without pyplot, so no global backend is switched and no
    # display is needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = float(full_flops) if full_flops else 1.0
    xlabel = f"{xlabel} / full {xlabel}" if full_flops else xlabel
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter([p["flops"] / scale for p in points], [p["accuracy"] for p in points],
               s=14, c="tab:gray", alpha=0.6, label="evaluated")
    if front:
        ax.step([p["flops"] / scale for p in front], [p["accuracy"] for p in front], where="post",
                c="tab:red", marker="o", label="Pareto front")
    if budget_flops is not None:
        ax.axvline(budget_flops / scale, c="tab:blue", ls="--", label="budget")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = Path(path)
    atomic_write(path, buffer.getvalue())
    return path
