"""The router is the one boundary that turns handler failures into stanza errors: storage that is down is
`wait`/`internal-server-error` (RFC 6120 §8.3.3.6), whatever module raised it; other users keep working."""

from __future__ import annotations

import pytest
import slixmpp
from conftest import DOMAIN, Clients
from slixmpp.exceptions import IqError

from nitro.core.router import StanzaEvent
from nitro.server import Server
from nitro.storage.errors import StorageError, StorageUnavailable

PROBE = "urn:example:storage-probe"


def probe(client: slixmpp.ClientXMPP) -> slixmpp.Iq:
    iq = client.make_iq_get(ito=slixmpp.JID(DOMAIN))
    iq.append(slixmpp.ET.Element(f"{{{PROBE}}}query"))
    return iq


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (StorageUnavailable("database is locked"), ("wait", "internal-server-error")),
        (StorageError("bad data"), ("cancel", "internal-server-error")),  # a bug: retrying will not help
    ],
)
async def test_a_storage_failure_in_any_handler_becomes_the_stanza_error(
    server: Server, clients: Clients, failure: Exception, expected: tuple[str, str]
) -> None:
    async def broken_store(event: StanzaEvent) -> bool:
        raise failure

    server.bus.add(f"iq-get/host/{PROBE}:query", broken_store)
    alice = await clients.login(await clients.user("alice"))
    bob = await clients.login(await clients.user("bob"))

    with pytest.raises(IqError) as refused:
        await probe(alice).send(timeout=5)

    assert (refused.value.iq["error"]["type"], refused.value.iq["error"]["condition"]) == expected
    assert refused.value.iq["error"]["text"] != str(failure)  # the storage's own words stay in the log
    await alice.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)  # alice's stream goes on
    await bob.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)  # and bob's
