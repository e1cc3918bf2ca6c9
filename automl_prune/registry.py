"""Name -> lazy factory registries, so heavy dependencies load only when their entry is chosen."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from automl_prune.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; a factory may be a callable or a ``"module:attr"`` import path."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T] | str] = {}

    def register(self, name: str, factory: Callable[..., T] | str | None = None) -> Callable[..., T]:
        """Register ``factory`` under ``name``; usable as a decorator when ``factory`` is omitted."""
        if factory is not None:
            self._entries[name] = factory
            return factory  # type: ignore[return-value]

        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = fn
            return fn

        return decorator  # type: ignore[return-value]

    def get(self, name: str) -> Callable[..., T]:
        """The factory for ``name``; raises `UnknownNameError` with a suggestion otherwise."""
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        entry = self._entries[name]
        if isinstance(entry, str):
            module_name, attr = entry.split(":")
            entry = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = entry
        return entry

    def create(self, name: str, *args: object, **kwargs: object) -> T:
        """Build the entry named ``name``."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
