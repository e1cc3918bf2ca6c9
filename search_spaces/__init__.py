"""Search spaces: what a searcher decides (`SearchSpace`), a point in it (`Architecture`), and the limits a run
puts on it (`Budget`)."""

from __future__ import annotations

from search_spaces.architecture import Architecture
from search_spaces.budget import Budget
from search_spaces.space import SearchSpace, WidthDecision

__all__ = ["Architecture", "Budget", "SearchSpace", "WidthDecision"]
