"""One room's state (XEP-0045): occupants, affiliations, entering, presence changes, leaving; sans-IO.

Every handler returns a `Result`: the stanzas to send and what must be stored. Stanzas are built once
without 'to' and sent to a list of recipients, so a broadcast to a thousand occupants serialises once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree.ElementTree import Element, fromstring

from plugins.muc.affiliation import Affiliation, Role, default_role
from plugins.muc.history import Entry, History, HistoryRequest, select
from plugins.muc.nick import check_nick, nick_key
from plugins.muc.roomconfig import Limits, RoomConfig
from plugins.muc.xml import (
    CLIENT,
    DELAY,
    MUC,
    MUC_USER,
    OCCUPANT_ID,
    STANZA,
    StanzaError,
    make,
    q,
    renamespaced,
    sub,
)


@dataclass(frozen=True, slots=True)
class RoomLimits:
    """The service's rules every room follows (from [plugins.muc])."""

    max_nick_length: int = 64
    history_default: int = 20  # stanzas sent on entry when the client does not say
    history_max: int = 50  # hard cap of any history request, and what each room keeps in memory
    form: Limits = field(default_factory=Limits)
    salt: bytes = b"nitro-muc"  # keys the occupant-ids (XEP-0421 §4: stable, not guessable)


@dataclass(slots=True)
class Out:
    """A stanza (without 'to') for each of `recipients` (full JIDs)."""

    stanza: Element
    recipients: list[str]


@dataclass(slots=True)
class Result:
    outs: list[Out] = field(default_factory=list)
    save_room: bool = False  # config or subject changed (persistent rooms are written)
    affiliations: dict[str, Affiliation] = field(default_factory=dict)  # changed: bare JID -> new
    archive: Entry | None = None
    gone: bool = False  # the room ended (destroyed, or temporary and empty)

    def send(self, stanza: Element, recipients: Iterable[str]) -> None:
        targets = list(recipients)
        if targets:
            self.outs.append(Out(stanza, targets))


@dataclass(slots=True)
class Occupant:
    nick: str
    jid: str  # the real full JID
    bare: str
    role: Role
    occupant_id: str
    presence: list[Element] = field(default_factory=list)  # show, status, caps… of the client's presence


class Room:
    def __init__(
        self,
        jid: str,
        limits: RoomLimits,
        config: RoomConfig | None = None,
        affiliations: dict[str, Affiliation] | None = None,
        *,
        subject: str = "",
        subject_from: str = "",
        history: Iterable[Entry] = (),
        locked: bool = False,
    ) -> None:
        self.jid = jid
        self.limits = limits
        self.config = config or RoomConfig()
        self.affiliations: dict[str, Affiliation] = dict(affiliations or {})
        self.occupants: dict[str, Occupant] = {}  # nick_key -> occupant
        self.by_jid: dict[str, Occupant] = {}  # real full JID -> occupant
        self.subject = subject
        self.subject_from = subject_from
        self.history = History(limits.history_max, history)
        self.locked = locked  # §10.1.3: a reserved room is locked until its owner configures it

    # ---- lookups ----------------------------------------------------------------------------------------

    def affiliation(self, bare: str) -> Affiliation:
        return self.affiliations.get(bare, Affiliation.NONE)

    def occupant_jid(self, occupant: Occupant) -> str:
        return f"{self.jid}/{occupant.nick}"

    def find_nick(self, nick: str) -> Occupant | None:
        return self.occupants.get(nick_key(nick))

    def owners(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a is Affiliation.OWNER)

    def occupant_id(self, bare: str) -> str:
        digest = hmac.new(self.limits.salt, f"{self.jid}\0{bare}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def sees_jids(self, occupant: Occupant) -> bool:
        return self.config.whois == "anyone" or occupant.role is Role.MODERATOR

    def everyone(self) -> list[str]:
        return list(self.by_jid)

    # ---- presence building ------------------------------------------------------------------------------

    def presence_of(
        self,
        occupant: Occupant,
        *,
        with_jid: bool,
        codes: Iterable[int] = (),
        unavailable: bool = False,
        role: Role | None = None,
        new_nick: str | None = None,
        reason: str = "",
        extra: Iterable[Element] = (),
    ) -> Element:
        """§7.2.3 and §7.14: the occupant's presence as the room reflects it, with muc#user item and codes."""
        presence = make(q("presence"), {"from": self.occupant_jid(occupant)})
        if unavailable:
            presence.set("type", "unavailable")
        else:
            for child in occupant.presence:
                presence.append(child)
        x = sub(presence, q("x", MUC_USER))
        item = sub(
            x,
            q("item", MUC_USER),
            {
                "affiliation": self.affiliation(occupant.bare).value,
                "role": (role or (Role.NONE if unavailable else occupant.role)).value,
            },
        )
        if with_jid:
            item.set("jid", occupant.jid)
        if new_nick is not None:
            item.set("nick", new_nick)
        if reason:
            sub(item, q("reason", MUC_USER), text=reason)
        for child in extra:
            x.append(child)
        for code in codes:
            sub(x, q("status", MUC_USER), {"code": str(code)})
        sub(presence, q("occupant-id", OCCUPANT_ID), {"id": occupant.occupant_id})
        return presence

    def broadcast_presence(
        self,
        result: Result,
        occupant: Occupant,
        self_codes: Iterable[int] = (),
        codes: Iterable[int] = (),
        *,
        unavailable: bool = False,
        role: Role | None = None,
        new_nick: str | None = None,
        reason: str = "",
    ) -> None:
        """The occupant's presence to everyone: real JID to those allowed to see it, 110 to the occupant."""
        codes = list(codes)
        seeing: list[str] = []
        blind: list[str] = []
        for other in self.by_jid.values():
            if other is occupant:
                continue
            (seeing if self.sees_jids(other) else blind).append(other.jid)
        own = sorted({110, *codes, *self_codes})
        for with_jid, status, recipients in (
            (True, codes, seeing),
            (False, codes, blind),
            (True, own, [occupant.jid]),
        ):
            if recipients:
                presence = self.presence_of(
                    occupant,
                    with_jid=with_jid,
                    codes=status,
                    unavailable=unavailable,
                    role=role,
                    new_nick=new_nick,
                    reason=reason,
                )
                result.send(presence, recipients)

    # ---- entering ---------------------------------------------------------------------------------------

    def check_entry(self, bare: str, nick: str, password: str | None) -> Role:
        """The §7.2 checks in the order Prosody makes them; the role to enter with, or the error."""
        affiliation = self.affiliation(bare)
        if self.locked and affiliation is not Affiliation.OWNER:
            raise StanzaError("item-not-found", "this room is locked until its owner configures it")
        if affiliation is Affiliation.OUTCAST:
            raise StanzaError("forbidden", "you are banned from this room")  # §7.2.7
        role = default_role(
            affiliation, moderated=self.config.moderated, members_only=self.config.members_only
        )
        if role is Role.NONE:
            raise StanzaError("registration-required", "this room is members-only")  # §7.2.6
        protected = self.config.password_protected and affiliation is not Affiliation.OWNER
        if protected and password != self.config.password:
            raise StanzaError("not-authorized", "a password is required to enter")  # §7.2.5
        taken = self.occupants.get(nick_key(nick))
        if taken is not None:
            raise StanzaError("conflict", "that nickname is in use")  # §7.2.9
        maximum = self.config.max_users or self.limits.form.max_users
        if len(self.by_jid) >= maximum and affiliation not in (Affiliation.OWNER, Affiliation.ADMIN):
            raise StanzaError("service-unavailable", "the room is full")  # §7.2.10
        return role

    def enter(
        self,
        jid: str,
        bare: str,
        nick: str,
        presence: Element,
        request: HistoryRequest,
        *,
        now: float,
        created: bool = False,
    ) -> Result:
        """§7.2: a new occupant; raises StanzaError when it may not enter."""
        nick = check_nick(nick, self.limits.max_nick_length)
        x = presence.find(q("x", MUC))
        password = None if x is None else (x.findtext(q("password", MUC)))
        role = self.check_entry(bare, nick, password)
        occupant = Occupant(nick, jid, bare, role, self.occupant_id(bare), client_payload(presence))
        result = Result()
        for other in self.by_jid.values():  # §7.2.3: existing occupants' presence first
            with_jid = self.config.whois == "anyone" or role is Role.MODERATOR
            result.send(self.presence_of(other, with_jid=with_jid), [jid])
        self.occupants[nick_key(nick)] = occupant
        self.by_jid[jid] = occupant
        self_codes = [110]
        if self.config.whois == "anyone":
            self_codes.append(100)  # §7.2.4: non-anonymous room
        if self.config.logging:
            self_codes.append(170)  # §7.2.12: discussions are logged
        if created:
            self_codes.append(201)  # §10.1.1: the room was created
        self.broadcast_presence(result, occupant, self_codes=self_codes)
        for entry in select(
            self.history.entries,
            request,
            now=now,
            default=self.limits.history_default,
            cap=self.limits.history_max,
        ):
            result.send(history_stanza(entry, self.jid), [jid])  # §7.2.15
        result.send(self.subject_message(), [jid])  # §7.2.16: the subject last, even when empty
        return result

    def subject_message(self) -> Element:
        message = make(q("message"), {"type": "groupchat", "from": self.subject_from or self.jid})
        sub(message, q("subject"), text=self.subject)
        return message

    # ---- while inside -----------------------------------------------------------------------------------

    def update_presence(self, occupant: Occupant, presence: Element) -> Result:
        """§7.7: a new show/status, reflected to everyone."""
        occupant.presence = client_payload(presence)
        result = Result()
        self.broadcast_presence(result, occupant)
        return result

    def change_nick(self, occupant: Occupant, nick: str, presence: Element) -> Result:
        """§7.6: unavailable with 303 and the new nick, then available under the new nick."""
        nick = check_nick(nick, self.limits.max_nick_length)
        taken = self.occupants.get(nick_key(nick))
        if taken is not None and taken is not occupant:
            raise StanzaError("conflict", "that nickname is in use")  # §7.6.3
        result = Result()
        self.broadcast_presence(
            result, occupant, codes=[303], unavailable=True, role=occupant.role, new_nick=nick
        )
        del self.occupants[nick_key(occupant.nick)]
        occupant.nick = nick
        occupant.presence = client_payload(presence)
        self.occupants[nick_key(nick)] = occupant
        self.broadcast_presence(result, occupant)
        return result

    def leave(self, occupant: Occupant, presence: Element | None = None, codes: Iterable[int] = ()) -> Result:
        """§7.14: an occupant leaves (or is removed); a temporary room ends when its last one leaves."""
        result = Result()
        extra = [] if presence is None else [c for c in presence if c.tag == q("status")]
        occupant.presence = extra
        self.broadcast_presence(result, occupant, codes=codes, unavailable=True)
        self.remove(occupant)
        result.gone = not self.by_jid and not self.config.persistent
        return result

    def remove(self, occupant: Occupant) -> None:
        self.occupants.pop(nick_key(occupant.nick), None)
        self.by_jid.pop(occupant.jid, None)


def client_payload(presence: Element) -> list[Element]:
    """What of a client's presence the room reflects: all but MUC elements and any occupant-id it forged
    (XEP-0421 §4: the service removes them)."""
    dropped = {q("x", MUC), q("x", MUC_USER), q("occupant-id", OCCUPANT_ID)}
    return [child for child in presence if child.tag not in dropped]


def history_stanza(entry: Entry, room: str) -> Element:
    """§7.2.15: an archived message with <delay/> (XEP-0203) stamped by the room."""
    stored = fromstring(entry.xml)  # noqa: S314 (our own archive rows, written by ElementTree)
    message = renamespaced(stored, CLIENT, STANZA)
    stamp = datetime.fromtimestamp(entry.stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sub(message, q("delay", DELAY), {"from": room, "stamp": stamp})
    return message
