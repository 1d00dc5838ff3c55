"""XEP-0227 export and import: a round trip through `nitro export` / `nitro import` keeps every byte, logins
keep working, and files written by Prosody's own exporter (and ejabberd's password forms) import."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, Clients, reject, resolve, started_server
from lxml import etree
from test_admin_channel import nitro, write_config

from nitro.accounts import create_account
from nitro.config import Config, load_config
from nitro.storage import ArchiveQuery, PepItem, PepNode, RosterItem, Storage
from nitro.storage.layered import open_storage
from nitro.xmpp.sasl.credentials import derive_credential

FIXTURE = Path(__file__).parent / "fixtures" / "prosody-0.12"
NOW = datetime.datetime(2026, 5, 4, 12, 30, 15, 123456, tzinfo=datetime.UTC)


@pytest.fixture
def first(tmp_path: Path) -> Path:
    (tmp_path / "a").mkdir()
    return write_config(tmp_path / "a")


@pytest.fixture
def second(tmp_path: Path) -> Path:
    (tmp_path / "b").mkdir()
    return write_config(tmp_path / "b")


@contextlib.asynccontextmanager
async def storage_of(config_file: Path) -> AsyncIterator[Storage]:
    async with open_storage(load_config(config_file)) as storage:
        yield storage


async def fill(storage: Storage) -> None:
    """One of each thing an account holds, with the flags a round trip could lose."""
    for name in ("alice", "bob"):
        await create_account(storage, name, PASSWORD)
    roster = storage.rosters
    await roster.put("alice", RosterItem(f"bob@{DOMAIN}", "Bob", "both", groups=("Friends", "Tea")))
    await roster.put("alice", RosterItem("dave@remote.example", None, "to", ask=False, approved=True))
    await roster.put("alice", RosterItem("eve@remote.example", "Eve", "none", ask=True, pending_in=True))
    await roster.put("alice", RosterItem("mallory@remote.example", pending_in=True, in_roster=False))
    await storage.vcards.set(
        "alice", b"<vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard>"
    )
    await storage.private.set(
        "alice",
        "{storage:bookmarks}storage",
        b"<storage xmlns='storage:bookmarks'><url name='x' url='https://x'/></storage>",
    )
    await storage.private.set(
        "alice", "{urn:example}prefs", b"<prefs xmlns='urn:example' a='1'>text &amp; more</prefs>"
    )
    offline = (
        "<message xmlns='jabber:client' from='bob@localhost/phone' to='alice@localhost' id='m{n}'>"
        "<body>offline {n} &lt;3</body>"
        "<delay xmlns='urn:xmpp:delay' from='localhost' stamp='2026-05-0{n}T10:00:00Z'/></message>"
    )
    for n in (1, 2):
        await storage.offline.push("alice", offline.format(n=n).encode(), quota=10)
    await storage.pep.put_node("alice", PepNode("urn:xmpp:avatar:metadata", "open", 1))
    await storage.pep.put_node("alice", PepNode("secret", "whitelist", 3, whitelist=(f"bob@{DOMAIN}",)))
    for n in (1, 2, 3):
        item = PepItem(f"id{n}", f"<note xmlns='urn:example:note'>note {n}</note>".encode(), NOW)
        await storage.pep.publish("alice", "secret", item, max_items=3)
    meta = (
        b"<metadata xmlns='urn:xmpp:avatar:metadata'><info id='abc' bytes='10' type='image/png'/></metadata>"
    )
    await storage.pep.publish("alice", "urn:xmpp:avatar:metadata", PepItem("abc", meta, NOW), max_items=1)
    for n in range(3):
        stanza = (
            f"<message xmlns='jabber:client' from='alice@localhost/a' to='bob@localhost' id='a{n}'>"
            f"<body>archived {n}</body></message>"
        ).encode()
        when = NOW + datetime.timedelta(seconds=n)
        await storage.archive.append(
            "alice", with_jid=f"bob@{DOMAIN}", stanza=stanza, stanza_id=f"sid{n}", timestamp=when
        )
    await storage.blocklist.add("alice", ["spam@remote.example", "remote.example/bot"])


def c14n(data: bytes) -> str:
    canonical: str = etree.canonicalize(data.decode())  # lxml-stubs leave its result untyped
    return canonical


async def snapshot(storage: Storage, username: str) -> dict[str, Any]:
    """Everything stored for `username`, in a form two databases can be compared by."""
    roster = await storage.rosters.get(username)
    nodes = await storage.pep.list_nodes(username)
    archive = await storage.archive.query(username, ArchiveQuery(limit=100))
    return {
        "credentials": await storage.accounts.get_credentials(username),
        "roster": sorted(roster.items, key=lambda item: item.jid),
        "vcard": c14n(vcard) if (vcard := await storage.vcards.get(username)) else None,
        "private": [
            c14n(data) if (data := await storage.private.get(username, key)) else None
            for key in ("{storage:bookmarks}storage", "{urn:example}prefs")
        ],
        "offline": [c14n(m.stanza) for m in await storage.offline.list(username)],
        "pep": nodes,
        "pep_items": {
            node.name: [(i.id, c14n(i.payload)) for i in await storage.pep.items(username, node.name)]
            for node in nodes
        },
        "archive": [(m.id, m.with_jid, m.timestamp, c14n(m.stanza)) for m in archive.messages],
        "blocked": await storage.blocklist.list(username),
    }


async def test_export_then_import_into_a_fresh_database_keeps_everything(
    first: Path, second: Path, tmp_path: Path, clients_for: ClientsFor
) -> None:
    async with storage_of(first) as storage:
        await fill(storage)
        expected = {name: await snapshot(storage, name) for name in ("alice", "bob")}
    exported = tmp_path / "export.xml"

    code, _out, err = await nitro(first, "export", str(exported))
    assert code == 0, err
    assert "exported 2 accounts, 3 roster items, 1 vCards, 2 private XML elements, 2 offline messages" in err
    code, _out, err = await nitro(second, "import", str(exported))
    assert code == 0, err
    assert (
        "imported 2 accounts, 3 roster items, 1 vCards, 2 private XML elements, 2 offline messages, " in err
    )
    assert "2 PEP nodes with 4 items, 3 archived messages, 2 blocked JIDs" in err

    async with storage_of(second) as storage:
        for name in ("alice", "bob"):
            assert await snapshot(storage, name) == expected[name]
    again = tmp_path / "again.xml"
    assert (await nitro(second, "export", str(again)))[0] == 0
    assert again.read_bytes() == exported.read_bytes()  # nothing lost, nothing added, same order
    async with clients_for(second) as clients:  # the old password, SCRAM-SHA-256 (slixmpp's first choice)
        await clients.login(f"alice@{DOMAIN}")
        await clients.login(f"bob@{DOMAIN}", sasl_mech="SCRAM-SHA-1")


async def test_prosody_s_own_export_imports(second: Path, tmp_path: Path, clients_for: ClientsFor) -> None:
    """tests/fixtures/prosody-0.12: written by Debian's Prosody 0.12.3 (prosody-migrator to its xep0227
    storage, see tests/prosody_export.py) from accounts filled by real clients."""
    await import_prosody_files(second, sorted(FIXTURE.glob("*.xml")), clients_for)


@pytest.mark.slow
async def test_a_fresh_prosody_export_imports(
    second: Path, prosody_directory: Path, clients_for: ClientsFor
) -> None:
    from prosody_export import make_export

    exported = await make_export(prosody_directory / "prosody")
    await import_prosody_files(second, sorted(exported.glob("*.xml")), clients_for)


@pytest.fixture
def prosody_directory() -> Any:
    """A directory Prosody (running as its own user) can reach: pytest's tmp_path is private to root."""
    if shutil.which("prosody") is None or shutil.which("lua5.4") is None:
        pytest.skip("Debian's prosody is not installed (apt-get install prosody)")
    directory = Path(tempfile.mkdtemp(prefix="nitro-prosody-"))
    os.chmod(directory, 0o755)  # noqa: S103  # traversable by the prosody user, written by it only below
    yield directory
    shutil.rmtree(directory)


@pytest.mark.slow
async def test_prosody_imports_nitro_s_per_user_export(first: Path, prosody_directory: Path) -> None:
    """The other way: `export --per-user` writes what Prosody's own migrator reads; alice logs in there
    with her password (Prosody picks the SCRAM-SHA-1 keys) and finds her roster."""
    from prosody_export import prosody_logs_in

    async with storage_of(first) as storage:
        await fill(storage)
    files = prosody_directory / "from-nitro"
    code, _out, err = await nitro(first, "export", "--per-user", str(files))
    assert code == 0, err
    assert sorted(path.name for path in files.iterdir()) == [f"alice@{DOMAIN}.xml", f"bob@{DOMAIN}.xml"]

    roster = await prosody_logs_in(prosody_directory / "prosody", files, f"alice@{DOMAIN}", PASSWORD)

    assert f"bob@{DOMAIN}" in roster
    assert "dave@remote.example" in roster


async def import_prosody_files(config_file: Path, files: list[Path], clients_for: ClientsFor) -> None:
    code, _out, err = await nitro(config_file, "import", *map(str, files))
    assert code == 0, err
    assert "imported 3 accounts" in err
    async with storage_of(config_file) as storage:
        credentials = await storage.accounts.get_credentials("alice")
        assert credentials is not None
        assert set(credentials) == {"SHA-1"}  # Prosody keeps one hash (password_hash, SHA-1 by default)
        roster = {item.jid: item for item in (await storage.rosters.get("alice")).items}
        assert roster[f"bob@{DOMAIN}"] == RosterItem(f"bob@{DOMAIN}", "Bob", "both", groups=("Friends",))
        assert roster[f"carol@{DOMAIN}"] == RosterItem(f"carol@{DOMAIN}", pending_in=True, in_roster=False)
        carol = (await storage.rosters.get("carol")).items
        assert carol == (RosterItem(f"alice@{DOMAIN}", subscription="none", ask=True),)
        notes = await storage.private.get("alice", "{storage:rosternotes}storage")
        assert notes is not None
        assert b"met at the tea party" in notes
        nodes = {node.name: node for node in await storage.pep.list_nodes("alice")}
        assert nodes["urn:xmpp:vcard4"].access_model == "open"
        assert nodes["http://jabber.org/protocol/nick"].access_model == "presence"
        (nick,) = await storage.pep.items("alice", "http://jabber.org/protocol/nick")
        assert nick.id == "current"
        assert b"Queen Alice" in nick.payload
        archive = (await storage.archive.query("alice", ArchiveQuery(limit=10))).messages
        assert [m.with_jid for m in archive] == [f"bob@{DOMAIN}", f"bob@{DOMAIN}"]
        assert b"hello bob" in archive[0].stanza
        assert archive[0].timestamp < archive[1].timestamp
        bob_archive = (await storage.archive.query("bob", ArchiveQuery(limit=10))).messages
        assert [m.with_jid for m in bob_archive] == [f"alice@{DOMAIN}", f"alice@{DOMAIN}"]
    async with clients_for(config_file) as clients:  # Prosody's SCRAM-SHA-1 keys, the password it was given
        await clients.login(f"alice@{DOMAIN}", "alice-s3cret", sasl_mech="SCRAM-SHA-1")
        await clients.login(f"carol@{DOMAIN}", "carol-s3cret", sasl_mech="PLAIN")


async def test_ejabberd_password_forms_import(second: Path, tmp_path: Path, clients_for: ClientsFor) -> None:
    """Written by hand in the forms ejabberd's export_piefxis uses (no ejabberd package here): the old
    namespace, a plain password attribute, `scram:` passwords (SHA-1 and sha256:) and an xi:include."""
    sha1 = derive_credential("scram-one", "SHA-1", iterations=4096)
    sha256 = derive_credential("scram-two", "SHA-256", iterations=4096)

    def scram(prefix: str, c: Any) -> str:
        parts = (c.stored_key, c.server_key, c.salt)
        return f"scram:{prefix}" + ",".join(base64.b64encode(p).decode() for p in parts) + f",{c.iterations}"

    (tmp_path / "localhost.xml").write_text(
        "<?xml version='1.0' encoding='UTF-8'?>"
        "<host xmlns='http://www.xmpp.org/extensions/xep-0227.html#ns' jid='localhost'>"
        "<user name='plain' password='pl4in-pass'><query xmlns='jabber:iq:roster'>"
        "<item jid='one@localhost' subscription='from'/></query>"
        "<offline-messages><message xmlns='jabber:client' from='one@localhost' to='plain@localhost'>"
        "<body>hi</body></message></offline-messages></user>"
        f"<user name='one' password='{scram('', sha1)}'/>"
        f"<user name='two' password='{scram('sha256:', sha256)}'/>"
        "</host>"
    )
    main = tmp_path / "ejabberd.xml"
    main.write_text(
        "<?xml version='1.0' encoding='UTF-8'?><server-data xmlns='http://www.xmpp.org/extensions/xep-0227.html#ns'"
        " xmlns:xi='http://www.w3.org/2001/XInclude'><xi:include href='localhost.xml'/></server-data>"
    )

    code, _out, err = await nitro(second, "import", str(main))

    assert code == 0, err
    assert "imported 3 accounts, 1 roster items, 0 vCards, 0 private XML elements, 1 offline messages" in err
    async with storage_of(second) as storage:
        (message,) = await storage.offline.list("plain")
        assert b"urn:xmpp:delay" in message.stanza  # a stamp added where the file had none (XEP-0160)
    async with clients_for(second) as clients:
        await clients.login(f"plain@{DOMAIN}", "pl4in-pass")
        await clients.login(f"one@{DOMAIN}", "scram-one", sasl_mech="SCRAM-SHA-1")
        await clients.login(f"two@{DOMAIN}", "scram-two", sasl_mech="SCRAM-SHA-256")


async def test_what_cannot_be_imported_is_named_and_the_rest_goes_on(second: Path, tmp_path: Path) -> None:
    async with storage_of(second) as storage:
        await create_account(storage, "taken", "original-pass")
    good = derive_credential("pw-good", "SHA-1", iterations=4096)
    document = tmp_path / "mixed.xml"
    document.write_text(
        "<server-data xmlns='urn:xmpp:pie:0'>"
        "<host jid='elsewhere.example'><user name='far' password='x'/></host>"
        "<host jid='localhost'>"
        "<user name='no credentials'/>"
        "<user name='nokeys'/>"
        "<user name='taken' password='new-pass'/>"
        "<user name='broken'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>"
        "<iter-count>many</iter-count></scram-credentials></user>"
        f"<user name='fine'><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>"
        f"<iter-count>4096</iter-count><salt>{base64.b64encode(good.salt).decode()}</salt>"
        f"<server-key>{base64.b64encode(good.server_key).decode()}</server-key>"
        f"<stored-key>{base64.b64encode(good.stored_key).decode()}</stored-key></scram-credentials></user>"
        "</host></server-data>"
    )

    code, _out, err = await nitro(second, "import", str(document))

    assert code == 1
    assert "host 'elsewhere.example' skipped: this is localhost" in err
    assert "user 'no credentials' not imported: " in err
    assert "user 'nokeys' not imported: no SCRAM-SHA-1 or SCRAM-SHA-256 credentials and no password" in err
    assert "user 'taken' not imported: the account exists here (--replace deletes and imports it)" in err
    assert "user 'broken' not imported: SCRAM-SHA-1 credentials: " in err
    assert "imported 1 accounts" in err
    async with storage_of(second) as storage:
        assert await storage.accounts.list_usernames() == ["fine", "taken"]
    code, _out, err = await nitro(second, "import", "--replace", str(document))
    assert "imported 2 accounts" in err  # fine and taken, replaced
    doctype = tmp_path / "doctype.xml"
    doctype.write_text(
        "<!DOCTYPE x [<!ENTITY e 'boom'>]><server-data xmlns='urn:xmpp:pie:0'>&e;</server-data>"
    )
    code, _out, err = await nitro(second, "import", str(doctype))
    assert code == 1
    assert "a DOCTYPE is not allowed in an export" in err


async def test_export_refuses_a_missing_database(tmp_path: Path) -> None:
    config_file = write_config(tmp_path)
    code, _out, err = await nitro(config_file, "export", str(tmp_path / "out.xml"))
    assert code == 1
    assert "no database at" in err
    assert not (tmp_path / "out.xml").exists()
    assert not (tmp_path / "nitro.db").exists()


class LoginClients(Clients):
    async def login(  # Clients.login, or a minimal login with one SASL mechanism
        self, jid: str, password: str = PASSWORD, *args: Any, sasl_mech: str | None = None, **kw: Any
    ) -> slixmpp.ClientXMPP:
        if sasl_mech is None:
            return await super().login(jid, password, *args, **kw)
        client = slixmpp.ClientXMPP(jid, password, sasl_mech=sasl_mech)
        client.register_plugin("xep_0030")
        client.ca_certs = self.server.config.path(self.server.config.tls.cert)
        client.enable_direct_tls = False
        self.connected.append(client)
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start", lambda _e: resolve(started, True))
        client.add_event_handler(
            "failed_all_auth", lambda _e: reject(started, AssertionError(f"{jid}: auth failed"))
        )
        await self.connect(client)
        await asyncio.wait_for(started, 15)
        return client


ClientsFor = Callable[[Path], contextlib.AbstractAsyncContextManager[LoginClients]]


@pytest.fixture
def clients_for() -> ClientsFor:
    @contextlib.asynccontextmanager
    async def running(config_file: Path) -> AsyncIterator[LoginClients]:
        config: Config = load_config(config_file)
        async with started_server(config) as server:
            pool = LoginClients(server)
            try:
                yield pool
            finally:
                await pool.close_all()

    return running
