"""Offline messages (XEP-0160): kept with a delay stamp (XEP-0203) until the user's next non-negative
initial presence, then delivered oldest first and deleted.
"""

from __future__ import annotations

import copy
import datetime

from lxml import etree

from nitro.core.locks import UserLocks
from nitro.core.module import Module, SessionEvent
from nitro.core.router import StanzaEvent
from nitro.modules.message import top_resources
from nitro.storage.errors import NoSuchAccount, QuotaExceeded, StorageUnavailable
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.stanza import add_delay, worth_storing

_FLUSHED = "offline-flushed"  # Resource flag: this resource's stored messages were delivered to it
# Rows hold self-contained XML (xmlns='jabber:client' declared, unlike the wire form of xmlwrite.serialize);
# they are our own serialization, still never let parsing reach the network or expand entities.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def load(module: Module) -> None:
    server = module.server
    locks = UserLocks()
    module.add_feature(ns.OFFLINE)

    async def store(event: StanzaEvent) -> bool:
        """`message/offline`, fired by the message module for chat/normal with no one to take it."""
        assert event.to is not None
        assert event.to.local is not None
        username = event.to.local
        if not worth_storing(event.stanza):
            module.log.debug("not storing message %s for %s", event.stanza.get("id"), username)
            return True
        async with locks.hold(username):
            # The user may have come online (and been flushed) while we waited: deliver instead.
            recipients = top_resources(server, event.to.bare)
            if any(resource.has(_FLUSHED) for resource in recipients):
                for resource in recipients:
                    server.deliver(resource.jid, event.stanza)
                return True
            stored = copy.deepcopy(event.stanza)
            if stored.find(f"{{{ns.DELAY}}}delay") is None:  # a re-stored message keeps its first stamp
                add_delay(stored, datetime.datetime.now(datetime.UTC), module.domain, "Offline Storage")
            try:
                await server.storage.offline.push(
                    username, etree.tostring(stored, encoding="utf-8"), quota=server.config.offline.quota
                )
            except QuotaExceeded as exc:
                # XEP-0160 §2 step 3 (and Prosody): a full queue is <service-unavailable/>.
                module.log.info("offline storage of %s is full", username)
                raise StanzaError("service-unavailable", "the recipient's offline storage is full") from exc
            except NoSuchAccount:
                return False  # deleted meanwhile: the message module answers service-unavailable (§8.5.1)
            except StorageUnavailable as exc:
                module.log.warning("offline message for %s not stored: %s", username, exc)
                raise StanzaError(
                    "internal-server-error",
                    "offline storage is unavailable, the message was not stored",
                    type="wait",
                ) from exc
            server.metrics.offline_stored += 1
        module.log.debug("stored message %s for %s", event.stanza.get("id"), username)
        return True

    async def flush(event: SessionEvent) -> None:
        """XEP-0160 §2 step 5: on initial presence with a non-negative priority, oldest first."""
        session = event.session
        username = session.jid.local
        if session.priority < 0 or username is None:
            return
        async with locks.hold(username):
            if session.closed:
                return
            session.set_flag(_FLUSHED)
            try:
                stored = await server.storage.offline.list(username)
            except StorageUnavailable as exc:
                session.log.warning("offline messages not delivered, storage unavailable: %s", exc)
                return
            server.metrics.offline_queue_at_login(len(stored))
            done: list[int] = []
            for item in stored:
                if session.closed:
                    break  # the rest stays stored for the next session (XEP-0160 §2: kept until delivered)
                try:
                    message = etree.fromstring(item.stanza, _PARSER)
                except etree.XMLSyntaxError:
                    session.log.error("dropping unreadable offline message %d of %s", item.id, username)
                else:
                    session.send(message)
                    server.metrics.offline_delivered += 1
                done.append(item.id)
            if not done:
                return
            session.log.debug("delivered %d offline messages", len(done))
            try:
                await server.storage.offline.delete(username, done)
            except StorageUnavailable as exc:
                session.log.warning("delivered offline messages not deleted, they will come again: %s", exc)

    module.hook("message/offline", store)
    module.hook("initial-presence", flush)
