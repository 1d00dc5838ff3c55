"""The hosts table: which domain is served by what — the local IM host, a component link (XEP-0114 in the
plugin issue, or in-process), or a remote server (s2s, later). Domains come and go at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_external, to_internal
from nitro.xmpp.errors import StanzaError, StreamError
from nitro.xmpp.jid import JID, InvalidJID

log = logging.getLogger(__name__)

Undo = Callable[[], None]


@dataclass(frozen=True, slots=True)
class LocalHost:
    """The IM host of this server: its stanzas are routed by event names (nitro/core/router.py)."""

    domain: str


@dataclass(frozen=True, slots=True)
class RemoteHost:
    """A domain reached over server-to-server connections; s2s is not built yet, so nothing adds one and
    the router answers `remote-server-not-found` for domains it does not know (RFC 6120 §10.4.3)."""

    domain: str


class ComponentHost(Protocol):
    """A domain served by a component over a link: what the core needs from it.

    The router hands it stanzas in the internal content namespace (jabber:client); a link writes them with
    `to_external(stanza, "jabber:component:accept")`. `available` is False while the link is down: the
    sender then gets `service-unavailable` (type wait). `deliver` may raise StanzaError for the sender.
    """

    @property
    def domain(self) -> str: ...

    @property
    def available(self) -> bool: ...

    async def deliver(self, stanza: etree._Element) -> None: ...


Host = LocalHost | RemoteHost | ComponentHost


def component_down(domain: str) -> StanzaError:
    """RFC 6120 §8.3.3.19 with type wait, the answer Prosody gives for a component that is not connected."""
    return StanzaError("service-unavailable", f"the component serving {domain} is unavailable", type="wait")


class HostTable:
    """Domain → host. The local domain is always there; `add` returns the function that removes exactly
    that registration (like the event bus)."""

    def __init__(self, local_domain: str) -> None:
        self.local = LocalHost(local_domain)
        self._hosts: dict[str, Host] = {local_domain: self.local}

    def get(self, domain: str) -> Host | None:
        return self._hosts.get(domain)

    def add(self, domain: str, host: Host) -> Undo:
        """Serve `domain` by `host`; ValueError if the domain is not a valid domainpart or already served."""
        try:
            jid = JID.parse(domain)
        except InvalidJID as exc:
            raise ValueError(f"not a domain: {domain!r} ({exc})") from exc
        if jid.local is not None or jid.resource is not None:
            raise ValueError(f"not a domain: {domain!r}")
        name = jid.domain
        if name in self._hosts:
            raise ValueError(f"{name} is already served by {self._hosts[name]!r}")
        self._hosts[name] = host
        log.info("host %s added: %r", name, host)

        def remove() -> None:
            if self._hosts.get(name) is host:
                del self._hosts[name]
                log.info("host %s removed", name)

        return remove

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._hosts))

    def __len__(self) -> int:
        return len(self._hosts)


def check_component_from(domain: str, stanza: etree._Element) -> None:
    """XEP-0114 §3.1: a component sends only from its own domain; anything else is the stream error
    `invalid-from` (RFC 6120 §4.9.3.9), as Prosody's `validate_from_addresses` does."""
    sender = stanza.get("from")
    try:
        valid = sender is not None and JID.parse(sender).domain == domain
    except InvalidJID:
        valid = False
    if not valid:
        raise StreamError("invalid-from", f"a component of {domain} sent from {sender!r}")


StanzaCallback = Callable[[etree._Element], Awaitable[None]]


class InProcessComponent:
    """A component living in this process, shaped like a XEP-0114 link: it receives stanzas in
    `jabber:component:accept` and sends in it too (`send` checks 'from' and normalises the namespace).

    `route` is the router's entry (`server.router.route`); `handler` receives each stanza for the domain.
    """

    def __init__(self, domain: str, handler: StanzaCallback, route: StanzaCallback) -> None:
        self.domain = domain
        self._handler = handler
        self._route = route
        self.available = True

    def disconnect(self) -> None:
        """The link is gone; the domain stays registered (stanzas to it get service-unavailable)."""
        self.available = False

    async def deliver(self, stanza: etree._Element) -> None:
        if not self.available:
            raise component_down(self.domain)
        await self._handler(to_external(stanza, ns.COMPONENT))

    async def send(self, stanza: etree._Element) -> None:
        """A stanza from the component into the normal routing."""
        check_component_from(self.domain, stanza)
        await self._route(to_internal(stanza, ns.COMPONENT))

    def __repr__(self) -> str:
        return f"<InProcessComponent {self.domain} {'up' if self.available else 'down'}>"
