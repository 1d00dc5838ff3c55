"""What each session wants to hear from PEP (XEP-0163 §4.2): the `+notify` nodes of its caps (XEP-0115),
kept in its `pep` slot and as Resource flags, resolved by disco#info and cached by verification string.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.core.sessions import Resource
from nitro.core.slots import Slot
from nitro.xmpp import ns
from nitro.xmpp.jid import JID
from nitro.xmpp.pubsub import notify_interests, supported_hash, verification_string
from nitro.xmpp.stanza import child, stanza

if TYPE_CHECKING:
    from nitro.core.context import Core, Session

DISCO_TIMEOUT = 10.0  # seconds a client has to answer the disco#info query behind its caps
CAPS_CACHE_SIZE = 4096  # verified caps verification strings remembered with their +notify interests


@dataclass(slots=True)
class Interests:
    """What one session asked for (its `session.data['pep']`)."""

    nodes: frozenset[str] = frozenset()  # XEP-0163 §4.2: the nodes of its `+notify` features
    ver: str | None = None  # the caps verification string the nodes came from
    # local accounts it sent directed presence to: usually none, so a frozenset replaced on change (the empty
    # one shared) rather than a 216-byte set per session (idle memory)
    directed: frozenset[JID] = frozenset()


NOTIFY_FLAG = "pep+notify:"  # Resource flags "pep+notify:<node>": the resource wants the node's events


def wants(resource: Resource, node: str) -> bool:
    return resource.has(NOTIFY_FLAG + node)


def set_nodes(session: Session, state: Interests, nodes: frozenset[str]) -> None:
    """Record a session's +notify nodes, in its state and as flags of its Resource value."""
    for gone in state.nodes - nodes:
        session.set_flag(NOTIFY_FLAG + gone, False)
    for new in nodes - state.nodes:
        session.set_flag(NOTIFY_FLAG + new)
    state.nodes = nodes


def _dump_interests(state: Interests) -> dict[str, Any]:
    return {
        "nodes": sorted(state.nodes),
        "ver": state.ver,
        "directed": sorted(str(j) for j in state.directed),
    }


def _load_interests(data: dict[str, Any], _session: object) -> Interests:
    ver = data.get("ver")
    return Interests(
        frozenset(str(n) for n in data.get("nodes", ())),
        None if ver is None else str(ver),
        frozenset(JID.parse(str(jid)) for jid in data.get("directed", ())),
    )


INTERESTS: Slot[Interests] = Slot("pep", lambda _session: Interests(), _dump_interests, _load_interests)


def interests(session: Session) -> Interests:
    return session.slots.get(INTERESTS)


class CapsInterests:
    """The `+notify` nodes behind caps verification strings: verified ones cached, lookups shared."""

    def __init__(self, server: Core) -> None:
        self.server = server
        self.caps: collections.OrderedDict[str, frozenset[str]] = collections.OrderedDict()
        self.resolving: dict[str, asyncio.Future[frozenset[str] | None]] = {}

    async def resolve(self, session: Session, caps: etree._Element) -> frozenset[str] | None:
        """The `+notify` nodes behind caps: cached by verification string once the hash checks out
        (XEP-0115 §5.4), else asked of the session with disco#info (§6.2); None if that fails."""
        ver, hash_name = caps.get("ver") or "", caps.get("hash")
        cacheable = supported_hash(hash_name)
        if cacheable:
            if (known := self.caps.get(ver)) is not None:
                self.caps.move_to_end(ver)
                return known
            if (pending := self.resolving.get(ver)) is not None and (known := await pending) is not None:
                return known
        future: asyncio.Future[frozenset[str] | None] | None = None
        if cacheable and ver not in self.resolving:
            future = self.resolving[ver] = asyncio.get_running_loop().create_future()
        verified: frozenset[str] | None = None
        try:
            query = await self.disco_info(session, f"{caps.get('node') or ''}#{ver}")
            if query is None:
                return None
            found = notify_interests(query)
            if cacheable and verification_string(query, hash_name or "") == ver:
                verified = found
                self.caps[ver] = found
                while len(self.caps) > CAPS_CACHE_SIZE:
                    self.caps.popitem(last=False)
            return found  # unverified answers serve this session only
        finally:
            if future is not None:
                del self.resolving[ver]
                future.set_result(verified)

    async def disco_info(self, session: Session, node: str) -> etree._Element | None:
        iq = stanza("iq", type="get", from_=self.server.domain, to=str(session.jid))
        child(iq, ns.DISCO_INFO, "query", node=node)
        try:
            reply = await self.server.router.send_iq(iq, DISCO_TIMEOUT)
        except TimeoutError:
            session.log.info("no answer to the caps query for %s", node)
            return None
        if reply.get("type") != "result":
            return None
        return reply.find(f"{{{ns.DISCO_INFO}}}query")
