"""Typed per-module state on a session: a module declares a `Slot` and reads and writes its value through it.

Every slot says how its value becomes plain data (`dump`) and back (`load`), so a session's whole state
exports to JSON-able data and imports again (resumption elsewhere, a successor process). A slot whose value
is an `OutboundFilter` sees every element the session is about to send (e.g. CSI holding presence back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast, runtime_checkable

from lxml import etree

T = TypeVar("T")


@runtime_checkable
class OutboundFilter(Protocol):
    def keep(self, element: etree._Element) -> bool:
        """False holds the element back (the filter then owns it)."""


@dataclass(frozen=True, slots=True, eq=False)
class Slot(Generic[T]):
    """One module's state on a session. `load` gets the data and the session it is restored into."""

    name: str
    default: Callable[[Any], T]  # called with the session the first time the slot is read
    dump: Callable[[T], Any]  # to str/int/float/bool/None, lists and dicts of them
    load: Callable[[Any, Any], T]


class SlotRegistry:
    """The slots the loaded modules declared, by name: what `import` needs to rebuild values."""

    def __init__(self) -> None:
        self._slots: dict[str, Slot[Any]] = {}

    def add(self, slot: Slot[Any]) -> Callable[[], None]:
        if self._slots.get(slot.name, slot) is not slot:
            raise ValueError(f"two modules declare the session slot {slot.name!r}")
        self._slots[slot.name] = slot

        def remove() -> None:
            self._slots.pop(slot.name, None)

        return remove

    def get(self, name: str) -> Slot[Any] | None:
        return self._slots.get(name)


class SlotValues:
    """The slot values of one session."""

    __slots__ = ("_owner", "_values", "filters")

    def __init__(self, owner: object) -> None:
        self._owner = owner
        self._values: dict[Slot[Any], Any] = {}
        self.filters: tuple[OutboundFilter, ...] = ()  # the values that filter outbound elements

    def _changed(self) -> None:
        self.filters = tuple(value for value in self._values.values() if isinstance(value, OutboundFilter))

    def get(self, slot: Slot[T]) -> T:
        if slot not in self._values:
            self._values[slot] = slot.default(self._owner)
            self._changed()
        return cast(T, self._values[slot])

    def peek(self, slot: Slot[T]) -> T | None:
        """The value if the slot was ever set or read, else None (no default is made)."""
        return cast("T | None", self._values.get(slot))

    def set(self, slot: Slot[T], value: T) -> None:
        self._values[slot] = value
        self._changed()

    def pop(self, slot: Slot[T]) -> T | None:
        value = self._values.pop(slot, None)
        self._changed()
        return cast("T | None", value)

    def __iter__(self) -> Iterator[tuple[Slot[Any], Any]]:
        return iter(list(self._values.items()))

    def export(self) -> dict[str, Any]:
        return {slot.name: slot.dump(value) for slot, value in self._values.items()}

    def restore(self, data: dict[str, Any], registry: SlotRegistry) -> list[str]:
        """Load exported values; returns the names no loaded module declares (their state is dropped)."""
        unknown = []
        for name, value in data.items():
            slot = registry.get(name)
            if slot is None:
                unknown.append(name)
                continue
            self._values[slot] = slot.load(value, self._owner)
        self._changed()
        return unknown
