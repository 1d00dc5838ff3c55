"""Presence fan-out alone, without sockets: CPU per copy of a broadcast and of a probe answer, as
nitro/modules/presence_copies.py makes them, through the real session registry, delivery and event bus.

    python -m integration.bench_fanout --contacts 50 --rounds 300

Each of `contacts` stub sessions serialises what it is sent as the TCP transport does (`serialize`); the
presence-recipients hook is blocking's veto (XEP-0191), every user's (empty) list cached as after a login.
Process CPU time, so other processes on the core matter less than to wall-clock rates (pin it: `taskset -c
0`). It prints figures and never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from lxml import etree

from nitro.core.delivery import Delivery
from nitro.core.events import PRESENCE_RECIPIENTS, EventBus
from nitro.core.sessions import Resource, Sessions
from nitro.modules.blocking import BlockLists
from nitro.modules.presence_copies import Copies
from nitro.storage.models import RosterItem
from nitro.xmpp.jid import JID
from nitro.xmpp.xmlwrite import self_contained, serialize

DOMAIN = "localhost"
PRESENCE = (
    b"<stream xmlns='jabber:client'><presence from='u0@localhost/r'><priority>5</priority>"
    b"<status>hello there</status><c xmlns='http://jabber.org/protocol/caps' hash='sha-1'"
    b" node='https://example.org/client' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence></stream>"
)


class StubSession:
    """A bound resource that writes what it is sent the way the TCP transport does, and forgets it."""

    def __init__(self, jid: JID, presence: etree._Element) -> None:
        self.jid = jid
        self.resource = Resource(jid, "local", True, 0, frozenset(), self_contained(presence))
        self.written = 0

    def send(self, element: etree._Element) -> None:
        self.written += len(serialize(element))


class StubServer:
    """What Copies and BlockLists ask of the server (nitro.core.context.Core), no more."""

    def __init__(self, sessions: Sessions[StubSession], bus: EventBus) -> None:
        self.sessions = sessions
        self.bus = bus
        self.domain = DOMAIN
        self.config = SimpleNamespace(cluster=SimpleNamespace(node=None))  # a single node
        self.deliver = Delivery(sessions).deliver
        self.router: Any = None  # copies are routed only with stanza filters, and there are none


def setup(contacts: int) -> tuple[Copies, Sessions[StubSession], etree._Element]:
    presence = copy.deepcopy(etree.fromstring(PRESENCE)[0])  # as the stream hands it over: detached
    sessions: Sessions[StubSession] = Sessions()
    for index in range(contacts + 1):
        sessions.add(StubSession(JID(f"u{index}", DOMAIN, "r"), presence))
    bus = EventBus()
    server = StubServer(sessions, bus)
    lists = BlockLists(server)  # type: ignore[arg-type]
    for index in range(contacts + 1):
        lists.cache[f"u{index}"] = frozenset()  # loaded at each user's bind
    bus.add(PRESENCE_RECIPIENTS, lists.veto)
    return Copies(server), sessions, presence  # type: ignore[arg-type]


async def measure(contacts: int, rounds: int) -> None:
    copies, sessions, presence = setup(contacts)
    user = JID("u0", DOMAIN, "r")
    items = tuple(RosterItem(f"u{index}@{DOMAIN}", subscription="both") for index in range(1, contacts + 1))
    answering = [sessions.get(JID(f"u{index}", DOMAIN, "r")) for index in range(1, contacts + 1)]
    resources = [session.resource for session in answering if session is not None]

    async def broadcast() -> None:
        _element, template = copies.remember(self_contained(presence), presence)  # as Presence does
        await copies.broadcast(user, presence, items, template)

    async def probe_answers() -> None:
        for resource in resources:
            await copies.send_current((resource,), user)

    cases: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
        ("broadcast", broadcast),
        ("probe answers", probe_answers),
    )
    for name, case in cases * 3:
        start = time.process_time()
        for _ in range(rounds):
            await case()
        per_copy = (time.process_time() - start) / rounds / contacts * 1e6
        print(f"{name:14s} {per_copy:6.2f} us of CPU per copy")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=50, help="contacts online (default 50)")
    parser.add_argument("--rounds", type=int, default=300, help="broadcasts and probe rounds (default 300)")
    args = parser.parse_args()
    asyncio.run(measure(args.contacts, args.rounds))


if __name__ == "__main__":
    main()
