"""What modules and the c2s layer may use of the server (`Core`) and of a bound session (`Session`).

Both are Protocols: the composition root (nitro/server.py) and the c2s session (nitro/c2s/session.py)
satisfy them, and nothing in core, c2s or the modules imports those concrete classes, so the layers form
no import circle. The session registry hands out `Resource` values; these protocols are the narrow rest.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from lxml import etree

from nitro.config import Config
from nitro.core.directory import SessionDirectory
from nitro.core.disco import DiscoRegistry
from nitro.core.events import EventBus
from nitro.core.hosts import HostTable
from nitro.core.logins import AccountLogins
from nitro.core.sessions import Resource
from nitro.core.slots import SlotRegistry, SlotValues
from nitro.core.throttle import FailureThrottle
from nitro.observe.metrics import Metrics
from nitro.storage import Storage
from nitro.storage.tiers import Tiers
from nitro.xmpp.errors import StreamError
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import SmState


class PeerInfo(Protocol):
    """What a module may know of the connection under a stream."""

    @property
    def peer_host(self) -> str: ...

    @property
    def encrypted(self) -> bool: ...

    @property
    def kind(self) -> str: ...


class Session(Protocol):
    """A bound client session as modules see the one a stanza came from (never another user's: those
    are `Resource` values, reached with `Core.deliver`)."""

    @property
    def id(self) -> str: ...

    @property
    def jid(self) -> JID: ...

    @property
    def username(self) -> str | None: ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    @property
    def slots(self) -> SlotValues: ...

    @property
    def resource(self) -> Resource: ...

    @property
    def transport(self) -> PeerInfo: ...

    @property
    def closed(self) -> bool: ...

    @property
    def detached(self) -> bool: ...

    @property
    def available(self) -> bool: ...

    @property
    def sm(self) -> SmState | None: ...

    @property
    def presence(self) -> etree._Element | None:
        """The last available presence, parsed anew at each read (None when unavailable)."""
        ...

    @presence.setter
    def presence(self, value: etree._Element | None) -> None: ...

    @property
    def presence_xml(self) -> bytes | None:
        """The last available presence as kept: `xmlwrite.self_contained` bytes (None when unavailable)."""
        ...

    @presence_xml.setter
    def presence_xml(self, value: bytes | None) -> None: ...

    @property
    def priority(self) -> int: ...

    @priority.setter
    def priority(self, value: int) -> None: ...

    @property
    def directed_to(self) -> frozenset[JID]: ...

    @directed_to.setter
    def directed_to(self, value: frozenset[JID]) -> None: ...

    @property
    def interested(self) -> bool: ...

    @interested.setter
    def interested(self, value: bool) -> None: ...

    def send(self, element: etree._Element) -> None:
        """To this session's client, through the outbound filters (e.g. CSI)."""

    def write_element(self, element: etree._Element) -> None:
        """To this session's client, past the outbound filters (a filter flushing what it held)."""

    def has_flag(self, flag: str) -> bool: ...

    def set_flag(self, flag: str, on: bool = True) -> None: ...

    def watch_flags(self, callback: Callable[[], None] | None) -> None: ...

    async def close(self, error: StreamError | None = None) -> None: ...


class SessionsView(Protocol):
    """The sessions registry (nitro/core/sessions.py) as the rest of the core reads it."""

    def resources(self, bare: JID) -> list[Resource]: ...

    def resource(self, full: JID) -> Resource | None: ...

    def online(self, bare: JID) -> bool: ...

    def available(self, bare: JID) -> bool: ...

    def get(self, full: JID) -> Session | None: ...

    def sessions_of(self, bare: JID) -> list[Session]: ...

    def __iter__(self) -> Iterator[Session]: ...

    def __len__(self) -> int: ...

    def add(self, session: Session) -> Session | None:
        """For the c2s layer: register a bound session; returns the one it replaces."""

    def remove(self, session: Session) -> None: ...


class Routing(Protocol):
    """The router (nitro/core/router.py) as modules use it."""

    async def route(self, stanza: etree._Element, origin: Session | None = None) -> None: ...

    async def send_iq(self, iq: etree._Element, timeout: float) -> etree._Element: ...


class Core(Protocol):
    """The server as modules and the c2s layer use it: a façade, not a service locator of everything."""

    @property
    def config(self) -> Config: ...

    @property
    def domain(self) -> str: ...

    @property
    def storage(self) -> Storage: ...

    @property
    def bus(self) -> EventBus: ...

    @property
    def router(self) -> Routing: ...

    @property
    def hosts(self) -> HostTable: ...

    @property
    def sessions(self) -> SessionsView: ...

    @property
    def disco(self) -> DiscoRegistry: ...

    @property
    def slots(self) -> SlotRegistry: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def directory(self) -> SessionDirectory | None: ...

    @directory.setter
    def directory(self, value: SessionDirectory | None) -> None: ...

    @property
    def tiers(self) -> Tiers | None: ...

    @property
    def tls_context(self) -> ssl.SSLContext | None: ...

    @property
    def auth_throttle(self) -> FailureThrottle: ...

    @property
    def negotiations(self) -> asyncio.Semaphore:
        """Slots for streams negotiating at once (`[c2s] max_negotiating`)."""

    @property
    def account_logins(self) -> AccountLogins:
        """Login turns per account (`[c2s] max_logins_per_account`, nitro/core/logins.py)."""

    def deliver(self, to: JID, stanza: etree._Element) -> bool:
        """The only way to reach another entity's session (nitro/core/delivery.py)."""

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background coroutine owned by the server (cancelled at shutdown)."""

    def track(self, stream: Any) -> None:
        """A connection's stream (negotiating, bound or detached), for shutdown and the metrics."""

    def untrack(self, stream: Any) -> None: ...

    def connection_task(self, task: asyncio.Task[Any]) -> None:
        """A connection's task: shutdown waits for it."""
