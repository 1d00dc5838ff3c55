"""The hosts-table entry of one configured plugin: registered at start-up, up while its link is."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from lxml import etree

from nitro.config_sections import PluginSection
from nitro.core.hosts import component_down
from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_external
from nitro.xmpp.jid import JID


class Link(Protocol):
    """What a plugin host needs of its connection: write one element in the component namespace."""

    def send(self, element: etree._Element) -> Awaitable[None]: ...


class PluginHost:
    """A `ComponentHost` (nitro/core/hosts.py) for `[plugins.NAME]`: stanzas for its subdomain go to the link
    that authenticated for it; with no link the sender gets `service-unavailable` (type wait)."""

    def __init__(self, entry: PluginSection) -> None:
        self.entry = entry
        self.domain = JID.parse(entry.subdomain).domain
        self.link: Link | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def available(self) -> bool:
        return self.link is not None

    async def deliver(self, stanza: etree._Element) -> None:
        link = self.link
        if link is None:
            raise component_down(self.domain)
        try:
            await link.send(to_external(stanza, ns.COMPONENT))
        except ConnectionError as exc:  # the link went down under this stanza
            raise component_down(self.domain) from exc

    def __repr__(self) -> str:
        return f"<PluginHost {self.name} {self.domain} {'up' if self.available else 'down'}>"
