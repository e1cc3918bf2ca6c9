"""Sensitivity-profile search (the method of NVIDIA Model Optimizer's FastNAS pruning), for widths and for bits.

Widths (``search="widths"``, and the widths of ``"both"``):

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

Bits (``search="bits"``, and the bits of ``"both"``): a per-layer profile of the score with one layer's weights,
or its input, at each allowed bit width, everything else float (`agents.bit_profile`: measured with the
evaluator, so exact for its metric, at ``layers x choices`` evaluations; not a Fisher/Hessian estimate), then the
exact least summed drop under the budget's size and BOPs limits, a multiple-choice knapsack solved with HiGHS
(`agents.bit_knapsack`), checked by the space's own size and BOPs count. ``"bits"`` allocates at full widths;
``"both"`` takes the widths of the threshold above (narrowed together if even the lowest bits are over the size
or BOPs limit: `agents.bit_budget.shrink_to_lowest_bits`) and allocates bits at them; its bits profile is measured
at full widths, so that one profile serves every budget. Later evaluations: the uniform answer (the highest
uniform bits that fit, at full or uniform widths), then (``"both"``) the width blends above with their
allocated bits, then allocations of randomly perturbed profiles (each layer's weight and activation drops times
a log-uniform factor in ``[1/2, 2]``; ``"both"``: at the hedged widths). The bits profile's cost does not adapt
to ``n_evaluations`` (``profile_factor`` is for the width grid).

One profile, every budget: with ``profile_cache`` (a folder) and ``profile_key`` (what makes the evaluator's
scores the same: base model, data, criterion, calibration, proxy; the pipeline passes both from its cache
folder) each profile is also kept in ``profile_cache/sensitivity-profiles`` (`agents.profile_cache`), so a run
with another budget reuses it and evaluates nothing for it. The run directory records the profiles it used,
where they came from and the one-shot answer in ``RUN_DIR/profile.json``; `agents.one_shot.cached_one_shot` gives
the one-shot answer of a cached profile without any evaluation (the re-ranking ladder enters it).
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agents.base import SearchContext, Searcher, SearchResult
from agents.bit_budget import shrink_to_lowest_bits, uniform_bits_architecture
from agents.bit_knapsack import allocate_bits, bit_options
from agents.bit_profile import BitProfilePoint, bit_drops, bit_factors, bit_profile_plan
from agents.budget import fill_budget, project_to_budget, uniform_architecture
from agents.profile_cache import Points, ProfileCache, canonical_key
from automl_prune.atomic import atomic_write, atomic_write_text
from automl_prune.errors import ConfigError
from search_spaces import Architecture

__all__ = ["ProfilePoint", "ProfileProgress", "SensitivitySearcher"]

_PROFILE_FILE = "sensitivity.json"
_BITS_FILE = "sensitivity_bits.json"  # the bits profile in a `save` folder
_RECORD_FILE = "profile.json"
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
    """Per-group accuracy profile and one threshold for widths; per-layer bits profile and an exact knapsack.

    Args:
        context: As every `Searcher` (its ``seed`` only affects the random hedges after the fixed candidates).
        steps: Profile grid: each group at ``k / steps`` of its channels (``k = 1 .. steps - 1``) and at its
            minimum. ``None`` (default) adapts to the evaluation budget (see the module docstring).
        profile_factor: With ``steps=None``, the width profile may cost at most this many times the evaluations
            asked for.
        profile_cache: A folder where profiles are kept across runs (with ``profile_key``); ``None``: only in
            ``run_dir``.
        profile_key: What makes two runs' evaluators score alike (a string or plain data); without it
            ``profile_cache`` is not used (a profile must never be reused for another base model or proxy).
        float_choice: Whether the bit allocation may also keep a layer's weights or input float (32 bits);
            default: only the space's bit choices (every layer quantized).
        quiet: No log lines (on stderr) about measuring or reusing the profiles.
    """

    name: ClassVar[str] = "sensitivity"
    searches: ClassVar[tuple[str, ...]] = ("widths", "bits", "both")

    def __init__(self, context: SearchContext, *, steps: int | None = None, profile_factor: float = 2.0,
                 profile_cache: str | Path | None = None, profile_key: str | Mapping[str, Any] | None = None,
                 float_choice: bool = False, quiet: bool = False) -> None:
        super().__init__(context)
        if steps is not None and not 2 <= steps <= 100:
            raise ConfigError(f"`2 <= steps <= 100` must hold (grid points per group), but got {steps=}")
        if not (math.isfinite(profile_factor) and profile_factor > 0):
            raise ConfigError(f"`profile_factor > 0` must hold, but got {profile_factor=}")
        self.steps = steps
        self.profile_factor = float(profile_factor)
        self.float_choice = bool(float_choice)
        self.quiet = bool(quiet)
        # group (or _FULL) -> width -> metrics of that profile point
        self.profile: dict[str, dict[int, dict[str, Any]]] = {}
        # layer (or _FULL) -> "w<b>" / "a<b>" (or "float") -> metrics
        self.bit_profile: Points = {}
        self.bit_options = bit_options(self.space, float_choice=self.float_choice)
        self.threshold: float | None = None
        self.one_shot_architecture: Architecture | None = None
        self._width_best: Architecture | None = None
        self.solve_seconds = 0.0
        self.profile_key = None if profile_key is None else canonical_key(profile_key)
        self.caches: dict[str, ProfileCache] = {}
        self.reused = {"widths": 0, "bits": 0}  # points taken from the cache folder
        self.measured = {"widths": 0, "bits": 0}  # points this searcher evaluated
        if self.run_dir is not None and (self.run_dir / _PROFILE_FILE).exists():
            self._load_profile(self.run_dir / _PROFILE_FILE)
        if self.run_dir is not None and (self.run_dir / _RECORD_FILE).exists():
            record = json.loads((self.run_dir / _RECORD_FILE).read_text())
            if isinstance(record.get("bits"), dict):
                self._load_bit_profile(record["bits"], self.run_dir / _RECORD_FILE)
        if profile_cache is not None and self.profile_key is not None:
            self._open_caches(Path(profile_cache))
        elif profile_cache is not None:
            self._log(f"profile_cache {profile_cache} given without a profile_key: the profile is not shared")

    def _log(self, message: str) -> None:
        if not self.quiet:
            print(f"sensitivity: {message}", file=sys.stderr, flush=True)

    def _progress(self, total: int, description: str) -> ProfileProgress:
        """A bar with an ETA over the profile points being measured (nothing when quiet or none is pending)."""
        return ProfileProgress(total, f"sensitivity: {description}", enabled=not self.quiet and total > 0)

    # the cache ------------------------------------------------------------------------------------------------
    def _open_caches(self, folder: Path) -> None:
        """Open the cache file of each profile this search needs and take the points it holds."""
        assert self.profile_key is not None
        model = self.space.model_name
        if self.searches_widths:
            cache = ProfileCache(folder, "widths", self.profile_key,
                                 {"model": model, "decisions": {d.name: d.size for d in self.space.decisions}})
            self.caches["widths"] = cache
            for group, per in cache.load().items():
                for width, metrics in per.items():
                    if int(width) not in self.profile.setdefault(group, {}):
                        self.profile[group][int(width)] = metrics
                        self.reused["widths"] += 1
        if self.searches_bits:
            cache = ProfileCache(folder, "bits", self.profile_key,
                                 {"model": model, "layers": self.space.quantizable_layers,
                                  "widths": self.space.full().widths})
            self.caches["bits"] = cache
            for layer, per in cache.load().items():
                for key, metrics in per.items():
                    if key not in self.bit_profile.setdefault(layer, {}):
                        self.bit_profile[layer][key] = metrics
                        self.reused["bits"] += 1

    # the width profile ----------------------------------------------------------------------------------------
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
        if "widths" in self.caches:
            self.caches["widths"].merge({point.group: {str(point.width): dict(metrics)}})
        if self.run_dir is not None:
            self._write_profile(self.run_dir / _PROFILE_FILE)
            self._write_record()

    def _evaluate_points(self, architectures: list[Architecture]) -> list[dict[str, Any]]:
        """Profile evaluations (outside the history), as many at once as the evaluator has workers."""
        many = getattr(self.evaluator, "evaluate_many", None)
        if many is not None:
            return [m.to_dict() for m in many(architectures)]
        return [self.evaluator.evaluate(a).to_dict() for a in architectures]

    def _measure_profile(self) -> None:
        """Evaluate the pending points, as many at once as the evaluator has workers (`Searcher.batch_size`)."""
        pending = self.pending_profile()
        self._log_profile("width", len(self.profile_plan()), len(pending), "widths")
        self._measure(pending, self.record_profile, "widths")
        if self.run_dir is not None and (pending or not (self.run_dir / _PLOT_FILE).exists()):
            self.plot_profile(self.run_dir / _PLOT_FILE)

    def _log_profile(self, what: str, planned: int, pending: int, kind: str) -> None:
        cache = self.caches.get(kind)
        source = f" ({self.reused[kind]} points reused from {cache.path})" if cache and self.reused[kind] else ""
        if pending == 0:
            self._log(f"{what} profile: all {planned} points known{source}; no evaluation for the profile"
                      + (" (reused)" if source else ""))
        else:
            self._log(f"{what} profile: measuring {pending} of {planned} points{source}")

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

    # the bits profile -----------------------------------------------------------------------------------------
    def bit_profile_plan(self) -> list[BitProfilePoint]:
        """Every point of the bits profile (full widths), the float network first (`agents.bit_profile`)."""
        return bit_profile_plan(self.space, self.bit_options)

    def pending_bit_profile(self) -> list[BitProfilePoint]:
        """The bits profile points not measured yet (independent of each other)."""
        return [p for p in self.bit_profile_plan() if p.key not in self.bit_profile.get(p.layer, {})]

    def record_bit_profile(self, point: BitProfilePoint, metrics: Mapping[str, Any]) -> None:
        """Store one bits profile measurement (in the cache folder and ``RUN_DIR/profile.json`` when given)."""
        self.bit_profile.setdefault(point.layer, {})[point.key] = dict(metrics)
        if "bits" in self.caches:
            self.caches["bits"].merge({point.layer: {point.key: dict(metrics)}})
        if self.run_dir is not None:
            self._write_record()

    def _measure_bit_profile(self) -> None:
        pending = self.pending_bit_profile()
        self._log_profile("bits", len(self.bit_profile_plan()), len(pending), "bits")
        self._measure(pending, self.record_bit_profile, "bits")

    def _measure(self, pending: Sequence[Any], record: Callable[[Any, Mapping[str, Any]], None], kind: str) -> None:
        """Evaluate ``pending`` profile points (`ProfilePoint` or `BitProfilePoint`), as many at once as the
        evaluator has workers (`Searcher.batch_size`), each recorded as it finishes."""
        with self._progress(len(pending), "width profile" if kind == "widths" else "bits profile") as bar:
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start : start + self.batch_size]
                for point, metrics in zip(chunk, self._evaluate_points([p.architecture for p in chunk]),
                                          strict=True):
                    record(point, metrics)
                    self.measured[kind] += 1
                    bar.update(point, metrics)

    def bit_drops(self, factors: Mapping[str, tuple[float, float]] | None = None) -> dict[str, dict[Any, float]]:
        """Per layer with a choice, the drop of each ``(weight, activation)`` option (`agents.bit_profile`)."""
        return bit_drops(self.bit_profile, self.bit_options, factors)

    def allocate(self, widths: Architecture, factors: Mapping[str, tuple[float, float]] | None = None
                 ) -> Architecture:
        """``widths`` with the bits of least summed drop within the size and BOPs limits (narrowed first, with
        ``search="both"``, when even the lowest bits are over them)."""
        if self.search_mode == "both":
            widths = shrink_to_lowest_bits(self.space, Architecture(dict(widths.widths)), self.budget.size_bits,
                                           self.budget.bops)
        start = time.perf_counter()
        arch = allocate_bits(self.space, widths, self.budget, self.bit_drops(factors), float_choice=self.float_choice)
        self.solve_seconds += time.perf_counter() - start
        return arch

    def one_shot(self) -> Architecture:
        """The profiles' answer, without evaluating anything: the threshold's widths (``"widths"``), the exact
        bit allocation at full widths (``"bits"``) or at the threshold's widths (``"both"``)."""
        if self.searches_widths:
            self._width_best = self.sensitivity_architecture()
        if self.search_mode == "widths":
            assert self._width_best is not None
            arch = self._width_best
        else:
            arch = self.allocate(self._width_best if self._width_best is not None else self.space.full())
        self.one_shot_architecture = arch
        return arch

    def missing_for_one_shot(self) -> int:
        """Evaluations the profiles still need before `one_shot` (the width profile: its coarsest grid)."""
        missing = len(self.pending_bit_profile()) if self.searches_bits else 0
        if self.searches_widths:
            missing += sum(p.width not in self.profile.get(p.group, {}) for p in self.profile_plan(_AUTO_STEPS[-1]))
        return missing

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

    def _fixed_plan(self, best: Architecture) -> list[tuple[Architecture, bool]]:
        """The fixed candidates in order, each with whether its bits are still to be allocated."""
        if self.search_mode == "widths":
            return [(a, False) for a in self._fixed_candidates(best)]
        size, bops = self.budget.size_bits, self.budget.bops
        if self.search_mode == "bits":
            return [(best, False), (uniform_bits_architecture(self.space, self.space.full(), size, bops), False)]
        assert self._width_best is not None
        uniform = uniform_bits_architecture(self.space, uniform_architecture(self.space, self.budget.flops), size,
                                            bops)
        return [(best, False), (uniform, False), *((a, True) for a in self._fixed_candidates(self._width_best)[2:])]

    def _hedge(self, best: Architecture, index: int) -> Architecture:
        """The random hedge for history index ``index`` (a generator per index, so batching changes nothing)."""
        if self.search_mode != "widths":
            assert self.search_mode == "bits" or self._width_best is not None
            widths = self.space.full() if self.search_mode == "bits" else self._width_hedge(self._width_best, index)
            return self.allocate(widths, bit_factors(self.seed, index, self.space.quantizable_layers))
        return self._width_hedge(best, index)

    def _width_hedge(self, best: Architecture | None, index: int) -> Architecture:
        assert best is not None
        rng = np.random.default_rng([self.seed, 104729, index])
        factors = np.exp(rng.uniform(math.log(0.8), math.log(1.25), size=len(self.space)))
        return self._onto_budget({d.name: best.widths[d.name] * float(f)
                                  for d, f in zip(self.space.decisions, factors, strict=True)})

    def _run(self) -> None:
        if self.searches_widths:
            self._measure_profile()
        if self.searches_bits:
            self._measure_bit_profile()
        best = self.one_shot()
        if self.searches_bits:
            self._log(f"one-shot bit allocation solved in {self.solve_seconds:.2f} s")
        if self.run_dir is not None:
            self._write_record()
        done = {e.architecture.key() for e in self.history.entries}
        fixed = self._fixed_plan(best)
        while self.remaining:
            batch: list[Architecture] = []
            while fixed and len(batch) < min(self.remaining, self.batch_size):
                arch, needs_bits = fixed.pop(0)
                arch = self.allocate(arch) if needs_bits else arch
                if arch.key() not in done and arch.key() not in {a.key() for a in batch}:
                    batch.append(arch)
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
        """As `Searcher.result`, plus the threshold, the grid, the one-shot answer and the profiles' sizes, origins
        and files in ``extra``."""
        result = super().result()
        if self.one_shot_architecture is None and self.missing_for_one_shot() == 0:
            self.one_shot()  # a finished search reopened: its profiles are known, the answer costs a solve
        result.extra.update({
            "threshold": self.threshold,
            "steps": self.grid_steps() if self.n_evaluations else self.steps,
            "profile_evaluations": sum(len(v) for v in self.profile.values()),
            "bit_profile_evaluations": sum(len(v) for v in self.bit_profile.values()),
            "profile_measured": dict(self.measured),
            "profile_reused": dict(self.reused),
            "solve_seconds": self.solve_seconds,
        })
        if self.one_shot_architecture is not None:
            result.extra["one_shot"] = self.one_shot_architecture.to_dict()
        if self.run_dir is not None:
            result.extra["profile"] = str(self.run_dir / _PROFILE_FILE)
            result.extra["profile_plot"] = str(self.run_dir / _PLOT_FILE)
            result.extra["profile_record"] = str(self.run_dir / _RECORD_FILE)
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

    def _bit_profile_data(self) -> dict[str, Any]:
        return {"layers": self.space.quantizable_layers, "widths": "full", "points": self.bit_profile}

    def _write_profile(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self._profile_data(), indent=1) + "\n")

    def _write_record(self) -> None:
        """``RUN_DIR/profile.json``: the profiles this run used, where they came from, the one-shot answer."""
        assert self.run_dir is not None

        def origin(kind: str) -> dict[str, Any]:
            cache = self.caches.get(kind)
            return {"cache": str(cache.path) if cache else None, "reused": self.reused[kind],
                    "measured": self.measured[kind]}

        record: dict[str, Any] = {"searcher": self.name, "search": self.search_mode, "key": self.profile_key}
        if self.searches_widths:
            record["widths"] = {**origin("widths"), **self._profile_data(), "threshold": self.threshold}
        if self.searches_bits:
            record["bits"] = {**origin("bits"), **self._bit_profile_data(),
                              "options": {k: [list(p) for p in v] for k, v in self.bit_options.items()},
                              "solve_seconds": self.solve_seconds}
        if self.one_shot_architecture is not None:
            record["one_shot"] = self.one_shot_architecture.to_dict()
        atomic_write_text(self.run_dir / _RECORD_FILE, json.dumps(record, indent=1) + "\n")

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

    def _load_bit_profile(self, data: Mapping[str, Any], path: Path) -> None:
        if data.get("layers") != self.space.quantizable_layers:
            raise ValueError(f"{path} holds the bits profile of another network; use another run_dir")
        for layer, per in (data.get("points") or {}).items():
            for key, metrics in per.items():
                self.bit_profile.setdefault(layer, {})[key] = dict(metrics)

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
        """Write the profiles under ``path`` (they are also kept in ``run_dir`` as they are measured)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._write_profile(path / _PROFILE_FILE)
        if self.searches_bits:
            atomic_write_text(path / _BITS_FILE, json.dumps(self._bit_profile_data(), indent=1) + "\n")

    def restore(self, path: str | Path) -> None:
        """Load the profiles `save` wrote; profiled points are not evaluated again."""
        file = Path(path) / _PROFILE_FILE
        if not file.exists():
            raise FileNotFoundError(f"no saved {self.name} searcher under {path} (expected {file.name})")
        self._load_profile(file)
        bits = Path(path) / _BITS_FILE
        if self.searches_bits and bits.exists():
            self._load_bit_profile(json.loads(bits.read_text()), bits)


class ProfileProgress:
    """A tqdm bar on stderr, one step per measured profile point, showing where the last one was measured; a
    profile can take an hour on a CPU (redrawn rarely when stderr is a log file, not a terminal). Its last frame
    stays, saying how long the profile took."""

    def __init__(self, total: int, description: str, *, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, file=sys.stderr, unit="point", leave=True,
                            dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)

    def update(self, point: ProfilePoint | BitProfilePoint, metrics: Mapping[str, Any]) -> None:
        """One point measured: ``metrics`` are its scores."""
        if self.bar is not None:
            where = point.group if isinstance(point, ProfilePoint) else f"{point.layer} {point.key}"
            self.bar.set_postfix_str(f"{where}: acc={float(metrics['accuracy']):.3f}", refresh=False)
            self.bar.update(1)

    def __enter__(self) -> ProfileProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
