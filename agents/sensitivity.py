"""Sensitivity-profile search (the method of NVIDIA Model Optimizer's FastNAS pruning).

1. **Profile.** For each channel group, the proxy accuracy of the network with that group alone narrowed to
   each width of a grid (``k / steps`` of its channels, and its minimum), every other group at full width;
   plus the full network itself. These evaluations are over budget by design, so they call the evaluator
   directly and never enter the history; they are independent of each other (`pending_profile` hands them
   out as one list, so a parallel runner can evaluate them in any order) and are stored, as they finish, in
   ``RUN_DIR/sensitivity.json``: a restored search never re-evaluates a profiled point. Pending points are
   evaluated as many at once as the evaluator has workers (its ``evaluate_many``). The profile is drawn
   in ``RUN_DIR/sensitivity.png`` (accuracy against keep ratio, one line per group).
2. **Threshold.** Each group's *drop* at a width is the full network's accuracy minus the profiled one,
   made monotone (the drop at ``w`` is the worst drop at any profiled width ``>= w``). One threshold ``t``
   gives every group its narrowest profiled width whose drop is at most ``t``; FLOPs fall as ``t`` grows, so
   the smallest ``t`` whose architecture fits the budget is found by bisection over the distinct drops. The
   leftover budget is then spent by widening towards the architecture of the next smaller threshold
   (`agents.budget.fill_budget`). That architecture is the first evaluation of the history.
3. **Further evaluations** (when more are asked for) hedge the profile's blind spot, the interactions between
   groups: the uniform architecture of the budget, then blends of the two (keep ratios interpolated in log
   space at 1/2, 1/4, 3/4, 1/8, ...), then random factors in ``[0.8, 1.25]`` on the sensitivity widths, all
   moved onto the budget. Every one of them is budget-satisfying and goes through `Searcher._evaluate`.

Profile size and the evaluation budget: with ``steps=None`` (default) the grid is the finest of 20, 10 and 5
steps (5%, 10%, 20% of each group's channels; the grids nest, so refining a profile only adds points) whose
profile costs at most ``profile_factor x n_evaluations`` evaluations, ``n_evaluations`` being what
``search(n_evaluations)`` asks for; the 5-step grid is used when even that is over. A search asked for more
evaluations later may so refine its profile; with the same ``n_evaluations`` a restored search is exactly
the uninterrupted one.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agents.base import SearchContext, Searcher, SearchResult
from agents.budget import fill_budget, project_to_budget, uniform_architecture
from automl_prune.atomic import atomic_write, atomic_write_text
from automl_prune.errors import ConfigError
from search_spaces import Architecture

__all__ = ["ProfilePoint", "SensitivitySearcher"]

_PROFILE_FILE = "sensitivity.json"
_PLOT_FILE = "sensitivity.png"
_AUTO_STEPS = (20, 10, 5)  # nested grids, finest first
_BLEND_DEPTH = 5  # dyadic blends up to 1/32: 31 of them
_FULL = "<full>"  # the profile key of the full network


@dataclass(frozen=True)
class ProfilePoint:
    """One profile evaluation: ``group`` narrowed to ``width``, every other group at full width."""

    group: str
    width: int
    architecture: Architecture


class SensitivitySearcher(Searcher):
    """Per-group accuracy profile, one threshold on the accuracy drop bisected onto the budget.

    Args:
        context: As every `Searcher` (its ``seed`` only affects the random hedges after the blends); this
            searcher decides widths only, so any search but ``"widths"`` is refused with a `ConfigError`.
        steps: Profile grid: each group at ``k / steps`` of its channels (``k = 1 .. steps - 1``) and at its
            minimum. ``None`` (default) adapts to the evaluation budget (see the module docstring).
        profile_factor: With ``steps=None``, the profile may cost at most this many times the evaluations
            asked for.
    """

    name: ClassVar[str] = "sensitivity"
    searches: ClassVar[tuple[str, ...]] = ("widths",)

    def __init__(self, context: SearchContext, *, steps: int | None = None, profile_factor: float = 2.0) -> None:
        super().__init__(context)
        if steps is not None and not 2 <= steps <= 100:
            raise ConfigError(f"`2 <= steps <= 100` must hold (grid points per group), but got {steps=}")
        if not (math.isfinite(profile_factor) and profile_factor > 0):
            raise ConfigError(f"`profile_factor > 0` must hold, but got {profile_factor=}")
        self.steps = steps
        self.profile_factor = float(profile_factor)
        # group (or _FULL) -> width -> metrics of that profile point
        self.profile: dict[str, dict[int, dict[str, Any]]] = {}
        self.threshold: float | None = None
        if self.run_dir is not None and (self.run_dir / _PROFILE_FILE).exists():
            self._load_profile(self.run_dir / _PROFILE_FILE)

    # the profile --------------------------------------------------------------------------------------------
    def grid_steps(self, n_evaluations: int | None = None) -> int:
        """The profile grid for a search of ``n_evaluations`` (default: the current search's)."""
        if self.steps is not None:
            return self.steps
        n = self.n_evaluations if n_evaluations is None else n_evaluations
        for steps in _AUTO_STEPS:
            if len(self.profile_plan(steps)) <= self.profile_factor * max(1, n):
                return steps
        return _AUTO_STEPS[-1]

    def profile_plan(self, steps: int | None = None) -> list[ProfilePoint]:
        """Every profile point of a ``steps`` grid (default `grid_steps`), the full network first."""
        steps = self.grid_steps() if steps is None else steps
        full = self.space.full().widths
        points = [ProfilePoint(_FULL, 0, Architecture(dict(full)))]
        for d in self.space.decisions:
            widths = {d.floor(k * d.size / steps) for k in range(1, steps)} | {d.min_keep}
            for width in sorted(w for w in widths if w < d.size):
                points.append(ProfilePoint(d.name, width, Architecture({**full, d.name: width})))
        return points

    def pending_profile(self) -> list[ProfilePoint]:
        """The profile points not measured yet; independent of each other, so evaluable in parallel."""
        return [p for p in self.profile_plan() if p.width not in self.profile.get(p.group, {})]

    def record_profile(self, point: ProfilePoint, metrics: Mapping[str, Any]) -> None:
        """Store one profile measurement (and write ``sensitivity.json`` when there is a run directory)."""
        self.profile.setdefault(point.group, {})[point.width] = dict(metrics)
        if self.run_dir is not None:
            self._write_profile(self.run_dir / _PROFILE_FILE)

    def _measure_profile(self) -> None:
        """Evaluate the pending points, as many at once as the evaluator has workers (`Searcher.batch_size`)."""
        pending = self.pending_profile()
        many = getattr(self.evaluator, "evaluate_many", None)
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start : start + self.batch_size]
            if many is not None:
                results = [m.to_dict() for m in many([p.architecture for p in chunk])]
            else:
                results = [self.evaluator.evaluate(p.architecture).to_dict() for p in chunk]
            for point, metrics in zip(chunk, results, strict=True):
                self.record_profile(point, metrics)
        if self.run_dir is not None and (pending or not (self.run_dir / _PLOT_FILE).exists()):
            self.plot_profile(self.run_dir / _PLOT_FILE)

    def _accuracy(self, group: str, width: int) -> float:
        return float(self.profile[group][width]["accuracy"])

    def drops(self) -> dict[str, dict[int, float]]:
        """Per group, the monotone accuracy drop at each measured width (full width: 0)."""
        base = self._accuracy(_FULL, 0)
        result: dict[str, dict[int, float]] = {}
        for d in self.space.decisions:
            measured = self.profile.get(d.name, {})
            worst = 0.0
            drops = {d.size: 0.0}
            for width in sorted(measured, reverse=True):
                worst = max(worst, base - float(measured[width]["accuracy"]))
                drops[width] = worst
            result[d.name] = drops
        return result

    def architecture_at(self, threshold: float, drops: Mapping[str, Mapping[int, float]] | None = None
                        ) -> Architecture:
        """Every group at its narrowest measured width whose drop is at most ``threshold``."""
        drops = self.drops() if drops is None else drops
        return Architecture({name: min(w for w, drop in per.items() if drop <= threshold)
                             for name, per in drops.items()})

    def sensitivity_architecture(self) -> Architecture:
        """The bisected threshold's architecture, widened while the budget allows (sets ``self.threshold``)."""
        drops = self.drops()
        candidates = sorted({0.0} | {v for per in drops.values() for v in per.values()})
        lo, hi = 0, len(candidates) - 1  # candidates[-1] puts every group at its minimum: it always fits
        while lo < hi:
            mid = (lo + hi) // 2
            if self.space.flops(self.architecture_at(candidates[mid], drops)) <= self.budget.flops:
                hi = mid
            else:
                lo = mid + 1
        self.threshold = candidates[lo]
        arch = self.architecture_at(self.threshold, drops)
        wider = self.architecture_at(candidates[lo - 1], drops) if lo > 0 else self.space.full()
        target = {k: float(v) for k, v in wider.widths.items()}
        return Architecture(fill_budget(self.space, arch.widths, self.budget.flops, target))

    # candidates ---------------------------------------------------------------------------------------------
    def _onto_budget(self, widths: Mapping[str, float]) -> Architecture:
        """Valid widths nearest to ``widths``, scaled onto the budget when over it, widened when under it."""
        arch = Architecture({d.name: d.round(widths[d.name]) for d in self.space.decisions})
        if self.space.flops(arch) > self.budget.flops:
            return project_to_budget(self.space, arch, self.budget.flops, fill=True)
        return Architecture(fill_budget(self.space, arch.widths, self.budget.flops, dict(widths)))

    def _blend(self, a: Architecture, b: Architecture, alpha: float) -> Architecture:
        widths = {d.name: math.exp((1 - alpha) * math.log(a.widths[d.name]) + alpha * math.log(b.widths[d.name]))
                  for d in self.space.decisions}
        return self._onto_budget(widths)

    def _fixed_candidates(self, best: Architecture) -> list[Architecture]:
        """The sensitivity architecture, uniform, then their dyadic blends (duplicates removed)."""
        uniform = uniform_architecture(self.space, self.budget.flops)
        alphas = [k / 2**depth for depth in range(1, _BLEND_DEPTH + 1) for k in range(1, 2**depth, 2)]
        seen: set[str] = set()
        result = []
        for arch in (best, uniform, *(self._blend(best, uniform, a) for a in alphas)):
            if arch.key() not in seen:
                seen.add(arch.key())
                result.append(arch)
        return result

    def _hedge(self, best: Architecture, index: int) -> Architecture:
        """The random hedge for history index ``index`` (a generator per index, so batching changes nothing)."""
        rng = np.random.default_rng([self.seed, 104729, index])
        factors = np.exp(rng.uniform(math.log(0.8), math.log(1.25), size=len(self.space)))
        return self._onto_budget({d.name: best.widths[d.name] * float(f)
                                  for d, f in zip(self.space.decisions, factors, strict=True)})

    def _run(self) -> None:
        self._measure_profile()
        best = self.sensitivity_architecture()
        done = {e.architecture.key() for e in self.history.entries}
        fixed = [a for a in self._fixed_candidates(best) if a.key() not in done]
        while self.remaining:
            batch: list[Architecture] = []
            while fixed and len(batch) < min(self.remaining, self.batch_size):
                batch.append(fixed.pop(0))
            while len(batch) < min(self.remaining, self.batch_size):
                index = len(self.history) + len(batch)
                taken = done | {a.key() for a in batch}
                for attempt in range(20):  # prefer an architecture not evaluated yet
                    arch = self._hedge(best, index) if attempt == 0 else self._hedge(best, index * 1000 + attempt)
                    if arch.key() not in taken:
                        break
                batch.append(arch)
            self._evaluate_many(batch)
            done |= {a.key() for a in batch}

    def result(self) -> SearchResult:
        """As `Searcher.result`, plus the threshold, the grid and the profile's size and files in ``extra``."""
        result = super().result()
        result.extra.update({
            "threshold": self.threshold,
            "steps": self.grid_steps() if self.n_evaluations else self.steps,
            "profile_evaluations": sum(len(v) for v in self.profile.values()),
        })
        if self.run_dir is not None:
            result.extra["profile"] = str(self.run_dir / _PROFILE_FILE)
            result.extra["profile_plot"] = str(self.run_dir / _PLOT_FILE)
        return result

    # files ----------------------------------------------------------------------------------------------------
    def _profile_data(self) -> dict[str, Any]:
        return {
            "searcher": self.name,
            "decisions": {d.name: d.size for d in self.space.decisions},
            "full": self.profile.get(_FULL, {}).get(0),
            "groups": {name: {str(w): m for w, m in sorted(per.items())}
                       for name, per in self.profile.items() if name != _FULL},
        }

    def _write_profile(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self._profile_data(), indent=1) + "\n")

    def _load_profile(self, path: Path) -> None:
        data = json.loads(path.read_text())
        sizes = {d.name: d.size for d in self.space.decisions}
        if data.get("decisions") != sizes:
            raise ValueError(f"{path} is the profile of another search space ({sorted(data.get('decisions', {}))}, "
                             f"this one has {sorted(sizes)}); use another run_dir")
        if data.get("full") is not None:
            self.profile.setdefault(_FULL, {})[0] = dict(data["full"])
        for name, per in data.get("groups", {}).items():
            for width, metrics in per.items():
                self.profile.setdefault(name, {})[int(width)] = dict(metrics)

    def plot_profile(self, path: str | Path) -> Path:
        """Draw accuracy against keep ratio, one line per group, the full network's accuracy dashed."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.8), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        colours = [f"C{i}" for i in range(10)]
        styles = ["-", "--", ":", "-."]
        for i, d in enumerate(self.space.decisions):
            measured = dict(self.profile.get(d.name, {}))
            if _FULL in self.profile:
                measured[d.size] = self.profile[_FULL][0]
            if not measured:
                continue
            widths = sorted(measured)
            ax.plot([w / d.size for w in widths], [float(measured[w]["accuracy"]) for w in widths],
                    color=colours[i % 10], ls=styles[(i // 10) % 4], marker="o", ms=3,
                    label=f"{d.name} ({d.size} ch)")
        if _FULL in self.profile:
            ax.axhline(float(self.profile[_FULL][0]["accuracy"]), color="black", ls="--", lw=0.8,
                       label="full network")
        ax.set_xlabel("keep ratio of the group (every other group at full width)")
        ax.set_ylabel("proxy accuracy (validation)")
        ax.set_title(f"Sensitivity profile: {self.space.model_name or 'model'}, one group narrowed at a time")
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return atomic_write(Path(path), buffer.getvalue())

    # save / restore -------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the profile under ``path`` (it is also kept in ``run_dir`` as it is measured)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._write_profile(path / _PROFILE_FILE)

    def restore(self, path: str | Path) -> None:
        """Load the profile `save` wrote; profiled points are not evaluated again."""
        file = Path(path) / _PROFILE_FILE
        if not file.exists():
            raise FileNotFoundError(f"no saved {self.name} searcher under {path} (expected {file.name})")
        self._load_profile(file)
