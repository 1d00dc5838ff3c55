"""IQs to occupants (XEP-0045 §7.5 end, as Prosody and ejabberd do): relayed to the occupant's real JID
under the sender's room JID and a fresh id, and the answer relayed back; XEP-0410 self-pings are answered
by the room itself. Sans-IO: returns the stanza to send."""

from __future__ import annotations

import secrets
from xml.etree.ElementTree import Element

from plugins.muc.room import Out, Room
from plugins.muc.xml import PING, StanzaError, iq_result, make, q

VCARD = "{vcard-temp}vCard"  # vCards belong to the bare JID (XEP-0054), so they are asked of it
MAX_PENDING = 10_000  # relayed IQs awaiting an answer; the oldest is forgotten past this


class IqRelay:
    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        # relayed id -> (asker's real JID, asker's id, target's room JID)
        self.pending: dict[str, tuple[str, str, str]] = {}

    def forward(self, room: Room, iq: Element, sender: str, nick: str) -> Out:
        """An IQ get/set from an occupant to room@service/nick."""
        asker = room.by_jid.get(sender)
        if asker is None:
            raise StanzaError("not-acceptable", "you are not in this room")  # XEP-0410 §3.2 as well
        target = room.find_nick(nick)
        if target is None:
            raise StanzaError("item-not-found", "no occupant has that nickname")
        payload = iq[0]
        if payload.tag == q("ping", PING) and target is asker:
            return Out(iq_result(iq), [sender])  # XEP-0410 §3.3: the room answers a self-ping
        relayed_id = secrets.token_hex(8)
        copy = make(
            q("iq"), {"type": iq.get("type", "get"), "id": relayed_id, "from": room.occupant_jid(asker)}
        )
        copy.append(payload)
        if len(self.pending) >= self.limit:
            del self.pending[next(iter(self.pending))]
        self.pending[relayed_id] = (sender, iq.get("id", ""), room.occupant_jid(target))
        to = target.bare if payload.tag == VCARD else target.jid
        return Out(copy, [to])

    def back(self, iq: Element) -> Out | None:
        """A result or error to a relayed IQ: to the asker, from the target's room JID; None if unknown."""
        known = self.pending.pop(iq.get("id", ""), None)
        if known is None:
            return None
        asker, asker_id, target = known
        answer = make(q("iq"), {"type": iq.get("type", "result"), "id": asker_id, "from": target})
        for child in iq:
            answer.append(child)
        return Out(answer, [asker])
