"""Bounded tables of shared immutable values: one object per distinct key for the many holders of equal
values (roster items, group lists, flag sets), made once per key while kept; a full table is cleared whole."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Interned(Generic[K, V]):
    """`get(key)` is the value made from `key` by `make`, the same object each time while it is kept."""

    __slots__ = ("_kept", "_make", "_values")

    def __init__(self, make: Callable[[K], V], *, kept: int) -> None:
        self._make = make
        self._kept = kept
        self._values: dict[K, V] = {}

    def get(self, key: K) -> V:
        """Raises TypeError for an unhashable key (nothing kept)."""
        value = self._values.get(key)
        if value is None:
            value = self._make(key)
            if len(self._values) >= self._kept:
                self._values.clear()
            self._values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)
