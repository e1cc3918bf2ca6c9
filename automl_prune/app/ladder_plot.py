"""The re-ranking ladder as a picture: validation accuracy of every candidate at every rung it reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_ladder"]


def plot_ladder(ladder: dict[str, Any], path: str | Path, title: str) -> Path:
    """One line per candidate over the rungs' fine-tune steps; the winner drawn thick, eliminated ones end.

    Args:
        ladder: `automl_prune.rerank.Ladder.to_dict` output.
        path: The PNG to write.
        title: The figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origins = {c["id"]: c["origin"] for c in ladder["candidates"]}
    proxy = {c["id"]: c["proxy_accuracy"] for c in ladder["candidates"]}
    by_candidate: dict[str, list[tuple[int, float]]] = {}
    for result in ladder["results"]:
        by_candidate.setdefault(result["candidate"], []).append((result["steps"], 100 * result["val_acc"]))
    winner = ladder.get("winner")
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for cid, points in by_candidate.items():
        points.sort()
        xs, ys = [0, *[p[0] for p in points]], [100 * (proxy[cid] or 0.0), *[p[1] for p in points]]
        is_winner = cid == winner
        label = f"{cid}: {origins[cid]}" + (" (chosen)" if is_winner else "")
        ax.plot(xs, ys, marker="o", linewidth=3 if is_winner else 1.2, alpha=1.0 if is_winner else 0.8,
                linestyle="-" if "uniform" not in origins[cid] else "--", label=label, zorder=3 if is_winner else 2)
    for steps in ladder["rungs"]:
        ax.axvline(steps, color="#bbbbbb", linewidth=0.8, zorder=1)
    ax.set_xscale("symlog", linthresh=max(1, ladder["rungs"][0]))
    ax.set_xlabel("fine-tune steps of the final recipe (rungs marked; 0 = the search's proxy score)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # The early, low proxy scores would squash the rungs that decide: zoom on the fine-tuned range.
    tuned = [y for pts in by_candidate.values() for _, y in pts]
    if tuned:
        low = min(tuned)
        ax.set_ylim(max(0.0, low - 0.25 * (max(tuned) - low + 1.0) - 1.0), max(tuned) + 0.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="candidate", title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
