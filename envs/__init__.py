"""envs."""

from __future__ import annotations
