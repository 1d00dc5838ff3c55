"""vcard-temp (XEP-0054) as transcripts: store, read one's own and others', the size limit, and a 10 MiB
vCard that the stream's stanza limit stops without touching what was stored."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import pytest
import slixmpp
from conftest import DOMAIN, Clients, wait_for
from slixmpp import Iq
from slixmpp.exceptions import IqError

from nitro.server import Server
from nitro.xmpp.jid import JID

VCARD = "vcard-temp"


async def request(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str, to: str | None = None
) -> Any:
    iq = client.make_iq(ito=to, itype=kind)
    iq.append(ET.fromstring(payload))  # noqa: S314  # the test's own literal
    return await iq.send(timeout=5)


async def refused(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str, to: str | None = None
) -> tuple[str, str]:
    with pytest.raises(IqError) as failure:
        await request(client, kind, payload, to)
    error = failure.value.iq["error"]
    return str(error["condition"]), str(error["text"])


def vcard(full_name: str, description: str = "") -> str:
    desc = f"<DESC>{description}</DESC>" if description else ""
    return f"<vCard xmlns='{VCARD}'><FN>{full_name}</FN><NICKNAME>al</NICKNAME>{desc}</vCard>"


def full_name(result: Iq) -> str | None:
    return result.xml.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}FN")


async def test_alice_stores_her_vcard_and_bob_reads_it(clients: Clients) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    alice_client = await clients.login(alice, plugins=["xep_0054"])
    bob_client = await clients.login(bob, plugins=["xep_0054"])

    card = alice_client.plugin["xep_0054"].make_vcard()
    card["FN"] = "Alice Liddell"
    card["NICKNAME"] = "al"
    await alice_client.plugin["xep_0054"].publish_vcard(card, timeout=5)

    # XEP-0054 §3.1: her own, with no 'to'
    own = await request(alice_client, "get", f"<vCard xmlns='{VCARD}'/>")
    assert full_name(own) == "Alice Liddell"
    # §3.3: bob asks her bare JID and the server answers for her
    theirs = await bob_client.plugin["xep_0054"].get_vcard(slixmpp.JID(alice), local=False, timeout=5)
    assert theirs["vcard_temp"]["FN"] == "Alice Liddell"
    assert str(theirs["from"]) == alice

    # §3.2: a set replaces the whole vCard
    await request(alice_client, "set", vcard("Alice"))
    assert full_name(await request(bob_client, "get", f"<vCard xmlns='{VCARD}'/>", to=alice)) == "Alice"
    assert (await request(bob_client, "get", f"<vCard xmlns='{VCARD}'/>", to=alice)).xml.findtext(
        f"{{{VCARD}}}vCard/{{{VCARD}}}NICKNAME"
    ) == "al"


async def test_no_vcard_is_an_empty_one_for_its_owner_and_an_error_for_others(clients: Clients) -> None:
    alice, bob = await clients.user("alice"), await clients.user("bob")
    alice_client = await clients.login(alice)
    bob_client = await clients.login(bob)

    # §3.1 allows either; an empty <vCard/> spares clients an error on first login
    empty = await request(alice_client, "get", f"<vCard xmlns='{VCARD}'/>")
    card = empty.xml.find(f"{{{VCARD}}}vCard")
    assert card is not None
    assert len(card) == 0
    # §3.3: service-unavailable, the same for a user without vCard and for no user at all
    assert (await refused(bob_client, "get", f"<vCard xmlns='{VCARD}'/>", to=alice))[
        0
    ] == "service-unavailable"
    assert (await refused(bob_client, "get", f"<vCard xmlns='{VCARD}'/>", to=f"nobody@{DOMAIN}"))[
        0
    ] == "service-unavailable"


async def test_an_empty_vcard_that_was_set_is_stored_and_returned(clients: Clients) -> None:
    """Issue 11 item 11: XEP-0054 has no delete; an empty vCard is the vCard the user set, not an error."""
    alice, bob = await clients.user("alice"), await clients.user("bob")
    alice_client = await clients.login(alice)
    bob_client = await clients.login(bob)
    await request(alice_client, "set", vcard("Alice"))

    await request(alice_client, "set", f"<vCard xmlns='{VCARD}'/>")

    for client, to in ((bob_client, alice), (alice_client, None)):
        result = await request(client, "get", f"<vCard xmlns='{VCARD}'/>", to=to)
        card = result.xml.find(f"{{{VCARD}}}vCard")
        assert card is not None
        assert len(card) == 0
        assert not (card.text or "").strip()


async def test_setting_another_users_vcard_is_forbidden(clients: Clients, server: Server) -> None:
    alice, mallory = await clients.user("alice"), await clients.user("mallory")
    alice_client = await clients.login(alice)
    await request(alice_client, "set", vcard("Alice"))
    mallory_client = await clients.login(mallory)

    assert (await refused(mallory_client, "set", vcard("Not Alice"), to=alice))[0] == "forbidden"  # §3.2
    assert b"Alice" in (await server.storage.vcards.get("alice") or b"")
    assert b"Not Alice" not in (await server.storage.vcards.get("alice") or b"")


async def test_a_vcard_over_the_size_limit_is_not_acceptable_and_the_old_one_stays(
    clients: Clients, server: Server
) -> None:
    alice = await clients.user("alice")
    client = await clients.login(alice)
    await request(client, "set", vcard("Alice"))
    limit = server.config.vcard.max_bytes

    condition, text = await refused(client, "set", vcard("Alice", "x" * limit))  # under the stanza limit

    assert condition == "not-acceptable"
    assert str(limit) in text
    assert full_name(await request(client, "get", f"<vCard xmlns='{VCARD}'/>")) == "Alice"


async def test_a_10_mib_vcard_closes_only_that_stream_and_the_stored_vcard_is_intact(
    clients: Clients, server: Server
) -> None:
    alice = await clients.user("alice")
    phone = await clients.login(f"{alice}/phone")
    await request(phone, "set", vcard("Alice"))
    laptop = await clients.login(f"{alice}/laptop")
    errors: list[str] = []
    laptop.add_event_handler("stream_error", lambda error: errors.append(error["condition"]))

    huge = f"<iq type='set' id='huge'><vCard xmlns='{VCARD}'><PHOTO><BINVAL>"
    laptop.send_raw(huge + "A" * (10 * 1024 * 1024) + "</BINVAL></PHOTO></vCard></iq>")

    # RFC 6120 §13.12: the stanza limit is a policy-violation stream error for that stream alone
    await wait_for(lambda: server.sessions.get(JID.parse(f"{alice}/laptop")) is None, timeout=10)
    await wait_for(lambda: errors == ["policy-violation"])
    assert server.sessions.get(JID.parse(f"{alice}/phone")) is not None
    assert full_name(await request(phone, "get", f"<vCard xmlns='{VCARD}'/>")) == "Alice"


async def test_vcard_temp_is_advertised(clients: Clients) -> None:
    client = await clients.login(await clients.user("alice"))
    info = await client.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), local=False, timeout=5)
    assert VCARD in info["disco_info"]["features"]  # XEP-0054 §4


@pytest.mark.fault
async def test_a_broken_store_says_wait(tmp_path: Path, clients: Clients) -> None:
    client = await clients.login(await clients.user("alice"))
    with sqlite3.connect(tmp_path / "nitro.db") as db:  # the table vanishes under the server
        db.execute("DROP TABLE vcards")

    with pytest.raises(IqError) as failure:
        await request(client, "set", vcard("Alice"))

    assert failure.value.iq["error"]["condition"] == "internal-server-error"
    assert failure.value.iq["error"]["type"] == "wait"  # RFC 6120 §8.3.3.6: not stored, try again later
