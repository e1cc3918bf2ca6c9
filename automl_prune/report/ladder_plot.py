"""The re-ranking ladder as a picture: validation accuracy of every candidate at every rung it reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_ladder"]


def plot_ladder(ladder: dict[str, Any], path: str | Path, title: str, score_name: str = "accuracy") -> Path:
    """One line per candidate over the rungs' fine-tune steps; the winner drawn thick, eliminated ones end.

    Args:
        ladder: `automl_prune.scoring.ladder.Ladder.to_dict` output.
        path: The PNG to write.
        title: The figure's title.
        score_name: ``accuracy`` (drawn in percent) or the name of the Python API's custom metric (as it is).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if score_name == "accuracy" else 1.0
    unit = "%" if score_name == "accuracy" else ""
    origins = {c["id"]: c["origin"] for c in ladder["candidates"]}
    proxy = {c["id"]: c["proxy_accuracy"] for c in ladder["candidates"]}
    by_candidate: dict[str, list[tuple[int, float]]] = {}
    for result in ladder["results"]:
        by_candidate.setdefault(result["candidate"], []).append((result["steps"], scale * result["val_acc"]))
    winner = ladder.get("winner")
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for cid, points in by_candidate.items():
        points.sort()
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        is_winner = cid == winner
        score = f", proxy {scale * proxy[cid]:.3g}{unit}" if proxy[cid] is not None else ""
        label = f"{cid}: {origins[cid]}{score}" + (" (chosen)" if is_winner else "")
        ax.plot(xs, ys, marker="o", linewidth=3 if is_winner else 1.2, alpha=1.0 if is_winner else 0.8,
                linestyle="-" if "uniform" not in origins[cid] else "--", label=label, zorder=3 if is_winner else 2)
    for steps in ladder["rungs"]:
        ax.axvline(steps, color="#bbbbbb", linewidth=0.8, zorder=1)
    ax.set_xscale("log")
    ax.set_xticks(ladder["rungs"], [str(r) for r in ladder["rungs"]])
    ax.minorticks_off()
    ax.set_xlabel("fine-tune steps of the final recipe (one tick per rung; the search's proxy score is in the legend)")
    ax.set_ylabel(f"validation {score_name}" + (" (%)" if unit else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    first, last = ladder["rungs"][0], ladder["rungs"][-1]
    ax.set_xlim(first / 1.5, last * 1.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="candidate", title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
