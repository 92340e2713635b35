"""Explicit name -> builder tables for pluggable components.

Each entry pairs a builder with the dataclass describing its config, so a config node naming the
entry can be checked field by field before anything is built. Names are looked up exactly: no
substring or prefix matching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    config_class: type | None  # None: the entries share one config (e.g. eval tasks)
    build: Callable[..., T]


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_class: type | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(build: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, config_class, build)
            return build

        return decorate

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Entry[T]]]:
        """Every entry, in the order they were registered."""
        return list(self._entries.items())

    def __contains__(self, name: Any) -> bool:
        return name in self._entries
