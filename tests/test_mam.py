"""Message Archive Management (XEP-0313, with XEP-0359 ids, XEP-0441 preferences and XEP-0059 paging) as
transcripts: alice and bob chat, then page through what their archives kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import itertools
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, Clients, make_config, result_of, wait_for
from slixmpp.exceptions import IqError
from slixmpp.stanza import Error as StanzaErrorPlugin
from slixmpp.types import MessageTypes
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from sqlalchemy import insert
from test_message import roundtrip, session_of

from nitro.config import ArchiveSection
from nitro.modules.mam_archive import new_archive_id
from nitro.server import Server, running_server
from nitro.storage.models import ArchiveQuery
from nitro.storage.schema import archive_messages
from nitro.storage.sql import create_engine
from nitro.storage.sql_base import Database, contact_keys

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FORWARD = "urn:xmpp:forward:0"
DELAY = "urn:xmpp:delay"
CLIENT = "jabber:client"
XDATA = "jabber:x:data"
PLUGINS = ("xep_0313", "xep_0059", "xep_0359")
T0 = datetime.datetime(2024, 3, 1, 12, 0, tzinfo=datetime.UTC)

_query_ids = itertools.count(1)


# -- helpers: clients, raw queries, archives filled through the storage API ----------------------------------


async def online(clients: Clients, jid: str) -> tuple[slixmpp.ClientXMPP, list[Any]]:
    """Log `jid` in with the MAM plugins and available presence; collect the chat messages it receives."""
    inbox: list[Any] = []

    def collect(message: Any) -> None:
        if message["body"]:  # archive results are messages too, without a body of their own
            inbox.append(message)

    client = await clients.login(
        jid, plugins=PLUGINS, setup=lambda c: c.add_event_handler("message", collect)
    )

    def available() -> bool:
        session = session_of(clients.server, client)
        return session is not None and session.available

    await wait_for(available)
    return client, inbox


def chat(
    client: slixmpp.ClientXMPP, to: str, body: str, *, extra: str = "", mtype: MessageTypes = "chat"
) -> None:
    message = client.make_message(mto=to, mbody=body, mtype=mtype)
    for node in ET.fromstring(f"<x>{extra}</x>"):
        message.xml.append(node)
    message.send()


def stanza_ids(message: Any) -> list[tuple[str | None, str | None]]:
    """(by, id) of every XEP-0359 stanza-id of a received message."""
    return [(node.get("by"), node.get("id")) for node in message.xml.findall(f"{{{SID}}}stanza-id")]


@dataclass
class Page:
    """One answered archive query: the result messages as received, then the <fin/>."""

    results: list[ET.Element]
    fin: ET.Element

    def _result(self, message: ET.Element) -> ET.Element:
        result = message.find(f"{{{MAM}}}result")
        assert result is not None
        return result

    @property
    def ids(self) -> list[str | None]:
        return [self._result(message).get("id") for message in self.results]

    @property
    def messages(self) -> list[ET.Element]:
        """The archived messages, unwrapped from their <forwarded/>."""
        found = []
        for message in self.results:
            inner = self._result(message).find(f"{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
            assert inner is not None
            found.append(inner)
        return found

    @property
    def bodies(self) -> list[str | None]:
        return [message.findtext(f"{{{CLIENT}}}body") for message in self.messages]

    @property
    def stamps(self) -> list[datetime.datetime]:
        found = []
        for message in self.results:
            delay = self._result(message).find(f"{{{FORWARD}}}forwarded/{{{DELAY}}}delay")
            assert delay is not None
            found.append(datetime.datetime.fromisoformat(delay.get("stamp") or ""))
        return found

    @property
    def complete(self) -> bool:
        return self.fin.get("complete") == "true"

    def rsm(self, name: str) -> str | None:
        return self.fin.findtext(f"{{{RSM}}}set/{{{RSM}}}{name}")

    @property
    def first_index(self) -> int | None:
        first = self.fin.find(f"{{{RSM}}}set/{{{RSM}}}first")
        index = first.get("index") if first is not None else None
        return int(index) if index is not None else None

    @property
    def count(self) -> int | None:
        text = self.rsm("count")
        return int(text) if text is not None else None


def form_xml(fields: Mapping[str, str | Sequence[str]], form_type: str | None = MAM) -> str:
    parts = [f"<x xmlns='{XDATA}' type='submit'>"]
    if form_type is not None:
        parts.append(f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>")
    for var, value in fields.items():
        values = [value] if isinstance(value, str) else list(value)
        parts.append(f"<field var='{var}'>{''.join(f'<value>{v}</value>' for v in values)}</field>")
    parts.append("</x>")
    return "".join(parts)


def set_xml(rsm: Mapping[str, str | int]) -> str:
    inner = "".join(
        f"<{name}/>" if value == "" else f"<{name}>{value}</{name}>" for name, value in rsm.items()
    )
    return f"<set xmlns='{RSM}'>{inner}</set>"


async def mam(
    client: slixmpp.ClientXMPP,
    fields: Mapping[str, str | Sequence[str]] | None = None,
    rsm: Mapping[str, str | int] | None = None,
    *,
    extra: str = "",
    to: str | None = None,
    form: str | None = None,
) -> Page:
    """Send a raw MAM query (a form with `fields`, an RSM set) and collect its results and <fin/>."""
    queryid = f"q{next(_query_ids)}"
    results: list[ET.Element] = []

    def on_result(message: Any) -> None:
        result = message.xml.find(f"{{{MAM}}}result")
        if result is not None and result.get("queryid") == queryid:
            results.append(message.xml)

    body = form if form is not None else form_xml(fields) if fields else ""
    body += set_xml(rsm) if rsm is not None else ""
    name = f"mam-results-{queryid}"
    client.register_handler(Callback(name, MatchXPath(f"{{{CLIENT}}}message/{{{MAM}}}result"), on_result))
    try:
        iq = client.make_iq_set(ito=to)
        iq.xml.append(ET.fromstring(f"<query xmlns='{MAM}' queryid='{queryid}'>{body}{extra}</query>"))
        reply = await iq.send(timeout=10)
    finally:
        client.remove_handler(name)
    fin = reply.xml.find(f"{{{MAM}}}fin")
    assert fin is not None
    return Page(results, fin)


async def refused(call: Any) -> str:
    """Await an IQ that must fail; its RFC 6120 error condition."""
    with pytest.raises(IqError) as error:
        await call
    return str(error.value.iq["error"]["condition"])


async def iq_set(client: slixmpp.ClientXMPP, payload: str, *, get: bool = False) -> ET.Element:
    iq = client.make_iq_get() if get else client.make_iq_set()
    iq.xml.append(ET.fromstring(payload))
    reply = await result_of(iq.send(timeout=10))
    assert len(reply.xml) == 1
    return reply.xml[0]


async def fill(
    server: Server,
    owner: str,
    count: int,
    *,
    contacts: Iterable[str] = ("bob",),
    start: datetime.datetime = T0,
    step: datetime.timedelta = datetime.timedelta(minutes=1),
) -> list[str]:
    """Archive `count` incoming chats for `owner` through the storage API, one a `step` apart, round robin
    over `contacts`; the archive ids in order.
    """
    peers = list(contacts)
    ids = []
    for n in range(count):
        peer = f"{peers[n % len(peers)]}@{DOMAIN}"
        archive_id = new_archive_id()
        stanza = (
            f"<message xmlns='jabber:client' from='{peer}/phone' to='{owner}@{DOMAIN}' type='chat' "
            f"id='m{n}'><body>{n}</body></message>"
        )
        await server.storage.archive.append(
            owner, with_jid=peer, stanza=stanza.encode(), stanza_id=archive_id, timestamp=start + n * step
        )
        ids.append(archive_id)
    return ids


async def bulk_fill(server: Server, owner: str, count: int, contacts: Sequence[str]) -> list[str]:
    """Like `fill`, in one transaction: each `append` commits with a full fsync, a hundred a second."""
    engine = create_engine(server.config.storage.dsn)
    ids = [new_archive_id() for _ in range(count)]
    try:
        db = Database(engine)
        async with db.writer.begin() as conn:
            account_id = await db.existing_account_id(conn, owner)
            rows = []
            for n, archive_id in enumerate(ids):
                peer = f"{contacts[n % len(contacts)]}@{DOMAIN}"
                raw, key = contact_keys(peer)
                stanza = f"<message xmlns='jabber:client' from='{peer}/phone'><body>{n}</body></message>"
                rows.append(
                    {
                        "account_id": account_id,
                        "stanza_id": archive_id,
                        "with_key": key,
                        "with_jid": raw,
                        "timestamp": T0 + n * datetime.timedelta(seconds=1),
                        "stanza": stanza.encode(),
                    }
                )
            await conn.execute(insert(archive_messages), rows)
    finally:
        await engine.dispose()
    return ids


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- archiving real messages ---------------------------------------------------------------------------------


async def test_alice_and_bob_chat_and_both_archives_keep_it(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, alice_inbox = await online(clients, alice_jid)
    bob, bob_inbox = await online(clients, bob_jid)
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)

    chat(alice, bob_jid, "Wherefore art thou?")
    await wait_for(lambda: len(bob_inbox) == 1)
    chat(bob, alice_jid, "Here, on the balcony.")
    await wait_for(lambda: len(alice_inbox) == 1)

    # XEP-0313 §3.5: each recipient learns where its own archive keeps the message, and only that.
    [(by, bob_sid)] = stanza_ids(bob_inbox[0])
    assert by == bob_jid
    [(by, alice_sid)] = stanza_ids(alice_inbox[0])
    assert by == alice_jid

    bobs = await mam(bob)
    assert bobs.bodies == ["Wherefore art thou?", "Here, on the balcony."]
    assert bobs.ids[0] == bob_sid
    assert bobs.complete
    assert (bobs.count, bobs.first_index, bobs.rsm("first"), bobs.rsm("last")) == (
        2,
        0,
        bobs.ids[0],
        bobs.ids[1],
    )
    for result in bobs.results:
        assert result.get("from") == bob_jid
        assert result.get("to") == str(bob.boundjid)
    received, sent = bobs.messages
    assert (received.get("from"), received.get("to")) == (str(alice.boundjid), bob_jid)
    assert received.find(f"{{{SID}}}stanza-id") is None  # the id is the result's, not part of the message
    assert (sent.get("from"), sent.get("to")) == (str(bob.boundjid), alice_jid)
    after = datetime.datetime.now(datetime.UTC)
    assert all(before <= moment <= after for moment in bobs.stamps)
    assert bobs.stamps == sorted(bobs.stamps)

    alices = await mam(alice)
    assert alices.bodies == ["Wherefore art thou?", "Here, on the balcony."]
    assert alices.ids[1] == alice_sid
    assert len(set(alices.ids + bobs.ids)) == 4


async def test_slixmpp_retrieves_and_iterates_the_archive(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    ids = await fill(server, "alice", 25)

    page = await alice.plugin["xep_0313"].retrieve(rsm={"max": 10}, timeout=10)
    assert [m["mam_result"]["id"] for m in page["mam"]["results"]] == ids[:10]
    assert page["mam_fin"]["rsm"]["count"] == "25"

    seen = [
        message["mam_result"]["id"] async for message in alice.plugin["xep_0313"].iterate(rsm={"max": 10})
    ]
    assert seen == ids


async def test_a_message_to_a_full_jid_and_one_to_oneself_are_archived_once(clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    phone, _ = await online(clients, f"{alice_jid}/phone")
    desk, desk_inbox = await online(clients, f"{alice_jid}/desk")

    chat(phone, f"{alice_jid}/desk", "note to self")
    await wait_for(lambda: len(desk_inbox) == 1)

    page = await mam(desk)
    assert page.bodies == ["note to self"]
    assert page.ids == [stanza_ids(desk_inbox[0])[0][1]]
    assert (await mam(desk, {"with": alice_jid})).bodies == ["note to self"]


async def test_a_message_kept_offline_carries_its_archive_id(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)

    chat(alice, bob_jid, "read this later")
    await roundtrip(alice)
    bob, inbox = await online(clients, bob_jid)

    await wait_for(lambda: len(inbox) == 1)
    [(by, sid)] = stanza_ids(inbox[0])
    assert by == bob_jid
    assert (await mam(bob)).ids == [sid]


@pytest.mark.parametrize(
    ("extra", "mtype"),
    [
        ("<no-store xmlns='urn:xmpp:hints'/>", "chat"),  # XEP-0334 §4.2
        ("<no-permanent-store xmlns='urn:xmpp:hints'/>", "chat"),  # XEP-0334 §4.1
        ("", "headline"),  # XEP-0313 §6.1.1: not a conversation
    ],
)
async def test_messages_that_are_not_archived_get_no_stanza_id(
    clients: Clients, extra: str, mtype: MessageTypes
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    bob, inbox = await online(clients, bob_jid)

    chat(alice, bob_jid, "off the record", extra=extra, mtype=mtype)

    await wait_for(lambda: len(inbox) == 1)
    assert stanza_ids(inbox[0]) == []
    assert (await mam(bob)).results == []
    assert (await mam(alice)).results == []


async def test_chat_states_alone_are_not_archived_but_a_store_hint_keeps_a_bodyless_message(
    server: Server, clients: Clients
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    bob, _ = await online(clients, bob_jid)

    for extra in (
        "<composing xmlns='http://jabber.org/protocol/chatstates'/>",
        "<encrypted xmlns='eu.siacs.conversations.axolotl'/><store xmlns='urn:xmpp:hints'/>",
    ):
        message = alice.make_message(mto=bob_jid, mtype="chat")
        for node in ET.fromstring(f"<x>{extra}</x>"):
            message.xml.append(node)
        message.send()
    await roundtrip(alice)
    await roundtrip(bob)

    [kept] = (await mam(bob)).messages
    assert kept.find("{eu.siacs.conversations.axolotl}encrypted") is not None
    assert await server.storage.archive.count("alice") == 1


async def test_a_forged_stanza_id_is_replaced_and_foreign_ones_pass(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    bob, inbox = await online(clients, bob_jid)
    forged = (
        f"<stanza-id xmlns='{SID}' by='{bob_jid}' id='forged-by-alice'/>"
        f"<stanza-id xmlns='{SID}' by='BOB@{DOMAIN}' id='forged-again'/>"
        f"<stanza-id xmlns='{SID}' by='{alice_jid}' id='alice-claims-her-own'/>"
        f"<stanza-id xmlns='{SID}' by='room@muc.example' id='from-elsewhere'/>"
    )

    chat(alice, bob_jid, "trust me", extra=forged)

    await wait_for(lambda: len(inbox) == 1)
    ids = stanza_ids(inbox[0])
    # XEP-0359 §3 rules 3-4: one id per 'by', ours; ids for other entities are not ours to judge.
    assert ("room@muc.example", "from-elsewhere") in ids
    assert [sid for by, sid in ids if by and by.lower() == bob_jid] == (await mam(bob)).ids
    assert all(by != alice_jid for by, _ in ids)
    archived = (await mam(bob)).messages[0]
    assert [node.get("id") for node in archived.findall(f"{{{SID}}}stanza-id")] == ["from-elsewhere"]


async def test_the_senders_other_resources_learn_its_archive_id_through_carbons(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    phone, _ = await online(clients, f"{alice_jid}/phone")
    desk = await clients.login(f"{alice_jid}/desk", plugins=(*PLUGINS, "xep_0280"))
    sent: list[Any] = []
    desk.add_event_handler("carbon_sent", sent.append)
    await desk.plugin["xep_0280"].enable(timeout=10)
    _bob, inbox = await online(clients, bob_jid)

    chat(phone, bob_jid, "from my phone")

    await wait_for(lambda: len(sent) == 1 and len(inbox) == 1)
    copy = sent[0].xml.find(f"{{urn:xmpp:carbons:2}}sent/{{{FORWARD}}}forwarded/{{{CLIENT}}}message")
    assert copy is not None
    # XEP-0313 §3.5: the sent carbon carries the sender's archive id; the recipient sees only its own.
    [alice_archive_id] = (await mam(desk)).ids
    assert [(node.get("by"), node.get("id")) for node in copy.findall(f"{{{SID}}}stanza-id")] == [
        (alice_jid, alice_archive_id)
    ]
    assert [by for by, _ in stanza_ids(inbox[0])] == [bob_jid]


@pytest.mark.fault
async def test_a_broken_archive_never_stops_delivery(tmp_path: Path, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    _bob, inbox = await online(clients, bob_jid)
    with sqlite3.connect(tmp_path / "nitro.db") as db:  # the archive's table vanishes under the server
        db.execute("DROP TABLE archive_messages")

    chat(alice, bob_jid, "still there?")

    await wait_for(lambda: len(inbox) == 1)
    assert inbox[0]["body"] == "still there?"
    # The archive id is given before the row is written (in the background, retried until it commits).
    assert [by for by, _ in stanza_ids(inbox[0])] == [bob_jid]
    assert await refused(mam(alice)) == "internal-server-error"  # a query says so rather than lie


# -- preferences (XEP-0441) ----------------------------------------------------------------------------------


def prefs_xml(default: str, always: Iterable[str] = (), never: Iterable[str] = ()) -> str:
    def group(name: str, jids: Iterable[str]) -> str:
        return f"<{name}>{''.join(f'<jid>{jid}</jid>' for jid in jids)}</{name}>"

    return (
        f"<prefs xmlns='{MAM}' default='{default}'>{group('always', always)}{group('never', never)}</prefs>"
    )


def prefs_of(node: ET.Element) -> tuple[str | None, list[str | None], list[str | None]]:
    return (
        node.get("default"),
        [jid.text for jid in node.findall(f"{{{MAM}}}always/{{{MAM}}}jid")],
        [jid.text for jid in node.findall(f"{{{MAM}}}never/{{{MAM}}}jid")],
    )


async def test_preferences_start_from_the_config_and_are_kept(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))

    assert prefs_of(await iq_set(alice, f"<prefs xmlns='{MAM}'/>", get=True)) == ("always", [], [])

    applied = await iq_set(
        alice, prefs_xml("roster", always=["Romeo@Montague.example"], never=[f"tybalt@{DOMAIN}/sword"])
    )
    assert prefs_of(applied) == ("roster", ["romeo@montague.example"], [f"tybalt@{DOMAIN}/sword"])
    assert prefs_of(await iq_set(alice, f"<prefs xmlns='{MAM}'/>", get=True)) == prefs_of(applied)


async def test_default_never_keeps_alice_out_of_her_archive_but_not_bobs(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, alice_inbox = await online(clients, alice_jid)
    bob, bob_inbox = await online(clients, bob_jid)
    await iq_set(alice, prefs_xml("never"))

    chat(alice, bob_jid, "between us")
    await wait_for(lambda: len(bob_inbox) == 1)
    chat(bob, alice_jid, "agreed")
    await wait_for(lambda: len(alice_inbox) == 1)

    assert stanza_ids(alice_inbox[0]) == []
    assert (await mam(alice)).results == []
    assert (await mam(bob)).bodies == ["between us", "agreed"]


async def test_always_and_never_lists_match_bare_and_full_jids(clients: Clients) -> None:
    alice_jid, bob_jid, carol_jid = [await clients.user(name) for name in ("alice", "bob", "carol")]
    alice, inbox = await online(clients, alice_jid)
    bob_phone, _ = await online(clients, f"{bob_jid}/phone")
    bob_desk, _ = await online(clients, f"{bob_jid}/desk")
    carol, _ = await online(clients, carol_jid)
    # XEP-0441 §2.3.1: a full JID in a list matches that resource only, a bare JID every resource.
    await iq_set(alice, prefs_xml("never", always=[bob_jid], never=[f"{bob_jid}/desk", carol_jid]))

    chat(bob_phone, alice_jid, "from the phone")
    chat(bob_desk, alice_jid, "from the desk")
    chat(carol, alice_jid, "from carol")
    await wait_for(lambda: len(inbox) == 3)

    assert (await mam(alice)).bodies == ["from the phone"]


async def test_default_roster_archives_contacts_only(clients: Clients) -> None:
    alice_jid, bob_jid, eve_jid = [await clients.user(name) for name in ("alice", "bob", "eve")]
    alice, inbox = await online(clients, alice_jid)
    bob, _ = await online(clients, bob_jid)
    eve, _ = await online(clients, eve_jid)
    await iq_set(alice, prefs_xml("roster"))
    await result_of(alice.update_roster(slixmpp.JID(bob_jid), timeout=10))

    chat(bob, alice_jid, "from a contact")
    chat(eve, alice_jid, "from a stranger")
    await wait_for(lambda: len(inbox) == 2)

    assert (await mam(alice)).bodies == ["from a contact"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (f"<prefs xmlns='{MAM}'/>", "bad-request"),  # no default
        (f"<prefs xmlns='{MAM}' default='sometimes'/>", "bad-request"),
        (f"<prefs xmlns='{MAM}' default='always'><always/><always/></prefs>", "bad-request"),
        (prefs_xml("always", never=["@nope"]), "jid-malformed"),
    ],
)
async def test_bad_preferences_are_refused_and_change_nothing(
    clients: Clients, payload: str, expected: str
) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    await iq_set(alice, prefs_xml("roster"))

    assert await refused(iq_set(alice, payload)) == expected

    assert prefs_of(await iq_set(alice, f"<prefs xmlns='{MAM}'/>", get=True))[0] == "roster"


# -- queries: filters ----------------------------------------------------------------------------------------


async def test_filter_by_with_start_and_end(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    ids = await fill(server, "alice", 30, contacts=("bob", "carol", "dave"))

    carols = await mam(alice, {"with": f"carol@{DOMAIN}"})
    assert carols.ids == ids[1::3]
    assert carols.count == 10

    # §4.1.2: start and end are inclusive.
    window = await mam(
        alice,
        {
            "start": stamp(T0 + datetime.timedelta(minutes=5)),
            "end": stamp(T0 + datetime.timedelta(minutes=9)),
        },
    )
    assert window.ids == ids[5:10]
    assert window.complete

    both = await mam(alice, {"with": f"bob@{DOMAIN}", "start": stamp(T0 + datetime.timedelta(minutes=10))})
    assert both.ids == ids[12::3]

    offset = await mam(alice, {"start": "2024-03-01T14:03:00+02:00", "end": "2024-03-01T12:04:00.5Z"})
    assert offset.ids == ids[3:5]

    assert (await mam(alice, {"with": f"nobody@{DOMAIN}"})).results == []
    assert (await mam(alice, {"start": stamp(T0 + datetime.timedelta(days=1))})).count == 0


async def test_with_a_full_jid_matches_that_resource_only(clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, inbox = await online(clients, alice_jid)
    phone, _ = await online(clients, f"{bob_jid}/phone")
    desk, _ = await online(clients, f"{bob_jid}/desk")

    for n in range(3):
        chat(phone, alice_jid, f"phone {n}")
        chat(desk, alice_jid, f"desk {n}")
    await wait_for(lambda: len(inbox) == 6)
    chat(alice, f"{bob_jid}/desk", "to the desk")
    await roundtrip(alice)

    assert (await mam(alice, {"with": f"{bob_jid}/phone"})).bodies == ["phone 0", "phone 1", "phone 2"]
    first = await mam(alice, {"with": f"{bob_jid}/desk"}, {"max": 2})
    assert first.bodies == ["desk 0", "desk 1"]
    assert not first.complete
    assert first.count is None  # not known without reading every message
    rest = await mam(alice, {"with": f"{bob_jid}/desk"}, {"max": 2, "after": first.rsm("last") or ""})
    assert rest.bodies == ["desk 2", "to the desk"]
    assert rest.complete
    last = await mam(alice, {"with": f"{bob_jid}/desk"}, {"max": 3, "before": ""})
    assert last.bodies == ["desk 1", "desk 2", "to the desk"]
    assert (await mam(alice, {"with": f"{bob_jid}/tablet"})).results == []


async def test_after_id_before_id_and_ids(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    ids = await fill(server, "alice", 20)

    after = await mam(alice, {"after-id": ids[14]})
    assert after.ids == ids[15:]
    assert after.complete

    # XEP-0313 §9: before-id ends the result without paging backward.
    before = await mam(alice, {"before-id": ids[10]}, {"max": 3})
    assert before.ids == ids[0:3]
    assert not before.complete
    tail = await mam(alice, {"before-id": ids[10]}, {"max": 3, "after": ids[8]})
    assert tail.ids == [ids[9]]
    assert tail.complete

    between = await mam(alice, {"after-id": ids[3], "before-id": ids[8]})
    assert between.ids == ids[4:8]
    assert between.complete
    assert (await mam(alice, {"after-id": ids[8], "before-id": ids[3]})).results == []

    # RSM paging inside an id range: the later lower bound and the earlier upper bound win.
    assert (await mam(alice, {"after-id": ids[3]}, {"after": ids[6], "max": 2})).ids == ids[7:9]
    assert (await mam(alice, {"after-id": ids[6]}, {"after": ids[3], "max": 2})).ids == ids[7:9]
    assert (await mam(alice, {"after-id": ids[3]}, {"before": "", "max": 2})).ids == ids[18:20]
    assert (
        await mam(alice, {"after-id": ids[3], "before-id": ids[12]}, {"before": "", "max": 2})
    ).ids == ids[10:12]

    picked = await mam(alice, {"ids": [ids[7], ids[3], ids[7]]})
    assert picked.ids == [ids[3], ids[7]]
    assert picked.count == 2
    assert (await mam(alice, {"ids": [ids[3], ids[7]], "with": f"carol@{DOMAIN}"})).results == []


@pytest.mark.parametrize(
    ("fields", "rsm"),
    [
        ({"after-id": "no-such-id"}, None),
        ({"before-id": "no-such-id"}, None),
        ({"ids": ["no-such-id"]}, None),
        ({"ids": ["KNOWN", "no-such-id"]}, None),
        ({"after-id": "KNOWN", "before-id": "no-such-id"}, None),
        (None, {"after": "no-such-id"}),
        (None, {"before": "no-such-id"}),
        ({"after-id": "KNOWN"}, {"after": "no-such-id"}),
    ],
)
async def test_an_unknown_id_is_item_not_found(
    server: Server, clients: Clients, fields: dict[str, Any] | None, rsm: dict[str, str] | None
) -> None:
    alice_jid = await clients.user("alice")
    alice, _ = await online(clients, alice_jid)
    [known] = await fill(server, "alice", 1)
    await clients.user("bob")
    await fill(server, "bob", 1)  # somebody else's id is not in alice's archive either

    def real(value: Any) -> Any:
        return [real(v) for v in value] if isinstance(value, list) else known if value == "KNOWN" else value

    fields = {var: real(value) for var, value in fields.items()} if fields else None
    assert await refused(mam(alice, fields, rsm)) == "item-not-found"


# -- queries: paging (XEP-0059) ------------------------------------------------------------------------------


async def test_pages_carry_first_last_count_and_index(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    ids = await fill(server, "alice", 25)

    one = await mam(alice, rsm={"max": 10})
    assert (one.ids, one.complete, one.count, one.first_index) == (ids[:10], False, 25, 0)
    assert (one.rsm("first"), one.rsm("last")) == (ids[0], ids[9])
    two = await mam(alice, rsm={"max": 10, "after": ids[9]})
    assert (two.ids, two.complete, two.first_index) == (ids[10:20], False, 10)
    three = await mam(alice, rsm={"max": 10, "after": ids[19]})
    assert (three.ids, three.complete, three.first_index) == (ids[20:], True, 20)

    # The last page, then backward (§4.3.3): pages stay in chronological order.
    last = await mam(alice, rsm={"max": 10, "before": ""})
    assert (last.ids, last.complete, last.first_index) == (ids[15:], False, 15)
    previous = await mam(alice, rsm={"max": 10, "before": ids[15]})
    assert (previous.ids, previous.complete, previous.first_index) == (ids[5:15], False, 5)
    oldest = await mam(alice, rsm={"max": 10, "before": ids[5]})
    assert (oldest.ids, oldest.complete, oldest.first_index) == (ids[:5], True, 0)

    # XEP-0059 §2.7: max 0 asks for the count only.
    counted = await mam(alice, rsm={"max": 0})
    assert (counted.results, counted.count, counted.rsm("first")) == ([], 25, None)
    # §2.6: index 0 is the first page; other indexes would need out-of-order paging.
    assert (await mam(alice, rsm={"max": 3, "index": 0})).ids == ids[:3]

    flipped = await mam(alice, rsm={"max": 3}, extra=f"<flip-page xmlns='{MAM}'/>")
    assert flipped.ids == [ids[2], ids[1], ids[0]]
    assert flipped.rsm("first") == ids[0]


async def test_an_empty_archive_answers_an_empty_complete_page(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))

    page = await mam(alice, rsm={"max": 10, "before": ""})

    assert (page.results, page.complete, page.count, page.rsm("first"), page.rsm("last")) == (
        [],
        True,
        0,
        None,
        None,
    )


async def test_page_size_defaults_and_a_max_of_a_billion_is_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slixmpp knows the RFC 3920 conditions only; teach it RFC 6120's policy-violation for this test.
    monkeypatch.setattr(StanzaErrorPlugin, "conditions", StanzaErrorPlugin.conditions | {"policy-violation"})
    async with running_server(make_config(tmp_path, archive={"max_page_size": 10})) as server:
        clients = Clients(server)
        try:
            alice, _ = await online(clients, await clients.user("alice"))
            ids = await fill(server, "alice", 25)

            huge = await mam(alice, rsm={"max": 10**9})
            assert (huge.ids, huge.complete, huge.count) == (ids[:10], False, 25)
            assert (await mam(alice)).ids == ids[:10]
            assert await refused(mam(alice, {"ids": ids[:11]})) == "policy-violation"
        finally:
            await clients.close_all()


@pytest.mark.slow
async def test_page_through_ten_thousand_messages_both_ways(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    ids = await bulk_fill(server, "alice", 10_000, [f"contact{n}" for n in range(50)])

    forward: list[str | None] = []
    after: str | None = None
    while True:
        page = await mam(alice, rsm={"max": 100, **({"after": after} if after else {})})
        assert page.first_index == len(forward)
        assert page.count == 10_000
        forward += page.ids
        after = page.rsm("last")
        if page.complete:
            break
    assert forward == ids

    backward: list[str | None] = []
    before = ""
    while True:
        page = await mam(alice, rsm={"max": 100, "before": before})
        assert page.first_index == 10_000 - len(backward) - len(page.ids)
        backward = page.ids + backward
        before = page.rsm("first") or ""
        if page.complete:
            break
    assert backward == ids


# -- queries: bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "rsm", "expected"),
    [
        (form_xml({"start": "yesterday"}), None, "bad-request"),
        (form_xml({"start": "2024-03-01"}), None, "bad-request"),  # XEP-0082 DateTime needs a time
        (form_xml({"end": "2024-03-01T12:00:00"}), None, "bad-request"),  # ... and a zone
        (form_xml({"end": "2024-13-01T12:00:00Z"}), None, "bad-request"),
        (form_xml({"with": "@bad"}), None, "bad-request"),
        (form_xml({"with": ["a@b", "c@d"]}), None, "bad-request"),
        (form_xml({"after-id": ""}), None, "bad-request"),
        (form_xml({"include-groupchat": "maybe"}), None, "bad-request"),
        (form_xml({}, form_type="urn:xmpp:mam:1"), None, "bad-request"),
        (f"<x xmlns='{XDATA}' type='result'/>", None, "bad-request"),
        (
            f"<x xmlns='{XDATA}' type='submit'><field var='with' type='bogus'><value>x</value></field></x>",
            None,
            "bad-request",
        ),
        (
            form_xml({"with": "a@b"}).replace("</x>", "<field var='with'><value>c@d</value></field></x>"),
            None,
            "bad-request",
        ),
        (form_xml({"{urn:example}full-text": "juliet"}), None, "feature-not-implemented"),  # §4.1.5
        ("", {"max": -1}, "bad-request"),
        ("", {"max": "lots"}, "bad-request"),
        ("", {"after": ""}, "bad-request"),
        ("", {"max": 10, "index": 20}, "feature-not-implemented"),  # XEP-0059 §2.6 is optional
    ],
)
async def test_malformed_queries_are_refused(
    clients: Clients, form: str, rsm: dict[str, Any] | None, expected: str
) -> None:
    alice, _ = await online(clients, await clients.user("alice"))

    assert await refused(mam(alice, rsm=rsm, form=form)) == expected


async def test_a_query_without_a_form_type_is_accepted(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    ids = await fill(server, "alice", 3)

    assert (await mam(alice, form=form_xml({"after-id": ids[0]}, form_type=None))).ids == ids[1:]


async def test_someone_elses_archive_is_forbidden(server: Server, clients: Clients) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    alice, _ = await online(clients, alice_jid)
    await fill(server, "bob", 3)

    assert await refused(mam(alice, to=bob_jid)) == "forbidden"
    assert await refused(mam(alice, to=DOMAIN)) == "service-unavailable"  # the server keeps no archive
    assert (await mam(alice, to=alice_jid)).results == []


async def test_a_pubsub_node_query_is_item_not_found(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    iq = alice.make_iq_set()
    iq.xml.append(ET.fromstring(f"<query xmlns='{MAM}' node='urn:xmpp:microblog:0'/>"))
    assert await refused(iq.send(timeout=10)) == "item-not-found"


# -- discovery: form, metadata, disco features ---------------------------------------------------------------


async def test_the_query_form_lists_every_field(clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))

    form = await alice.plugin["xep_0313"].get_fields(timeout=10)

    fields = form.get_fields()
    assert form.xml.findtext(f"{{{XDATA}}}field[@var='FORM_TYPE']/{{{XDATA}}}value") == MAM
    assert {var: fields[var]["type"] for var in fields if var != "FORM_TYPE"} == {
        "with": "jid-single",
        "start": "text-single",
        "end": "text-single",
        "before-id": "text-single",
        "after-id": "text-single",
        "ids": "list-multi",
        "include-groupchat": "boolean",
    }
    assert not any(fields[var]["required"] for var in fields)  # §4.1: nothing is required
    validate = form.xml.find(
        f"{{{XDATA}}}field[@var='ids']/{{http://jabber.org/protocol/xdata-validate}}validate"
    )
    assert validate is not None
    assert validate.find("{http://jabber.org/protocol/xdata-validate}open") is not None


async def test_metadata_names_the_first_and_last_message(server: Server, clients: Clients) -> None:
    alice, _ = await online(clients, await clients.user("alice"))
    assert len(await iq_set(alice, f"<metadata xmlns='{MAM}'/>", get=True)) == 0  # an empty archive

    ids = await fill(server, "alice", 5)

    metadata = await iq_set(alice, f"<metadata xmlns='{MAM}'/>", get=True)
    start, end = metadata.find(f"{{{MAM}}}start"), metadata.find(f"{{{MAM}}}end")
    assert start is not None
    assert end is not None
    assert (start.get("id"), start.get("timestamp")) == (ids[0], stamp(T0))
    assert (end.get("id"), end.get("timestamp")) == (ids[4], stamp(T0 + datetime.timedelta(minutes=4)))


async def test_account_and_server_advertise_mam_and_stanza_ids(clients: Clients) -> None:
    alice_jid = await clients.user("alice")
    alice, _ = await online(clients, alice_jid)
    wanted = {MAM, f"{MAM}#extended", SID}

    account = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(alice_jid), timeout=10)
    server = await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), timeout=10)

    assert wanted <= set(account["disco_info"]["features"])
    assert wanted <= set(server["disco_info"]["features"])


# -- retention -----------------------------------------------------------------------------------------------


async def test_retention_deletes_the_oldest_messages_at_start(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    async with running_server(make_config(tmp_path)) as server:
        await Clients(server).user("alice")
        await fill(server, "alice", 3, start=now - datetime.timedelta(days=3))
        [recent] = await fill(server, "alice", 1, start=now)

    async with running_server(make_config(tmp_path, archive={"retention_days": 2})) as server:
        for _ in range(250):
            if await server.storage.archive.count("alice") == 1:
                break
            await asyncio.sleep(0.02)
        page = await server.storage.archive.query("alice", ArchiveQuery())
        assert [message.id for message in page.messages] == [recent]


async def test_archives_expire_after_a_week_by_default(tmp_path: Path) -> None:
    """Issue 11 item 5: the shipped default keeps a week, as Prosody's archive_expires_after; 0 is forever."""
    assert ArchiveSection().retention_days == 7
    now = datetime.datetime.now(datetime.UTC)
    async with running_server(make_config(tmp_path)) as server:  # the tests' config keeps everything
        await Clients(server).user("alice")
        await fill(server, "alice", 2, start=now - datetime.timedelta(days=8))
        kept = await fill(server, "alice", 1, start=now - datetime.timedelta(days=6))

    shipped = dataclasses.replace(make_config(tmp_path), archive=ArchiveSection())
    async with running_server(shipped) as server:
        for _ in range(250):
            if await server.storage.archive.count("alice") == 1:
                break
            await asyncio.sleep(0.02)
        page = await server.storage.archive.query("alice", ArchiveQuery())
        assert [message.id for message in page.messages] == kept

    forever = make_config(tmp_path, archive={"retention_days": 0})
    async with running_server(forever) as server:
        await fill(server, "alice", 1, start=now - datetime.timedelta(days=3650))
    async with running_server(forever) as server:
        await asyncio.sleep(0.2)
        assert await server.storage.archive.count("alice") == 2  # nothing expires
