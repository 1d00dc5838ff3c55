"""Private XML Storage (XEP-0049) as transcripts: a round trip, the namespaces that are refused, the size
limit, and another user's storage, which is nobody else's business."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Literal

import pytest
import slixmpp
from conftest import DOMAIN, Clients
from slixmpp.exceptions import IqError

from nitro.server import Server

PRIVATE = "jabber:iq:private"
PREFS = "<prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs>"


async def request(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str, to: str | None = None
) -> Any:
    iq = client.make_iq(ito=to, itype=kind)
    iq.append(ET.fromstring(payload))  # noqa: S314  # the test's own literal
    return await iq.send(timeout=5)


async def refused(
    client: slixmpp.ClientXMPP, kind: Literal["get", "set"], payload: str, to: str | None = None
) -> str:
    with pytest.raises(IqError) as failure:
        await request(client, kind, payload, to)
    return str(failure.value.iq["error"]["condition"])


def query(*fragments: str) -> str:
    return f"<query xmlns='{PRIVATE}'>{''.join(fragments)}</query>"


def stored(result: Any, tag: str) -> Any:
    return result.xml.find(f"{{{PRIVATE}}}query/{tag}")


async def test_alice_stores_private_xml_and_reads_it_back_from_another_resource(clients: Clients) -> None:
    alice = await clients.user("alice")
    desktop = await clients.login(f"{alice}/desktop")
    phone = await clients.login(f"{alice}/phone")

    await request(desktop, "set", query(PREFS))  # XEP-0049 §2.3

    result = await request(phone, "get", query("<prefs xmlns='urn:example:prefs'/>"))
    assert stored(result, "{urn:example:prefs}prefs").findtext("{urn:example:prefs}theme") == "dark"
    # addressed to her own bare JID it is the same storage
    result = await request(phone, "get", query("<prefs xmlns='urn:example:prefs'/>"), to=alice)
    assert stored(result, "{urn:example:prefs}prefs") is not None

    # a second set replaces the fragment; other names in other namespaces are separate
    await request(desktop, "set", query("<prefs xmlns='urn:example:prefs'><theme>light</theme></prefs>"))
    await request(
        desktop, "set", query("<storage xmlns='storage:bookmarks'><url name='x' url='https://x'/></storage>")
    )
    result = await request(phone, "get", query("<prefs xmlns='urn:example:prefs'/>"))
    assert stored(result, "{urn:example:prefs}prefs").findtext("{urn:example:prefs}theme") == "light"


async def test_nothing_stored_answers_the_empty_element_asked_for(clients: Clients) -> None:
    client = await clients.login(await clients.user("alice"))
    result = await request(client, "get", query("<prefs xmlns='urn:example:prefs'/>"))
    found = stored(result, "{urn:example:prefs}prefs")
    assert found is not None
    assert len(found) == 0


async def test_slixmpp_bookmarks_round_trip_through_private_storage(clients: Clients) -> None:
    """XEP-0048 bookmarks in XEP-0049 storage, as older clients keep them."""
    client = await clients.login(await clients.user("alice"), plugins=["xep_0049", "xep_0048"])
    bookmarks = client.plugin["xep_0048"].stanza.Bookmarks()
    bookmarks.add_conference("lobby@rooms.localhost", "al", autojoin=True)
    await client.plugin["xep_0049"].store(bookmarks, timeout=5)

    result = await client.plugin["xep_0049"].retrieve("bookmarks", timeout=5)

    conferences = result["private"]["bookmarks"]["conferences"]
    assert [str(conference["jid"]) for conference in conferences] == ["lobby@rooms.localhost"]


@pytest.mark.parametrize(
    "fragment",
    [
        "<prefs xmlns='jabber:client'/>",
        "<prefs xmlns='jabber:server'/>",
        f"<query xmlns='{PRIVATE}'/>",
        "<prefs xmlns=''/>",
        "",
    ],
)
async def test_a_fragment_without_a_namespace_of_its_own_is_not_acceptable(
    clients: Clients, server: Server, fragment: str
) -> None:
    client = await clients.login(await clients.user("alice"))
    for kind in ("get", "set"):
        assert await refused(client, kind, query(fragment)) == "not-acceptable"  # XEP-0049 §2.3


async def test_requests_mixing_namespaces_or_asking_for_two_elements_are_refused(clients: Clients) -> None:
    client = await clients.login(await clients.user("alice"))
    two = query("<a xmlns='urn:example:a'/>", "<b xmlns='urn:example:b'/>")
    assert await refused(client, "set", two) == "not-acceptable"
    same_ns = query("<a xmlns='urn:example:a'/>", "<b xmlns='urn:example:a'/>")
    assert await refused(client, "get", same_ns) == "bad-request"  # §2.3: one element per get
    await request(client, "set", same_ns)  # §2.3: a set may carry several of one namespace
    result = await request(client, "get", query("<b xmlns='urn:example:a'/>"))
    assert stored(result, "{urn:example:a}b") is not None


async def test_another_users_private_storage_is_forbidden(clients: Clients, server: Server) -> None:
    alice, mallory = await clients.user("alice"), await clients.user("mallory")
    alice_client = await clients.login(alice)
    await request(alice_client, "set", query(PREFS))
    mallory_client = await clients.login(mallory)

    assert (
        await refused(mallory_client, "get", query("<prefs xmlns='urn:example:prefs'/>"), to=alice)
        == "forbidden"
    )
    assert (
        await refused(mallory_client, "set", query("<prefs xmlns='urn:example:prefs'/>"), to=alice)
        == "forbidden"
    )
    assert b"dark" in (await server.storage.private.get("alice", "{urn:example:prefs}prefs") or b"")
    assert await refused(mallory_client, "get", query(PREFS), to=DOMAIN) == "service-unavailable"


async def test_a_fragment_over_the_size_limit_is_not_acceptable(clients: Clients, server: Server) -> None:
    client = await clients.login(await clients.user("alice"))
    await request(client, "set", query(PREFS))
    big = f"<prefs xmlns='urn:example:prefs'><theme>{'x' * server.config.pep.max_item_bytes}</theme></prefs>"

    assert await refused(client, "set", query(big)) == "not-acceptable"

    assert b"dark" in (await server.storage.private.get("alice", "{urn:example:prefs}prefs") or b"")


@pytest.mark.fault
async def test_a_broken_store_says_wait(tmp_path: Path, clients: Clients) -> None:
    client = await clients.login(await clients.user("alice"))
    with sqlite3.connect(tmp_path / "nitro.db") as db:  # the table vanishes under the server
        db.execute("DROP TABLE private_xml")

    with pytest.raises(IqError) as failure:
        await request(client, "set", query(PREFS))

    assert failure.value.iq["error"]["condition"] == "internal-server-error"
    assert failure.value.iq["error"]["type"] == "wait"  # RFC 6120 §8.3.3.6: not stored, try again later
