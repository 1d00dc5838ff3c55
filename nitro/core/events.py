"""The event bus: typed event keys; `fire` (first claim wins), `notify` (every handler, each isolated) and
verdict filters (pass, drop with an error, replace) run in priority order under a per-filter timeout.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import enum
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar, overload

from lxml import etree

from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID

log = logging.getLogger(__name__)

P = TypeVar("P")
F = TypeVar("F", bound="Filterable")

# A handler returns True to say "handled, stop here"; None or False lets lower-priority handlers run.
Handler = Callable[[Any], Awaitable[bool | None]]  # the string-named API of the existing modules
Undo = Callable[[], None]

DEFAULT_FILTER_TIMEOUT = 2.0  # seconds; a filter is in every stanza's path, so it must answer quickly

_order = itertools.count()


@dataclass(frozen=True, slots=True)
class EventKey(Generic[P]):
    """A typed event name: `EventKey[AccountEvent]("account-deleted")` lets mypy check handler payloads.

    Keys and plain strings share one namespace: a module hooking the string `"account-deleted"` still
    receives what the core notifies with the typed key of the same name.
    """

    name: str


# -- verdicts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pass:
    """Let the stanza go on unchanged."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Stop the stanza; with an error, the sender gets that stanza error (RFC 6120 §8.3), else nothing."""

    error: StanzaError | None = None


@dataclass(frozen=True, slots=True)
class Replace:
    """Go on with `stanza` instead (later filters and the routing see the replacement)."""

    stanza: etree._Element


Verdict = Pass | Drop | Replace
PASS = Pass()


class FailurePolicy(enum.Enum):
    """What a filter that raises, times out or answers nonsense amounts to."""

    OPEN = "open"  # as if it had answered Pass(): availability first
    CLOSED = "closed"  # as if it had answered Drop(internal-server-error, wait): the filter's rule first


def failed_filter_error() -> StanzaError:
    """A fail-closed drop: RFC 6120 §8.3.3.6 `internal-server-error`, type `wait` since the cause (a slow or
    broken filter) is temporary and the sender may retry; Prosody and ejabberd answer an internal failure
    with the same condition."""
    return StanzaError("internal-server-error", "a stanza filter failed, try again later", type="wait")


class Filterable(Protocol):
    """A filter payload: carries a stanza, and makes its copy for a replacement."""

    @property
    def stanza(self) -> etree._Element: ...

    def with_stanza(self, stanza: etree._Element) -> Self: ...


FilterHandler = Callable[[F], Awaitable[Verdict]]


# -- payloads of the core's typed events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """Payload of `account-created` and `account-deleted`."""

    username: str


@dataclass(frozen=True, slots=True)
class RoutedStanza:
    """Payload of `stanza-filter`: a stanza the router is about to route (before the sender-side `pre-*`
    events). Filters must not mutate `stanza`: they answer `Replace(new)` instead.

    `origin` is the full JID of the client session that sent it; None when the server or a component did.
    """

    stanza: etree._Element
    from_: JID
    to: JID | None
    origin: JID | None

    def with_stanza(self, stanza: etree._Element) -> RoutedStanza:
        """The payload for a replacement (raises InvalidJID when the replacement's addresses are not JIDs)."""
        to = stanza.get("to")
        from_ = stanza.get("from")
        return dataclasses.replace(
            self,
            stanza=stanza,
            to=None if to is None else JID.parse(to),
            from_=self.from_ if from_ is None else JID.parse(from_),
        )


@dataclass(frozen=True, slots=True)
class RosterChange:
    """Payload of `roster-changed`: `username`'s item for `jid` now has `subscription` ("remove": gone)."""

    username: str
    jid: str
    subscription: str


@dataclass(slots=True)
class PresenceRecipients:
    """Payload of `presence-recipients`: the local JIDs a presence the server sends on `from_`'s behalf (a
    broadcast or a probe answer, RFC 6121 §4) is about to reach, each copy delivered without being routed.
    A handler removes the recipients that must not get it (e.g. XEP-0191 §3.3); `stanza` is not to be mutated.
    """

    stanza: etree._Element
    from_: JID
    recipients: list[JID]


ACCOUNT_CREATED: EventKey[AccountEvent] = EventKey("account-created")
ROSTER_CHANGED: EventKey[RosterChange] = EventKey("roster-changed")
ACCOUNT_DELETED: EventKey[AccountEvent] = EventKey("account-deleted")
STANZA_FILTER: EventKey[RoutedStanza] = EventKey("stanza-filter")
PRESENCE_RECIPIENTS: EventKey[PresenceRecipients] = EventKey("presence-recipients")


# -- the bus ----------------------------------------------------------------------------------------


@dataclass(order=True, slots=True)
class _Entry:
    sort_key: tuple[int, int]
    handler: Handler = field(compare=False)


@dataclass(order=True, slots=True)
class _FilterEntry:
    sort_key: tuple[int, int]
    handler: Callable[[Any], Awaitable[Any]] = field(compare=False)
    timeout: float = field(compare=False)
    policy: FailurePolicy = field(compare=False)


def _name(key: str | EventKey[Any]) -> str:
    return key if isinstance(key, str) else key.name


_E = TypeVar("_E", _Entry, _FilterEntry)


def _insert(table: dict[str, tuple[_E, ...]], name: str, entry: _E) -> None:
    """`entry` into `name`'s tuple, in priority order (a new tuple: fires under way keep theirs)."""
    entries = list(table.get(name, ()))
    bisect.insort(entries, entry)
    table[name] = tuple(entries)


def _remove(table: dict[str, tuple[_E, ...]], name: str, entry: _E) -> None:
    """Exactly `entry` out of `name`'s tuple (idempotent); the name goes with its last entry."""
    entries = tuple(other for other in table.get(name, ()) if other is not entry)
    if entries:
        table[name] = entries
    else:
        table.pop(name, None)


class EventBus:
    """Named events (`message/bare`, `iq-get/host/urn:xmpp:ping:ping`, ...) mapped to ordered handlers."""

    def __init__(self) -> None:
        # Tuples, replaced on every change: a fire runs over the handlers as they were, without a copy.
        self._handlers: dict[str, tuple[_Entry, ...]] = {}
        self._filters: dict[str, tuple[_FilterEntry, ...]] = {}

    @overload
    def add(
        self, key: EventKey[P], handler: Callable[[P], Awaitable[bool | None]], priority: int = 0
    ) -> Undo: ...

    @overload
    def add(self, key: str, handler: Handler, priority: int = 0) -> Undo: ...

    def add(self, key: str | EventKey[Any], handler: Handler, priority: int = 0) -> Undo:
        """Register `handler` (highest priority first); returns the function that removes exactly it."""
        name = _name(key)
        entry = _Entry((-priority, next(_order)), handler)
        _insert(self._handlers, name, entry)
        return functools.partial(_remove, self._handlers, name, entry)

    def has(self, key: str | EventKey[Any]) -> bool:
        return _name(key) in self._handlers

    @overload
    async def fire(self, key: EventKey[P], event: P) -> bool: ...

    @overload
    async def fire(self, key: str, event: object) -> bool: ...

    async def fire(self, key: str | EventKey[Any], event: object) -> bool:
        """Run the handlers in order; True as soon as one of them claims the event (its error propagates)."""
        entries = self._handlers.get(key if isinstance(key, str) else key.name)
        if not entries:
            return False
        for entry in entries:
            if await entry.handler(event):
                return True
        return False

    @overload
    async def notify(self, key: EventKey[P], event: P) -> None: ...

    @overload
    async def notify(self, key: str, event: object) -> None: ...

    async def notify(self, key: str | EventKey[Any], event: object) -> None:
        """Run every handler in order, whatever the others return or raise (a raising one is logged)."""
        name = _name(key)
        for entry in self._handlers.get(name, ()):
            try:
                await entry.handler(event)
            except Exception:
                log.exception("handler %r of %s failed; the others still run", entry.handler, name)

    # -- filters ------------------------------------------------------------------------------------

    def add_filter(
        self,
        key: EventKey[F],
        handler: FilterHandler[F],
        priority: int = 0,
        timeout: float = DEFAULT_FILTER_TIMEOUT,
        policy: FailurePolicy = FailurePolicy.OPEN,
    ) -> Undo:
        """Register a filter (highest priority first) answering a Verdict within `timeout` seconds."""
        if timeout <= 0:
            raise ValueError("a filter timeout must be positive")
        name = key.name
        entry = _FilterEntry((-priority, next(_order)), handler, timeout, policy)
        _insert(self._filters, name, entry)
        return functools.partial(_remove, self._filters, name, entry)

    def has_filters(self, key: EventKey[Any]) -> bool:
        return key.name in self._filters

    async def filter(self, key: EventKey[F], payload: F) -> Verdict:
        """Run the filters in order: the first Drop ends it; a Replace is what the next filter sees.

        Returns Pass() if nothing changed, Replace(final stanza) if some filter replaced it, or the Drop.
        """
        entries = self._filters.get(key.name)
        if not entries:
            return PASS
        replaced = False
        for entry in entries:
            verdict = await self._run_filter(key.name, entry, payload)
            if isinstance(verdict, Drop):
                return verdict
            if isinstance(verdict, Replace):
                try:
                    payload = payload.with_stanza(verdict.stanza)
                except Exception:
                    log.exception(
                        "filter %r of %s replaced the stanza with an unroutable one", entry.handler, key.name
                    )
                    verdict = _on_failure(entry.policy)
                    if isinstance(verdict, Drop):
                        return verdict
                    continue
                replaced = True
        return Replace(payload.stanza) if replaced else PASS

    @staticmethod
    async def _run_filter(name: str, entry: _FilterEntry, payload: object) -> Verdict:
        try:
            async with asyncio.timeout(entry.timeout):
                verdict = await entry.handler(payload)
        except TimeoutError:
            log.warning(
                "filter %r of %s took over %ss: fail-%s",
                entry.handler,
                name,
                entry.timeout,
                entry.policy.value,
            )
            return _on_failure(entry.policy)
        except Exception:
            log.exception("filter %r of %s failed: fail-%s", entry.handler, name, entry.policy.value)
            return _on_failure(entry.policy)
        if not isinstance(verdict, Pass | Drop | Replace):
            log.error(
                "filter %r of %s answered %r, not a verdict: fail-%s",
                entry.handler,
                name,
                verdict,
                entry.policy.value,
            )
            return _on_failure(entry.policy)
        return verdict


def _on_failure(policy: FailurePolicy) -> Verdict:
    return PASS if policy is FailurePolicy.OPEN else Drop(failed_filter_error())
