"""Typed errors. Anything raised from here is a user-facing problem: the CLI prints one line, exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["AutoMLPruneError", "BudgetError", "CheckpointError", "ConfigError", "DatasetNotFoundError",
           "InvalidArchitectureError", "TrainingDivergedError", "UnknownNameError", "did_you_mean"]


class AutoMLPruneError(Exception):
    """Base class of every error that is the user's input, not our bug."""


class UnknownNameError(AutoMLPruneError, KeyError):
    """A name (model, dataset, criterion, agent) that no registry knows."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        valid = sorted(valid)
        shown = valid if len(valid) <= 12 else [*valid[:12], f"... {len(valid) - 12} more"]
        message = f"unknown {kind} {name!r}; must be one of {shown}"
        hint = did_you_mean(name, valid)
        if hint:
            message += f" (did you mean {hint!r}?)"
        super().__init__(message)
        self.kind, self.name, self.valid = kind, name, valid

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DatasetNotFoundError(AutoMLPruneError):
    """The dataset's files are not where they should be."""


class CheckpointError(AutoMLPruneError):
    """A checkpoint that cannot be read, or that belongs to another model."""


class InvalidArchitectureError(AutoMLPruneError, ValueError):
    """An architecture that does not fit its search space."""


class BudgetError(AutoMLPruneError, ValueError):
    """A budget that no architecture in the space can meet, or that is not a valid fraction."""


class ConfigError(AutoMLPruneError, ValueError):
    """A bad value in a config file or on the command line."""


class TrainingDivergedError(AutoMLPruneError):
    """A fine-tune whose loss became NaN or infinite: nothing trained by it may be exported."""


def did_you_mean(name: str, valid: Iterable[str]) -> str | None:
    """The closest valid name, if one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None
