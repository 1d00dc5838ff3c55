"""Last Activity (XEP-0012 v2.0): how long ago an account was last online (§4), and the server's uptime (§5).

The time and status of each account's last unavailable presence are stored; a query to a bare JID is
answered by the server, for the user and for contacts allowed to see the user's presence only.
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.module import Module, SessionEvent
from nitro.core.router import StanzaEvent
from nitro.core.slots import Slot
from nitro.modules.disco import DiscoEvent
from nitro.storage.errors import NoSuchAccount, StorageUnavailable
from nitro.storage.models import LastActivity
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import element, iq_result
from nitro.xmpp.subscription import state_of

if TYPE_CHECKING:
    from nitro.core.context import Session

LAST = "jabber:iq:last"
MAX_STATUS_CHARS = 1024  # of the last unavailable presence's <status/>, kept for §4's answer
# The <status/> of the unavailable presence being processed, from the presence hook to `record`.
STATUS: Slot[str] = Slot("last", lambda _session: "", lambda status: status, lambda data, _s: str(data))


def _unavailable() -> StanzaError:
    return StanzaError("internal-server-error", "last activity storage is unavailable", type="wait")


def _query(seconds: int, status: str = "") -> etree._Element:
    query = element(LAST, "query", seconds=str(max(seconds, 0)))
    if status:
        query.text = status  # §4: the status of the last unavailable presence
    return query


class LastActivityService:
    """Answers jabber:iq:last queries and records logouts."""

    def __init__(self, module: Module) -> None:
        self.server = module.server
        self.log = module.log
        self.store = module.server.storage.last
        self.started = time.monotonic()

    async def server_uptime(self, event: StanzaEvent) -> bool:
        """§5: to the server's JID, the seconds since it started."""
        await event.reply(iq_result(event.stanza, _query(int(time.monotonic() - self.started))))
        return True

    async def account(self, event: StanzaEvent) -> bool:
        """§4: to a bare JID (or none: one's own), answered by the server on the account's behalf."""
        owner = event.to.bare if event.to is not None else event.from_.bare
        assert owner.local is not None
        await self.check_allowed(owner, event.from_.bare)
        if await self.available(owner):
            await event.reply(iq_result(event.stanza, _query(0)))  # §4: online now
            return True
        try:
            last = await self.store.get(owner.local)
        except StorageUnavailable as exc:
            raise _unavailable() from exc
        if last is None:  # never seen going offline (as ejabberd answers)
            raise StanzaError("service-unavailable", "no last activity is known for this account")
        seconds = (datetime.datetime.now(datetime.UTC) - last.seen_at).total_seconds()
        await event.reply(iq_result(event.stanza, _query(int(seconds), last.status)))
        return True

    async def available(self, owner: JID) -> bool:
        """Whether the account has an available resource on any node (the session directory's view)."""
        if any(session.available for session in self.server.sessions.resources(owner)):
            return True
        directory = self.server.directory
        if directory is None:
            return False
        return any(record.presence is not None for record in (await directory.resources(owner)).values())

    async def check_allowed(self, owner: JID, requester: JID) -> None:
        """§4: only the user, or a contact with a subscription to the user's presence ('from' or 'both' in
        the user's roster, RFC 6121 §3); anyone else, or a query for no such account, gets forbidden."""
        if requester == owner:
            return
        assert owner.local is not None
        try:
            item = await self.server.storage.rosters.get_item(owner.local, str(requester))
        except StorageUnavailable as exc:
            raise _unavailable() from exc
        if not state_of(item).from_:
            raise StanzaError("forbidden", "only contacts who see this user's presence may ask")

    async def note_status(self, event: StanzaEvent) -> bool:
        """Before the presence module handles an unavailable presence, keep its status for `record`."""
        if event.type == "unavailable" and event.origin is not None:
            status = event.stanza.findtext(f"{{{ns.CLIENT}}}status") or ""
            event.origin.slots.set(STATUS, status[:MAX_STATUS_CHARS])
        return False  # the presence module goes on as if nothing happened

    async def record(self, event: SessionEvent) -> None:
        """A session became unavailable (explicitly or by closing): store when, with its status."""
        session: Session = event.session
        if session.available or session.jid.local is None:
            return
        status = session.slots.peek(STATUS) or ""
        if status:
            session.slots.set(STATUS, "")  # used once: a later logout without status has none
        activity = LastActivity(datetime.datetime.now(datetime.UTC), status)
        try:
            await self.store.set(session.jid.local, activity)
        except NoSuchAccount:
            pass  # the account is being deleted
        except StorageUnavailable as exc:
            session.log.warning("last activity not stored: %s", exc)

    async def disco_account(self, disco: DiscoEvent) -> None:
        disco.add_feature(LAST)


def load(module: Module) -> None:
    service = LastActivityService(module)
    module.add_slot(STATUS)
    module.add_feature(LAST)  # §6: the server supports the protocol (and answers §5 uptime queries)
    module.hook("disco-info/account", service.disco_account)
    module.hook(f"iq-get/host/{LAST}:query", service.server_uptime)
    module.hook(f"iq-get/bare/{LAST}:query", service.account)  # the router fires it for "self" too
    module.hook("pre-presence/self", service.note_status, priority=10)  # before the presence module (0)
    module.hook("presence-changed", service.record)
