"""Searchers behind one interface: RL agents, Optuna, DMCP and baselines, created by name."""

from __future__ import annotations

from agents.base import (
    SEARCH_MODES,
    BudgetViolation,
    HistoryEntry,
    SearchContext,
    Searcher,
    SearchHistory,
    SearchResult,
)
from agents.bit_budget import project_bits, uniform_bits_architecture
from agents.budget import fill_budget, project_to_budget, uniform_architecture
from automl_prune.registry import Registry

__all__ = [
    "SEARCHERS",
    "SEARCH_MODES",
    "BudgetViolation",
    "HistoryEntry",
    "SearchContext",
    "SearchHistory",
    "SearchResult",
    "Searcher",
    "fill_budget",
    "project_bits",
    "project_to_budget",
    "uniform_architecture",
    "uniform_bits_architecture",
]

# Heavy dependencies (stable-baselines3, optuna) load only when their searcher is chosen.
# ``SEARCHERS.create(name, context, **options)`` builds one: a `SearchContext` and that searcher's own options.
SEARCHERS: Registry[Searcher] = Registry("agent")
SEARCHERS.register("uniform", "agents.baselines:UniformSearcher")
SEARCHERS.register("random", "agents.baselines:RandomSearcher")
SEARCHERS.register("ddpg", "agents.rl_ddpg:DDPGSearcher")
SEARCHERS.register("ppo", "agents.rl_ppo:PPOSearcher")
SEARCHERS.register("optuna", "agents.optuna_search:OptunaSearcher")
SEARCHERS.register("optuna-mo", "agents.optuna_mo:OptunaMOSearcher")
SEARCHERS.register("dmcp", "agents.dmcp:DMCPSearcher")
SEARCHERS.register("sensitivity", "agents.sensitivity:SensitivitySearcher")
SEARCHERS.register("global", "agents.global_threshold:GlobalThresholdSearcher")
