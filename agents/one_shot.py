"""The sensitivity searcher's one-shot answer from a cached profile, without evaluating anything.

The re-ranking ladder enters it beside the uniform answer whatever the searcher (`automl_prune.run.rerank_stage`):
free when an earlier run of the same base model, data and proxy left its profile in the cache folder
(`agents.profile_cache`); otherwise the ladder measures the profile's missing points first
(`agents.start.measure_one_shot`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.base import SearchContext
from agents.sensitivity import SensitivitySearcher
from search_spaces import Architecture, Budget, SearchSpace

__all__ = ["cached_one_shot"]


class _NoEvaluator:
    """Stands in for an evaluator where nothing may be evaluated (`cached_one_shot`)."""

    def evaluate(self, architecture: Architecture) -> Any:
        raise RuntimeError("cached_one_shot evaluates nothing")


def cached_one_shot(space: SearchSpace, budget: Budget, search: str, *, profile_cache: str | Path,
                    profile_key: str | Mapping[str, Any], float_choice: bool = False
                    ) -> tuple[Architecture | None, str]:
    """The sensitivity searcher's one-shot answer from a cached profile, evaluating nothing.

    Returns:
        The answer and where it came from, or ``None`` and why not (the profile is not cached, or only in
        part: computing it would cost the profile's evaluations).
    """
    searcher = SensitivitySearcher(SearchContext(space, _NoEvaluator(), budget, search=search),
                                   profile_cache=profile_cache, profile_key=profile_key, float_choice=float_choice,
                                   quiet=True)
    missing = searcher.missing_for_one_shot()
    if missing:
        kinds = " and ".join(k for k in ("widths", "bits") if k in searcher.caches)
        return None, (f"no complete cached sensitivity profile ({kinds}) for this base model, data and proxy in "
                      f"{profile_cache}: it would cost {missing} profile evaluations (run --agent sensitivity once "
                      "to measure it)")
    arch = searcher.one_shot()
    files = ", ".join(str(c.path) for c in searcher.caches.values())
    return arch, f"from the cached profile {files}, solved in {searcher.solve_seconds:.2f} s"
