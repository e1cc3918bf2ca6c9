"""A sensitivity profile kept across runs: one JSON file per (profile key, kind, search space) in a cache folder.

A profile (`agents.sensitivity`) is the evaluator's score of points that each change one decision of the full
model; it does not depend on the budget. So runs of the same base model, data and proxy with other budgets
share it: the first run measures it, the next ones read it and evaluate nothing for it.

The file is named by a hash of its identity: the caller's ``key`` (what makes the evaluator's scores the same:
the pipeline passes the base model's hash, the data fingerprint, the criterion, the calibration and the proxy;
`automl_prune.run.search_stage.profile_options`), the profile's ``kind`` (``"widths"`` or ``"bits"``) and the
search space's decisions. A file whose recorded identity differs (a hash collision, a hand edit) is ignored.
Points are merged into the file as they are measured (atomically), so a killed run keeps what it measured and
two runs filling the same profile lose at most the points one of them wrote in between.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automl_prune.atomic import atomic_write_text

__all__ = ["PROFILE_FOLDER", "Points", "ProfileCache", "canonical_key"]

PROFILE_FOLDER = "sensitivity-profiles"
"""Subfolder of the cache folder that holds the profile files."""

#: ``group (or layer) -> point -> metrics``: how a profile is stored (point keys are strings).
Points = dict[str, dict[str, dict[str, Any]]]


def canonical_key(key: str | Mapping[str, Any]) -> str:
    """``key`` as one canonical string (a mapping as JSON with sorted keys)."""
    return key if isinstance(key, str) else json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


class ProfileCache:
    """The cache file of one profile.

    Args:
        folder: The cache folder (the files go to ``folder/sensitivity-profiles``).
        kind: ``"widths"`` or ``"bits"``.
        key: What makes two runs' evaluators score alike (see the module docstring).
        space: The search space's decisions the profile is of (plain data; part of the identity).
    """

    def __init__(self, folder: str | Path, kind: str, key: str | Mapping[str, Any], space: Mapping[str, Any]) -> None:
        self.identity = {"kind": kind, "key": canonical_key(key), "space": json.loads(json.dumps(space))}
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(folder) / PROFILE_FOLDER / f"{kind}-{digest}.json"

    def load(self) -> Points:
        """Every cached point (empty when there is no file, or it holds another identity or is unreadable)."""
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            warnings.warn(f"{self.path}: unreadable sensitivity profile ignored ({exc})", RuntimeWarning,
                          stacklevel=2)
            return {}
        if not isinstance(data, dict) or data.get("identity") != self.identity:
            return {}
        points = data.get("points")
        if not isinstance(points, dict):
            return {}
        return {str(g): {str(k): dict(m) for k, m in per.items()} for g, per in points.items() if isinstance(per, dict)}

    def merge(self, points: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """Add ``points`` to the file (points already there are kept; the file is rewritten atomically)."""
        merged = self.load()
        for group, per in points.items():
            target = merged.setdefault(group, {})
            for key, metrics in per.items():
                target.setdefault(key, dict(metrics))
        data = {"identity": self.identity, "points": merged}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
