"""A tiny name -> object registry, one per extension point.

Steps, segmenters and scores register themselves with a decorator in the
module that defines them; the package ``__init__`` imports those modules, and
third-party packages can add entries through the entry-point group named by
the registry (e.g. ``opsef_opt.segmenters``), loaded on first lookup.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Maps names to registered objects, with helpful errors on unknown names."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._group = entry_point_group
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as a decorator."""

        def deco(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return deco(obj) if obj is not None else deco

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self._group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise ``KeyError`` naming the choices."""
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load_plugins()
        return sorted(self._items.items())

