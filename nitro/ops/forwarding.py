"""Stanzas the old process of an upgrade sends to its successor: those for a session that moved, and those
it would store offline (the user is, or will be, on the successor)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.core.router import StanzaEvent
from nitro.ops.adopt import FORWARDED
from nitro.ops.handover import Channel, HandoverError
from nitro.xmpp.jid import JID

if TYPE_CHECKING:
    from nitro.server import Server

log = logging.getLogger(__name__)


def forwarder(
    server: Server, channel: Channel, to: str, kept: list[etree._Element]
) -> Callable[[etree._Element], None]:
    """Stanzas for a session that moved: sent after it (same socket, in order), and kept until the drain
    ends (if the successor dies meanwhile, they go back into the session's queue here)."""

    def forward(element: etree._Element) -> None:
        kept.append(element)
        stanza = etree.tostring(element, encoding="unicode")
        server.spawn(_send_quietly(channel, {"type": "deliver", "to": to, "stanza": stanza}))

    return forward


def to_successor(server: Server, channel: Channel) -> Callable[[JID, str], bool]:
    """A cluster delivery for a resource not in this process (during the drain): the successor may hold it
    (a client that logged in there); it delivers, or routes it as undeliverable (RFC 6121 §8)."""

    def forward(to: JID, xml: str) -> bool:
        server.spawn(_send_quietly(channel, {"type": "deliver", "to": str(to), "stanza": xml}))
        return True

    return forward


def offline_to(channel: Channel) -> Callable[[StanzaEvent], Awaitable[bool]]:
    """A `message/offline` handler: the message goes to the successor, unless it came from there."""

    async def to_successor(event: StanzaEvent) -> bool:
        if event.to is None or FORWARDED.get():
            return False  # it came from the successor: stored here
        stanza = etree.tostring(event.stanza, encoding="unicode")
        try:
            await channel.send({"type": "deliver", "to": str(event.to), "stanza": stanza})
        except HandoverError:
            return False
        return True

    return to_successor


async def _send_quietly(channel: Channel, message: dict[str, Any]) -> None:
    try:
        await channel.send(message)
    except HandoverError as exc:
        log.warning("upgrade: a forwarded stanza could not be sent: %s", exc)
