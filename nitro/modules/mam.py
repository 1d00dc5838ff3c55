"""Message Archive Management (XEP-0313 v1.1, urn:xmpp:mam:2) of user archives: the registrations and IQ
handlers. Archiving and paging live in mam_archive, the wire format of queries and preferences in mam_query.
"""

from __future__ import annotations

import asyncio
import datetime

from nitro.core.events import AccountEvent
from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.modules.disco import DiscoEvent
from nitro.modules.mam_archive import SID, Archive, retention
from nitro.modules.mam_query import MAM, parse_prefs, parse_request, prefs_element, query_form, result_message
from nitro.storage.errors import ItemNotFound, NoSuchAccount
from nitro.storage.models import ArchiveQuery
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import child, element, iq_result, utc_stamp

MAM_EXTENDED = "urn:xmpp:mam:2#extended"  # §7: before-id/after-id/ids, flipped pages, metadata
MAM_GROUPCHAT_FIELD = "urn:xmpp:mam:2#groupchat-field"  # §7: we understand 'include-groupchat'
MAM_QUERIED = "mam-queried"  # Resource flag: the client queried its archive during this session
FEATURES = (MAM, MAM_EXTENDED, MAM_GROUPCHAT_FIELD, SID)

# Above carbons (sent copies at -50, received at -90) and delivery (-100): copies carry the stanza-id.
ARCHIVE_PRIORITY = -40


def owner_of(event: StanzaEvent) -> tuple[JID, str]:
    """The archive's owner (the requester's bare JID) and username; only users have archives."""
    owner = event.from_.bare
    if owner.local is None:
        raise StanzaError("forbidden", "only users have archives here")
    return owner, owner.local


class ArchiveIq:
    """The IQ handlers of a user's own archive (XEP-0313 §4, §5; XEP-0441) and its disco features."""

    def __init__(self, module: Module, archive: Archive) -> None:
        self.server = module.server
        self.archive = archive

    async def query(self, event: StanzaEvent) -> bool:
        owner, username = owner_of(event)
        query = event.stanza.find(f"{{{MAM}}}query")
        assert query is not None
        if event.origin is not None:
            event.origin.set_flag(MAM_QUERIED)  # it syncs from the archive (see stream_management)
        if query.get("node") is not None:
            raise StanzaError("item-not-found", "a user archive has no nodes (XEP-0442)")
        request = parse_request(query, self.archive.max_page_size)
        try:
            answer = await self.archive.answer(username, request)
        except ItemNotFound as exc:
            raise StanzaError("item-not-found", "no archived message has this id") from exc
        for item in reversed(answer.messages) if request.flip else answer.messages:
            reply = result_message(owner, event.from_, request.queryid, item)
            if event.origin is not None:
                event.origin.send(reply)
            else:
                await self.server.router.route(reply)
        fin = element(MAM, "fin", complete="true" if answer.complete else "false")
        fin.append(answer.info.to_element())
        await event.reply(iq_result(event.stanza, fin))
        return True

    async def form(self, event: StanzaEvent) -> bool:
        owner_of(event)
        query = element(MAM, "query")
        query.append(query_form())
        await event.reply(iq_result(event.stanza, query))
        return True

    async def metadata(self, event: StanzaEvent) -> bool:
        """§5: the first and the last message of the archive; empty for an empty archive."""
        _owner, username = owner_of(event)
        metadata = element(MAM, "metadata")
        await self.archive.writer.flush(username)
        store = self.archive.store
        first = await store.query(username, ArchiveQuery(limit=1, with_count=False))
        last = await store.query(username, ArchiveQuery(before_id="", limit=1, with_count=False))
        for name, page in (("start", first), ("end", last)):
            if page.messages:
                item = page.messages[0]
                child(metadata, MAM, name, id=item.id, timestamp=utc_stamp(item.timestamp))
        await event.reply(iq_result(event.stanza, metadata))
        return True

    async def prefs(self, event: StanzaEvent) -> bool:
        _owner, username = owner_of(event)
        node = event.stanza.find(f"{{{MAM}}}prefs")
        assert node is not None
        try:
            if event.type == "set":
                prefs = parse_prefs(node)
                self.archive.forget(username)
                try:
                    await self.archive.store.set_prefs(username, prefs)  # durable before the result
                finally:
                    self.archive.forget(username)
            else:
                prefs = await self.archive.prefs_of(username) or self.archive.default_prefs
        except NoSuchAccount as exc:
            raise StanzaError("item-not-found", "no such account") from exc
        await event.reply(iq_result(event.stanza, prefs_element(prefs)))
        return True

    async def someone_elses(self, event: StanzaEvent) -> bool:
        raise StanzaError("forbidden", "an archive is for its owner only (XEP-0313 §8.1)")

    async def account_features(self, disco: DiscoEvent) -> None:
        for feature in FEATURES:  # §7: on the archiving JID, the user's bare JID
            disco.add_feature(feature)


def load(module: Module) -> None:
    server = module.server
    archive = Archive(server, module)
    handlers = ArchiveIq(module, archive)
    module.spawn(archive.writer.run())  # cancelled at shutdown, it flushes what is queued first
    for feature in FEATURES:
        module.add_feature(feature)
    for hook in ("message/bare", "message/full"):
        module.hook(hook, archive.on_incoming, priority=ARCHIVE_PRIORITY)
    for hook in ("pre-message/bare", "pre-message/full"):
        module.hook(hook, archive.on_outgoing, priority=ARCHIVE_PRIORITY)
    for name, handler in (
        (f"iq-set/self/{MAM}:query", handlers.query),
        (f"iq-get/self/{MAM}:query", handlers.form),
        (f"iq-get/self/{MAM}:metadata", handlers.metadata),
        (f"iq-get/self/{MAM}:prefs", handlers.prefs),
        (f"iq-set/self/{MAM}:prefs", handlers.prefs),
    ):
        module.hook(name, handler)
        module.hook(name.replace("/self/", "/bare/"), handlers.someone_elses)
    module.hook("disco-info/account", handlers.account_features)

    async def account_changed(event: AccountEvent) -> None:
        archive.forget(event.username)

    for name in ("account-created", "account-deleted"):
        module.hook(name, account_changed)

    retention_days = server.config.archive.retention_days
    if retention_days > 0:
        stopped = asyncio.Event()
        module.on_unload(stopped.set)
        module.spawn(retention(archive, datetime.timedelta(days=retention_days), stopped))
