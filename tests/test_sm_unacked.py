"""What becomes of messages a stream-managed client received but never acknowledged (XEP-0198 §4), with the
rules of issue 11 item 13: the original delay stamp is kept, and a client that syncs from the archive is not
sent the same message again from offline storage."""

from __future__ import annotations

import asyncio
import datetime
import re

import slixmpp
from conftest import Clients
from test_stream_management import body, managed, stored_offline

from nitro.server import Server
from nitro.storage import ArchiveQuery
from nitro.xmpp.sm import parse_stanza

MAM_QUERY = b"<iq type='set' id='q1'><query xmlns='urn:xmpp:mam:2' queryid='sync'/></iq>"
DELAY = "{urn:xmpp:delay}delay"


async def test_a_message_stored_after_a_clean_close_keeps_the_time_it_was_sent(
    server: Server, clients: Clients
) -> None:
    alice_jid = await clients.user("alice")
    await clients.user("bob")
    bob, _previd = await managed(server, "bob")
    alice = await clients.login(alice_jid)
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    alice.send_message(mto=slixmpp.JID("bob@localhost/raw"), mbody="sent early", mtype="chat")
    await bob.expect(body("sent early"))
    await asyncio.sleep(2.1)  # the disconnect happens measurably later than the delivery
    bob.send(b"</stream:stream>")  # a clean close without acknowledging it
    await bob.rest()
    bob.writer.close()
    await stored_offline(server, "bob", 1)
    (item,) = await server.storage.offline.list("bob")
    stored = parse_stanza(item.stanza)
    delays = stored.findall(DELAY)
    assert len(delays) == 1  # one stamp: the one made when it was sent, not a second at the disconnect
    stamp = datetime.datetime.fromisoformat(delays[0].get("stamp", "").replace("Z", "+00:00"))
    assert before <= stamp < before + datetime.timedelta(seconds=2)


async def test_a_client_that_syncs_from_the_archive_is_not_sent_it_again_offline(
    server: Server, clients: Clients
) -> None:
    alice_jid = await clients.user("alice")
    await clients.user("bob")
    bob, _previd = await managed(server, "bob")
    bob.send(MAM_QUERY)  # this client uses the archive (XEP-0313)
    await bob.expect(re.compile(rb"<iq[^>]*id=\"q1\""))
    alice = await clients.login(alice_jid)
    alice.send_message(mto=slixmpp.JID("bob@localhost/raw"), mbody="in the archive", mtype="chat")
    await bob.expect(body("in the archive"))
    bob.send(b"</stream:stream>")
    await bob.rest()
    bob.writer.close()
    alice.send_message(mto=slixmpp.JID("bob@localhost"), mbody="after the close", mtype="chat")
    await stored_offline(server, "bob", 1)  # only the message bob never received
    (item,) = await server.storage.offline.list("bob")
    assert parse_stanza(item.stanza).findtext("{jabber:client}body") == "after the close"
    page = await server.storage.archive.query("bob", ArchiveQuery())
    archived = [parse_stanza(message.stanza).findtext("{jabber:client}body") for message in page.messages]
    assert "in the archive" in archived  # where the client will find it
