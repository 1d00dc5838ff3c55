"""The MUC service at one subdomain: finds the room a stanza is for, creates and ends rooms, answers
the service's and rooms' IQs, and writes what must be stored before anything is sent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from nitro.storage.errors import StorageError
from nitro.xmpp.jid import JID, InvalidJID
from plugins.muc import disco, mam, room_admin, room_chat
from plugins.muc.affiliation import Affiliation
from plugins.muc.history import Entry, parse_request
from plugins.muc.relay import IqRelay
from plugins.muc.room import Out, Result, Room, RoomLimits
from plugins.muc.store import JID_MAX, MucStore
from plugins.muc.xml import (
    DATA,
    DISCO_INFO,
    DISCO_ITEMS,
    MAM,
    MUC,
    MUC_ADMIN,
    MUC_OWNER,
    MUC_REQUEST,
    MUC_USER,
    PING,
    StanzaError,
    error_reply,
    iq_result,
    local_name,
    q,
)

log = logging.getLogger(__name__)

FLUSH_OUTS = 256  # stanzas (each to its recipients) a batch holds before it sends what it has

Sink = Callable[[Out], None]


@dataclass(frozen=True, slots=True)
class ServiceRules:
    domain: str  # the service's JID, e.g. conference.localhost
    server: str = ""  # the main domain: whose users may create rooms when creators = "local"
    name: str = "Chatrooms"
    creators: str = "anyone"  # "anyone" | "local"
    max_room_id_bytes: int = 128
    mam_default: int = 20
    mam_max: int = 100


class Service:
    def __init__(self, rules: ServiceRules, limits: RoomLimits, store: MucStore | None, sink: Sink) -> None:
        self.rules = rules
        self.limits = limits
        self.store = store
        self.deliver = sink
        # What the current batch sends, in order; an index names the archived message it waits for.
        self._outs: list[tuple[Out, int | None]] = []
        self._archive: list[tuple[Room, Entry, Element]] = []
        self.rooms: dict[str, Room] = {}
        self.relay = IqRelay()
        self.stored: set[str] = set()  # rooms that have a row in muc_rooms

    async def load(self) -> None:
        """The persistent rooms, with their configuration, affiliations and recent history."""
        if self.store is None:
            return
        for stored in await self.store.load_rooms():
            history = await self.store.recent(stored.jid, self.limits.history_max)
            self.rooms[stored.jid] = Room(
                stored.jid,
                self.limits,
                stored.config,
                stored.affiliations,
                subject=stored.subject,
                subject_from=stored.subject_from,
                history=history,
            )
            self.stored.add(stored.jid)
        log.info("%d persistent rooms loaded", len(self.rooms))

    # ---- dispatch ---------------------------------------------------------------------------------------

    def sink(self, out: Out) -> None:
        self._outs.append((out, None))

    async def handle(self, stanza: Element) -> None:
        await self.handle_many([stanza])

    async def handle_many(self, stanzas: list[Element]) -> None:
        """Stanzas that arrived together, in order; their archived messages are written in one
        transaction (a group commit: one fsync for a burst), and only then is anything sent."""
        for stanza in stanzas:
            await self._handle(stanza)
            if len(self._outs) >= FLUSH_OUTS:
                await self._flush()  # a join storm: send as it goes rather than hold a large room's presences
            await asyncio.sleep(0)  # the link keeps reading (health pings) while a batch is handled
        await self._flush()

    async def _flush(self) -> None:
        outs, archive = self._outs, self._archive
        self._outs, self._archive = [], []
        failed = False
        if archive and self.store is not None:
            try:
                await self.store.archive_many([(room.jid, entry) for room, entry, _stanza in archive])
            except StorageError:
                log.exception("the archive failed: %d messages refused", len(archive))
                failed = True
        if failed:
            failure = StanzaError("internal-server-error", "the message could not be archived", "wait")
            for room, entry, stanza in archive:
                if entry in room.history.entries:
                    room.history.entries.remove(entry)
                self.deliver(Out(error_reply(stanza, failure), [stanza.get("from", "")]))
        for out, waits_for in outs:
            if waits_for is None or not failed:
                self.deliver(out)

    async def _handle(self, stanza: Element) -> None:
        """One stanza from the server; a StanzaError becomes the error reply (never to an error)."""
        try:
            await self._dispatch(stanza)
        except StanzaError as error:
            if stanza.get("type") != "error":
                self.sink(Out(error_reply(stanza, error), [stanza.get("from", "")]))
        except StorageError:
            log.exception("storage failed; %s answered with an error", local_name(stanza.tag))
            if stanza.get("type") != "error":
                failure = StanzaError("internal-server-error", "storage unavailable", "wait")
                self.sink(Out(error_reply(stanza, failure), [stanza.get("from", "")]))

    async def _dispatch(self, stanza: Element) -> None:
        kind = local_name(stanza.tag)
        sender = stanza.get("from", "")
        try:
            to = JID.parse(stanza.get("to", ""))
            JID.parse(sender)
        except InvalidJID:
            raise StanzaError("jid-malformed", "bad address") from None
        if to.domain != self.rules.domain:
            raise StanzaError("item-not-found")
        if kind == "iq":
            await self._iq(stanza, sender, to)
        elif kind == "presence":
            await self._presence(stanza, sender, to)
        elif kind == "message":
            await self._message(stanza, sender, to)

    async def _apply(self, room: Room, result: Result, stanza: Element | None = None) -> None:
        """Store what changed, then send: an archived message is on disk before anyone sees it (its
        stanzas wait for the batch's archive transaction)."""
        waits_for: int | None = None
        if result.archive is not None and self.store is not None and stanza is not None:
            waits_for = len(self._archive)
            self._archive.append((room, result.archive, stanza))
        if self.store is not None:
            if result.gone or not room.config.persistent:
                if room.jid in self.stored:
                    await self.store.delete_room(room.jid)
                    self.stored.discard(room.jid)
            elif result.save_room or result.affiliations or room.jid not in self.stored:
                await self.store.save_room(
                    room.jid, room.config, room.subject, room.subject_from, room.affiliations
                )
                self.stored.add(room.jid)
        if result.gone:
            self.rooms.pop(room.jid, None)
        for out in result.outs:
            self._outs.append((out, waits_for))

    # ---- presence ---------------------------------------------------------------------------------------

    async def _presence(self, stanza: Element, sender: str, to: JID) -> None:
        kind = stanza.get("type")
        if to.local is None or kind in ("probe", "subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            return
        room_jid = str(to.bare)
        room = self.rooms.get(room_jid)
        if kind in ("unavailable", "error"):
            occupant = None if room is None else room.by_jid.get(sender)
            if room is not None and occupant is not None:
                # §7.14 leaving; an error bounced from the occupant's client: removed with 333 (§15.7)
                codes = [333] if kind == "error" else []
                await self._apply(
                    room, room.leave(occupant, stanza if kind == "unavailable" else None, codes)
                )
            return
        if kind is not None:
            raise StanzaError("bad-request", f"presence of type {kind!r}")
        if to.resource is None:
            raise StanzaError("jid-malformed", "join with room@service/nickname")  # §7.2.1
        occupant = None if room is None else room.by_jid.get(sender)
        if room is not None and occupant is not None:
            if occupant.nick == to.resource:
                await self._apply(room, room.update_presence(occupant, stanza))
            else:
                await self._apply(room, room.change_nick(occupant, to.resource, stanza))
            return
        request = parse_request(stanza.find(q("x", MUC)))
        bare = sender.split("/", 1)[0]
        created = False
        if room is None:
            room = self._create(room_jid, bare, locked=stanza.find(q("x", MUC)) is not None)
            created = True
        try:
            result = room.enter(sender, bare, to.resource, stanza, request, now=time.time(), created=created)
        except StanzaError:
            if created:
                self.rooms.pop(room_jid, None)
            raise
        await self._apply(room, result)

    def _create(self, room_jid: str, owner: str, *, locked: bool) -> Room:
        """§10.1: a new room, owned by its creator; locked until configured when the join asked for MUC."""
        local = room_jid.split("@", 1)[0]
        if len(local.encode()) > self.rules.max_room_id_bytes or len(room_jid) > JID_MAX:
            raise StanzaError(
                "not-acceptable", f"room names are at most {self.rules.max_room_id_bytes} bytes"
            )
        if self.rules.creators == "local" and owner.split("@", 1)[-1] != self.rules.server:
            raise StanzaError("not-allowed", "only users of this server create rooms")
        room = Room(room_jid, self.limits, affiliations={owner: Affiliation.OWNER}, locked=locked)
        self.rooms[room_jid] = room
        return room

    # ---- messages ---------------------------------------------------------------------------------------

    async def _message(self, stanza: Element, sender: str, to: JID) -> None:
        kind = stanza.get("type", "normal")
        if kind == "error" or to.local is None:
            return
        room = self.rooms.get(str(to.bare))
        if room is None:
            raise StanzaError("item-not-found", "no such room")
        if to.resource is not None:
            if kind == "groupchat":
                raise StanzaError("bad-request", "groupchat messages go to the room")  # §7.5
            await self._apply(room, room_chat.private(room, sender, to.resource, stanza))
            return
        if kind == "groupchat":
            await self._apply(room, room_chat.groupchat(room, sender, stanza, now=time.time()), stanza)
            return
        x = stanza.find(q("x", MUC_USER))
        if x is not None and (invite := x.find(q("invite", MUC_USER))) is not None:
            password = room.config.password if room.config.password_protected else None
            await self._apply(room, room_chat.invite(room, sender, invite, password))
            return
        if x is not None and (decline := x.find(q("decline", MUC_USER))) is not None:
            await self._apply(room, room_chat.decline(room, sender, decline))
            return
        form = stanza.find(q("x", DATA))
        if form is not None and _form_type(form) == MUC_REQUEST:
            await self._apply(room, room_chat.voice_request(room, sender, form))
            return
        raise StanzaError("bad-request", "send groupchat messages, invitations or voice requests")

    # ---- IQ ---------------------------------------------------------------------------------------------

    async def _iq(self, iq: Element, sender: str, to: JID) -> None:
        kind = iq.get("type")
        if kind not in ("get", "set"):
            if to.resource is not None and (answer := self.relay.back(iq)) is not None:
                self.sink(answer)
            return
        if len(iq) != 1:
            raise StanzaError("bad-request", "an IQ has one payload")
        payload = iq[0]
        if to.local is None:
            self._service_iq(iq, kind, payload)
            return
        room = self.rooms.get(str(to.bare))
        if room is None:
            raise StanzaError("item-not-found", "no such room")
        if to.resource is not None:
            self.sink(self.relay.forward(room, iq, sender, to.resource))
            return
        tag = payload.tag
        if kind == "get" and tag == q("query", DISCO_INFO):
            self._reply(iq, disco.room_info(room))
        elif kind == "get" and tag == q("query", DISCO_ITEMS):
            self._reply(iq, disco.room_items())
        elif kind == "get" and tag == q("ping", PING):
            self._reply(iq, None)
        elif tag == q("query", MUC_ADMIN):
            if kind == "get":
                self._reply(iq, room_admin.admin_get(room, sender, payload))
            else:
                result = room_admin.admin_set(room, sender, payload)
                result.outs.insert(0, Out(iq_result(iq), [sender]))
                await self._apply(room, result)
        elif tag == q("query", MUC_OWNER):
            if kind == "get":
                self._reply(iq, room_admin.owner_get(room, sender))
            else:
                result = room_admin.owner_set(room, sender, payload)
                result.outs.insert(0, Out(iq_result(iq), [sender]))
                await self._apply(room, result)
        elif tag == q("query", MAM):
            await self._mam(room, iq, kind, sender, payload)
        else:
            raise StanzaError("service-unavailable")

    def _service_iq(self, iq: Element, kind: str, payload: Element) -> None:
        if kind == "get" and payload.tag == q("query", DISCO_INFO):
            self._reply(iq, disco.service_info(self.rules.name))
        elif kind == "get" and payload.tag == q("query", DISCO_ITEMS):
            self._reply(iq, disco.service_items(self.rooms.values()))
        elif kind == "get" and payload.tag == q("ping", PING):
            self._reply(iq, None)
        else:
            raise StanzaError("service-unavailable")

    async def _mam(self, room: Room, iq: Element, kind: str, sender: str, payload: Element) -> None:
        """XEP-0313 on the room JID: not for banned users, nor outsiders of a members-only room."""
        affiliation = room.affiliation(sender.split("/", 1)[0])
        if affiliation is Affiliation.OUTCAST:
            raise StanzaError("forbidden", "you are banned from this room")
        if room.config.members_only and affiliation is Affiliation.NONE:
            raise StanzaError("forbidden", "the archive of a members-only room is for members")
        if kind == "get":
            self._reply(iq, mam.fields_form())
            return
        query = mam.parse_query(payload, default_limit=self.rules.mam_default, max_limit=self.rules.mam_max)
        if self.store is None:
            entries, complete = list(room.history.entries)[-query.limit :], True
        else:
            page = await self.store.query(
                room.jid,
                start=query.start,
                end=query.end,
                after=query.after,
                before=query.before,
                last_page=query.last_page,
                limit=query.limit,
            )
            if page is None:
                raise StanzaError("item-not-found", "no archived message has that id")
            entries, complete = page.entries, page.complete
        for entry in entries:
            self.sink(Out(mam.result_message(room.jid, query.query_id, entry), [sender]))
        self._reply(iq, mam.fin(entries, complete))

    def _reply(self, iq: Element, payload: Element | None) -> None:
        self.sink(Out(iq_result(iq, payload), [iq.get("from", "")]))

    # ---- shutdown ---------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """§15.6 status 332: every occupant is told the service is going away."""
        for room in list(self.rooms.values()):
            for occupant in list(room.by_jid.values()):
                gone = room.presence_of(occupant, with_jid=False, codes=[110, 332], unavailable=True)
                self.deliver(Out(gone, [occupant.jid]))
                room.remove(occupant)


def _form_type(form: Element) -> str | None:
    for field in form.findall(q("field", DATA)):
        if field.get("var") == "FORM_TYPE":
            return field.findtext(q("value", DATA))
    return None
