"""The registration API of IM modules: hooks, disco features and identities, all undone on unload."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from lxml import etree

from nitro.core.disco import Identity
from nitro.core.events import (
    DEFAULT_FILTER_TIMEOUT,
    EventKey,
    FailurePolicy,
    Filterable,
    FilterHandler,
    Handler,
)
from nitro.core.events import AccountEvent as AccountEvent  # re-exported: it used to live here
from nitro.core.hosts import Host
from nitro.core.slots import Slot, SlotValues
from nitro.xmpp.jid import JID

if TYPE_CHECKING:
    from nitro.core.context import Core, Session

P = TypeVar("P")
F = TypeVar("F", bound=Filterable)

# The built-in modules, in load order; `[modules].disabled` in the config removes some.
BUILTIN_MODULES: tuple[str, ...] = (
    "disco",
    "roster",
    "presence",
    "message",
    "offline",
    "ping",
    "version",
    "time",
    "legacy_session",
    "register",
    "admin_commands",
    "mam",
    "carbons",
    "csi",
    "blocking",
    "stream_management",
    "pep",
    "vcard",
    "private",
    "last",
    "directory",
    "cluster_resume",
)


@dataclass(slots=True)
class SessionEvent:
    """Payload of `resource-bind` and `resource-unbind` (the session is bound, or was)."""

    session: Session


@dataclass(slots=True)
class NonzaEvent:
    """Payload of `c2s-nonza/<ns>:<name>`: a top-level non-stanza element from an established client."""

    session: Session
    element: etree._Element


class PeerInfo(Protocol):
    """What a module may know of the connection under a stream."""

    @property
    def peer_host(self) -> str: ...

    @property
    def encrypted(self) -> bool: ...


class UnboundStream(Protocol):
    """A client stream before binding, as modules see it (stream features, in-band registration)."""

    @property
    def authenticated(self) -> bool: ...

    @property
    def may_negotiate(self) -> bool: ...

    @property
    def transport(self) -> PeerInfo: ...

    @property
    def slots(self) -> SlotValues: ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]: ...

    def send(self, element: etree._Element) -> None: ...


@dataclass(slots=True)
class StreamFeaturesEvent:
    """Payload of `stream-features`: handlers append their feature elements to `features`."""

    stream: UnboundStream
    features: etree._Element


@dataclass(slots=True)
class UnauthenticatedIq:
    """Payload of `c2s-unauthenticated/iq-<type>/<ns>:<name>`: an IQ before login (in-band registration)."""

    stream: UnboundStream
    stanza: etree._Element


@dataclass(slots=True)
class ResumeRequest:
    """Payload of `sm-resume`: a stream authenticated as `user` asks for `previd`; a handler sets `found`."""

    previd: str
    user: JID
    found: Session | None = None


@dataclass(slots=True)
class UnackedStanzas:
    """Payload of `sm-ended`: a stream-managed session ended without resumption; `stanzas` are what the
    client never acknowledged, oldest first, to be treated as never delivered (XEP-0198 §4).
    """

    session: Session
    stanzas: list[etree._Element]


class Module:
    """One loaded feature module; every registration it makes is recorded and undone by `unload`."""

    def __init__(self, server: Core, name: str) -> None:
        self.server = server
        self.name = name
        self.log = logging.getLogger(f"nitro.modules.{name}")
        self._undo: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def domain(self) -> str:
        return self.server.config.server.domain

    @overload
    def hook(
        self, event: EventKey[P], handler: Callable[[P], Awaitable[bool | None]], priority: int = 0
    ) -> None: ...

    @overload
    def hook(self, event: str, handler: Handler, priority: int = 0) -> None: ...

    def hook(self, event: str | EventKey[Any], handler: Handler, priority: int = 0) -> None:
        self._undo.append(self.server.bus.add(event, handler, priority))

    def filter(
        self,
        key: EventKey[F],
        handler: FilterHandler[F],
        priority: int = 0,
        timeout: float = DEFAULT_FILTER_TIMEOUT,
        policy: FailurePolicy = FailurePolicy.OPEN,
    ) -> None:
        """A verdict filter (e.g. on `STANZA_FILTER`), removed when the module unloads."""
        self._undo.append(self.server.bus.add_filter(key, handler, priority, timeout, policy))

    def add_host(self, domain: str, host: Host) -> None:
        """Serve `domain` (e.g. a component's subdomain) until the module unloads."""
        self._undo.append(self.server.hosts.add(domain, host))

    def add_feature(self, var: str) -> None:
        self._undo.append(self.server.disco.add_feature(var))

    def add_identity(self, category: str, type_: str, name: str | None = None) -> None:
        self._undo.append(self.server.disco.add_identity(Identity(category, type_, name)))

    def add_slot(self, slot: Slot[Any]) -> None:
        """Declare per-session state this module keeps (exported and imported with the session)."""
        self._undo.append(self.server.slots.add(slot))

    def on_unload(self, callback: Callable[[], None]) -> None:
        self._undo.append(callback)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coroutine` as a task this module owns: cancelled when the module unloads; an exception it
        ends with is logged."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.error("a task of module %s failed", self.name, exc_info=error)

    async def stop(self) -> None:
        """Cancel the module's tasks and wait for them (at shutdown, before storage closes)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def unload(self) -> None:
        while self._undo:
            self._undo.pop()()
        for task in list(self._tasks):
            task.cancel()


def load_module(server: Core, name: str) -> Module:
    """Import `nitro.modules.<name>` and call its `load(module)`."""
    python_module = importlib.import_module(f"nitro.modules.{name}")
    module = Module(server, name)
    python_module.load(module)
    return module
