"""Search spaces: what a searcher decides (`SearchSpace`) and a point in it (`Architecture`)."""

from __future__ import annotations

from search_spaces.architecture import Architecture
from search_spaces.space import SearchSpace, WidthDecision

__all__ = ["Architecture", "SearchSpace", "WidthDecision"]
