"""Client State Indication (XEP-0352 v1.0): while a client says it is inactive, presence updates and
chat-state notifications for it wait (only the latest per sender), and go out in order once it is active.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from lxml import etree

from nitro.core.module import Module, NonzaEvent, StreamFeaturesEvent
from nitro.core.slots import Slot
from nitro.xmpp import ns
from nitro.xmpp.sm import parse_stanza
from nitro.xmpp.stanza import child

if TYPE_CHECKING:
    from nitro.core.context import Session

CSI = "urn:xmpp:csi:0"
CHATSTATES = "http://jabber.org/protocol/chatstates"  # XEP-0085
CARBONS = "urn:xmpp:carbons:2"  # XEP-0280
FORWARD = "urn:xmpp:forward:0"  # XEP-0297

# Past this many held stanzas everything held is written: an inactive client is not a memory sink.
MAX_HELD = 1000

_PRESENCE = f"{{{ns.CLIENT}}}presence"
_MESSAGE = f"{{{ns.CLIENT}}}message"
# What a chat-state notification may carry besides its state without becoming more than one (XEP-0085
# §5.5 threads; XEP-0334 hints; XEP-0359 ids; XEP-0203 delay): anything else, a body above all, is news.
_CHATSTATE_COMPANIONS = frozenset({"urn:xmpp:hints", "urn:xmpp:sid:0", ns.DELAY})
_THREAD = f"{{{ns.CLIENT}}}thread"

HoldKey = tuple[str, ...]


def _inner(message: etree._Element) -> tuple[str, etree._Element]:
    """A carbon copy (XEP-0280) is judged by the message it forwards; `direction` says whose side it is."""
    for direction in ("received", "sent"):
        inner = message.find(f"{{{CARBONS}}}{direction}/{{{FORWARD}}}forwarded/{_MESSAGE}")
        if inner is not None:
            return direction, inner
    return "in", message


def _peer(direction: str, message: etree._Element) -> str:
    """The other party of a conversation, whose chat state a message reports or makes stale."""
    return (message.get("to") if direction == "sent" else message.get("from")) or ""


def _chat_state_only(message: etree._Element) -> bool:
    """XEP-0085 standalone notification: a state and no content (in particular no <body/>)."""
    if message.get("type") == "error":
        return False
    states = 0
    for node in message:
        if not isinstance(node.tag, str):
            continue
        namespace = etree.QName(node).namespace
        if namespace == CHATSTATES:
            states += 1
        elif node.tag != _THREAD and namespace not in _CHATSTATE_COMPANIONS:
            return False
    return states > 0


class Holder:
    """The outbound filter of one session: holds back what an inactive client can do without (§3.2)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.inactive = False
        self.held: dict[HoldKey, etree._Element] = {}  # insertion order is sending order

    def dump(self) -> dict[str, Any]:
        held = [
            [list(key), etree.tostring(element, encoding="unicode")] for key, element in self.held.items()
        ]
        return {"inactive": self.inactive, "held": held}

    @classmethod
    def load(cls, data: dict[str, Any], session: Session) -> Holder:
        holder = cls(session)
        holder.inactive = bool(data.get("inactive", False))
        for key, text in data.get("held", ()):
            holder.held[tuple(str(part) for part in key)] = parse_stanza(str(text).encode())
        return holder

    def keep(self, element: etree._Element) -> bool:
        """The filter: False holds `element` back; everything not a presence update or a chat state passes."""
        if not self.inactive:
            return True
        key = self._hold_key(element)
        if key is None:
            return True
        self.held.pop(key, None)  # superseded: only the latest presence or chat state matters
        self.held[key] = copy.deepcopy(element)  # our own copy: the sender may reuse or move the original
        if len(self.held) > MAX_HELD:
            self.flush()
        return False

    def _hold_key(self, element: etree._Element) -> HoldKey | None:
        if element.tag == _PRESENCE:
            if element.get("type") not in (None, "unavailable"):
                return None  # subscriptions, probes and errors need an answer: never held
            return ("presence", element.get("from") or "")
        if element.tag != _MESSAGE:
            return None  # IQs and nonzas (XEP-0198 acks) always go out
        direction, message = _inner(element)
        peer = _peer(direction, message)
        if not _chat_state_only(message):
            # A message with content passes, and any held chat state of that conversation is stale now:
            # XEP-0085 §5.1 a message with a body means the sender is 'active' again.
            self.held.pop(("chatstate", direction, peer), None)
            return None
        return ("chatstate", direction, peer)

    def flush(self) -> None:
        """Write everything held, in the order it was (last) held, past the filters."""
        held, self.held = self.held, {}
        for element in held.values():
            self.session.write_element(element)


# The session's holder, an outbound filter from the first time the client goes inactive.
HOLDER: Slot[Holder] = Slot("csi", Holder, Holder.dump, Holder.load)


def holder(session: Session) -> Holder:
    return session.slots.get(HOLDER)


def load(module: Module) -> None:
    async def on_features(event: StreamFeaturesEvent) -> None:
        """§4.1: the feature is offered once the stream is authenticated."""
        if event.stream.authenticated:
            child(event.features, CSI, "csi")

    async def on_inactive(event: NonzaEvent) -> bool:
        """§4.2: no answer is sent; the stream began active (§5) and is inactive until the client says so."""
        holder(event.session).inactive = True
        return True

    async def on_active(event: NonzaEvent) -> bool:
        """§4.2, §5.1: active again, so what was held goes out now, before anything the client sends next."""
        current = event.session.slots.peek(HOLDER)
        if current is not None:
            current.inactive = False
            current.flush()
        return True

    def on_unload() -> None:
        for session in module.server.sessions:
            current = session.slots.pop(HOLDER)
            if current is not None:
                current.flush()

    module.add_slot(HOLDER)
    module.hook("stream-features", on_features)
    module.hook(f"c2s-nonza/{CSI}:inactive", on_inactive)
    module.hook(f"c2s-nonza/{CSI}:active", on_active)
    module.on_unload(on_unload)
