"""The SQL storage layer on a real SQLite file: accounts, rosters, offline messages, migrations, faults."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateTable
from sqlbackends import SqlBackend

from nitro.storage import (
    AlreadyExists,
    NoSuchAccount,
    QuotaExceeded,
    Roster,
    RosterItem,
    Storage,
    StorageError,
    StorageUnavailable,
    codecs,
    sql_roster,
)
from nitro.storage.models import LastActivity, Subscription
from nitro.storage.schema import metadata
from nitro.storage.sql import alembic_config, create_engine, open_database, open_sql_storage
from nitro.xmpp.sasl.credentials import HashName, ScramCredential


def credential(hash_name: HashName, seed: int) -> ScramCredential:
    size = 20 if hash_name == "SHA-1" else 32
    return ScramCredential(
        hash_name=hash_name,
        salt=bytes([seed]) * 16,
        iterations=4096 + seed,
        stored_key=bytes([seed]) * size,
        server_key=bytes([seed + 1]) * size,
    )


def credentials(seed: int) -> dict[HashName, ScramCredential]:
    return {"SHA-1": credential("SHA-1", seed), "SHA-256": credential("SHA-256", seed)}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "nitro.db"  # "data" does not exist yet: open_sql_storage creates it


@pytest.fixture
def dsn(db_path: Path) -> str:
    return f"sqlite+aiosqlite:///{db_path}"


@pytest.fixture
async def storage(sql_backend: SqlBackend) -> AsyncIterator[Storage]:
    """Juliet and Romeo's accounts, once on each SQL backend."""
    async with open_sql_storage(sql_backend.dsn) as storage:
        await storage.accounts.create("juliet", credentials(1))
        await storage.accounts.create("romeo", credentials(2))
        yield storage


@pytest.fixture
async def sqlite_storage(dsn: str) -> AsyncIterator[Storage]:
    """The same on SQLite only, for tests that read the file behind the repositories' back."""
    async with open_sql_storage(dsn) as storage:
        await storage.accounts.create("juliet", credentials(1))
        await storage.accounts.create("romeo", credentials(2))
        yield storage


def raw_rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another process reading the file sees."""
    connection = sqlite3.connect(db_path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


# --- accounts --------------------------------------------------------------------------------------------


async def test_created_account_has_its_credentials(storage: Storage) -> None:
    assert await storage.accounts.get_credentials("juliet") == credentials(1)
    assert await storage.accounts.exists("juliet")
    assert not await storage.accounts.exists("nurse")
    assert await storage.accounts.get_credentials("nurse") is None


async def test_account_with_only_one_hash(storage: Storage) -> None:
    await storage.accounts.create("nurse", {"SHA-256": credential("SHA-256", 7)})
    assert await storage.accounts.get_credentials("nurse") == {"SHA-256": credential("SHA-256", 7)}


async def test_creating_an_existing_account_fails_and_keeps_the_old_one(storage: Storage) -> None:
    with pytest.raises(AlreadyExists):
        await storage.accounts.create("juliet", credentials(9))
    assert await storage.accounts.get_credentials("juliet") == credentials(1)
    assert await storage.accounts.count() == 2


async def test_usernames_compare_exactly(storage: Storage) -> None:
    # Prepared localparts are already case-folded; the store itself must not fold or normalise.
    await storage.accounts.create("Juliet", credentials(3))
    await storage.accounts.create("julïet", credentials(4))
    assert await storage.accounts.get_credentials("Juliet") == credentials(3)
    assert await storage.accounts.get_credentials("juliet") == credentials(1)


async def test_set_credentials_replaces_all_of_them(storage: Storage) -> None:
    assert await storage.accounts.set_credentials("juliet", {"SHA-256": credential("SHA-256", 5)})
    assert await storage.accounts.get_credentials("juliet") == {"SHA-256": credential("SHA-256", 5)}
    assert await storage.accounts.get_credentials("romeo") == credentials(2)
    assert not await storage.accounts.set_credentials("nurse", credentials(5))
    assert not await storage.accounts.exists("nurse")


async def test_credential_filed_under_another_hash_is_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="filed under"):
        await storage.accounts.create("nurse", {"SHA-1": credential("SHA-256", 1)})
    assert not await storage.accounts.exists("nurse")


async def test_delete_account(storage: Storage) -> None:
    assert await storage.accounts.delete("juliet")
    assert not await storage.accounts.exists("juliet")
    assert await storage.accounts.get_credentials("juliet") is None
    assert not await storage.accounts.delete("juliet")
    assert await storage.accounts.list_usernames() == ["romeo"]


async def test_list_usernames_sorted_paged_and_counted(storage: Storage) -> None:
    for name in ("zoë", "ärger", "benvolio", "tybalt", "中文"):
        await storage.accounts.create(name, {})
    everyone = ["benvolio", "juliet", "romeo", "tybalt", "zoë", "ärger", "中文"]  # code point order
    assert await storage.accounts.list_usernames() == everyone
    assert await storage.accounts.count() == 7
    assert await storage.accounts.list_usernames(limit=3) == everyone[:3]
    assert await storage.accounts.list_usernames(limit=3, after="romeo") == everyone[3:6]
    assert await storage.accounts.list_usernames(after="ärger") == ["中文"]
    assert await storage.accounts.list_usernames(after="中文") == []
    assert await storage.accounts.list_usernames(limit=0) == []


async def test_write_is_in_the_file_when_the_call_returns(sqlite_storage: Storage, db_path: Path) -> None:
    storage = sqlite_storage
    await storage.accounts.create("nurse", credentials(3))
    assert raw_rows(db_path, "SELECT username FROM accounts WHERE username = CAST('nurse' AS BLOB)") == [
        (b"nurse",)
    ]


async def test_longest_localpart_and_contact(storage: Storage) -> None:
    localpart = "a" + "é" * 511  # RFC 7622 §3.3.1: 1023 bytes of UTF-8
    contact = "c" * 1023 + "@" + "d" * 1023 + "ü" * 512  # 3071 bytes
    assert len(localpart.encode()) == 1023
    assert len(contact.encode()) == 3071
    await storage.accounts.create(localpart, credentials(6))
    assert await storage.accounts.get_credentials(localpart) == credentials(6)
    assert await storage.rosters.put(localpart, RosterItem(contact, name="long")) == 1
    assert await storage.rosters.get_item(localpart, contact) == RosterItem(contact, name="long")
    assert localpart in await storage.accounts.list_usernames()


async def test_too_long_names_are_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="1023"):
        await storage.accounts.create("é" * 512, {})
    with pytest.raises(ValueError, match="3071"):
        await storage.rosters.put("juliet", RosterItem("x" * 3072))


# --- rosters ---------------------------------------------------------------------------------------------


async def test_roster_put_get_remove_with_versions(storage: Storage) -> None:
    assert await storage.rosters.get("juliet") == Roster(version=0, items=())
    assert await storage.rosters.version("juliet") == 0

    nurse = RosterItem("nurse@capulet.lit", name="Nurse", subscription="both", groups=("Family",))
    romeo = RosterItem("romeo@montague.lit", subscription="to", ask=True, approved=True)
    assert await storage.rosters.put("juliet", nurse) == 1
    assert await storage.rosters.put("juliet", romeo) == 2
    roster = await storage.rosters.get("juliet")
    assert roster.version == 2
    assert roster.items == (nurse, romeo)
    assert await storage.rosters.get_item("juliet", "romeo@montague.lit") == romeo
    assert await storage.rosters.get_item("juliet", "tybalt@capulet.lit") is None

    assert await storage.rosters.remove("juliet", "nurse@capulet.lit") == 3
    assert await storage.rosters.remove("juliet", "nurse@capulet.lit") is None  # no change, no bump
    assert await storage.rosters.version("juliet") == 3
    assert (await storage.rosters.get("juliet")).items == (romeo,)
    assert await storage.rosters.get("romeo") == Roster(version=0, items=())


async def test_roster_put_replaces_the_item(storage: Storage) -> None:
    await storage.rosters.put("juliet", RosterItem("romeo@montague.lit", pending_in=True))
    both = RosterItem("romeo@montague.lit", name="Romeo", subscription="both", groups=("Love",))
    assert await storage.rosters.put("juliet", both) == 2
    assert (await storage.rosters.get("juliet")).items == (both,)


async def test_roster_names_and_groups_round_trip_unicode(storage: Storage) -> None:
    item = RosterItem(
        "ромео@montague.lit",
        name="Ромео 🌹",
        groups=("Familie Müller", "家族", "עברית", "😀 emoji", "quotes \"'[]{}", ""),
    )
    await storage.rosters.put("juliet", item)
    assert await storage.rosters.get_item("juliet", "ромео@montague.lit") == item
    unnamed = RosterItem("tybalt@capulet.lit", name=None, groups=())
    await storage.rosters.put("juliet", unnamed)
    assert await storage.rosters.get_item("juliet", "tybalt@capulet.lit") == unnamed


async def test_roster_rows_decode_every_field_through_every_read(storage: Storage) -> None:
    """Items are decoded by position from the whole roster, one item, and contacts' items alike; every
    flag on its own."""
    subscriptions: tuple[Subscription, ...] = ("none", "to", "from", "both")
    items = [
        RosterItem(
            f"c{n}@capulet.lit", name=f"C{n}" if n % 2 else None, subscription=sub, groups=(f"g{n}", "all")
        )
        for n, sub in enumerate(subscriptions)
    ]
    items += [
        RosterItem("ask@capulet.lit", ask=True),
        RosterItem("pending@capulet.lit", pending_in=True),
        RosterItem("approved@capulet.lit", approved=True),
    ]
    items.append(RosterItem("stranger@capulet.lit", in_roster=False, pending_in=True, request=b"<presence/>"))
    for item in items:
        await storage.rosters.put("juliet", item)
    by_jid = sorted(items, key=lambda item: item.jid.encode())
    assert (await storage.rosters.get("juliet")).items == tuple(by_jid)
    for item in items:
        assert await storage.rosters.get_item("juliet", item.jid) == item
        assert await storage.rosters.items_for(["juliet", "romeo"], item.jid) == {"juliet": item}


def test_group_lists_are_parsed_once_and_the_parsed_ones_stay_bounded() -> None:
    first = sql_roster._groups('["Friends", "家族"]')
    assert first == ("Friends", "家族")
    assert sql_roster._groups('["Friends", "家族"]') is first  # shared by every item that has it
    texts = [f'["group {n}"]' for n in range(sql_roster._GROUPS_KEPT + 5)]
    assert [sql_roster._groups(text) for text in texts] == [(f"group {n}",) for n in range(len(texts))]
    assert len(sql_roster._GROUPS) <= sql_roster._GROUPS_KEPT
    assert sql_roster._groups("[]") == ()


async def test_equal_roster_items_read_for_different_users_are_one_object(sqlite_storage: Storage) -> None:
    for seed, user in enumerate(("nurse", "tybalt"), 3):
        await sqlite_storage.accounts.create(user, credentials(seed))
    for user in ("juliet", "nurse"):
        await sqlite_storage.rosters.put(user, RosterItem("romeo@montague.lit", subscription="both"))
    await sqlite_storage.rosters.put("tybalt", RosterItem("romeo@montague.lit", subscription="to"))
    juliet, nurse, tybalt = [
        (await sqlite_storage.rosters.get(user)).items[0] for user in ("juliet", "nurse", "tybalt")
    ]
    assert juliet == nurse == RosterItem("romeo@montague.lit", subscription="both")
    assert juliet is nurse  # the rosters cached for online users share it
    assert tybalt == RosterItem("romeo@montague.lit", subscription="to")
    await sqlite_storage.rosters.put("nurse", RosterItem("romeo@montague.lit", subscription="both", name="R"))
    assert (await sqlite_storage.rosters.get("nurse")).items == (
        RosterItem("romeo@montague.lit", "R", "both"),
    )
    assert (await sqlite_storage.rosters.get("juliet")).items == (juliet,)


def test_shared_roster_items_stay_bounded() -> None:
    rows = [
        (f"c{n}@capulet.lit".encode(), None, "both", 0, 0, 0, "[]", 1, None)
        for n in range(sql_roster._ITEMS_KEPT + 5)
    ]
    items = [sql_roster._item_from_row(row) for row in rows]  # type: ignore[arg-type]  # a Row is a tuple
    assert [item.jid for item in items] == [f"c{n}@capulet.lit" for n in range(len(rows))]
    assert len(sql_roster._ITEMS) <= sql_roster._ITEMS_KEPT
    assert sql_roster._item_from_row(rows[-1]) is items[-1]  # type: ignore[arg-type]
    unhashable = (bytearray(b"romeo@montague.lit"), None, "both", 0, 0, 0, "[]", 1, None)
    assert sql_roster._item_from_row(unhashable).jid == "romeo@montague.lit"  # type: ignore[arg-type]
    pending = (b"romeo@montague.lit", None, "none", 0, 1, 0, "[]", 0, b"<presence/>")
    assert sql_roster._item_from_row(pending).request == b"<presence/>"  # type: ignore[arg-type]


async def test_a_roster_row_with_an_unknown_subscription_is_refused(
    sqlite_storage: Storage, db_path: Path
) -> None:
    await sqlite_storage.rosters.put("juliet", RosterItem("romeo@montague.lit", subscription="both"))
    connection = sqlite3.connect(db_path)
    try:
        with connection:
            connection.execute("PRAGMA ignore_check_constraints=ON")
            connection.execute("UPDATE roster_items SET subscription = 'nope'")
    finally:
        connection.close()
    with pytest.raises(StorageError, match="unknown subscription 'nope'"):
        await sqlite_storage.rosters.get("juliet")
    with pytest.raises(StorageError, match="unknown subscription"):
        await sqlite_storage.rosters.get_item("juliet", "romeo@montague.lit")


async def test_a_pending_subscription_request_is_kept_whole(storage: Storage) -> None:
    """RFC 6121 §3.1.3: the request's stanza is stored with the item until it is answered."""
    request = (
        b"<presence xmlns='jabber:client' from='romeo@montague.lit' to='juliet@capulet.lit' type='subscribe'>"
        + "<status>ça va? 🌹</status><preauth xmlns='urn:xmpp:pars:0' token='t'/></presence>".encode()
    )
    pending = RosterItem("romeo@montague.lit", pending_in=True, in_roster=False, request=request)
    await storage.rosters.put("juliet", pending)
    assert await storage.rosters.get_item("juliet", "romeo@montague.lit") == pending
    assert (await storage.rosters.get("juliet")).items == (pending,)
    answered = RosterItem("romeo@montague.lit", subscription="from")
    await storage.rosters.put("juliet", answered)
    assert await storage.rosters.get_item("juliet", "romeo@montague.lit") == answered


def test_the_roster_codec_keeps_the_request_and_reads_items_cached_without_it() -> None:
    pending = RosterItem("romeo@montague.lit", pending_in=True, in_roster=False, request=b"<presence/>")
    roster = Roster(version=7, items=(pending, RosterItem("nurse@capulet.lit")))
    assert codecs.ROSTER.decode(codecs.ROSTER.encode(roster)) == roster
    older = b'\x01[3,[["nurse@capulet.lit",null,"both",8,["Family"]]]]'  # as cached before `request`
    assert codecs.ROSTER.decode(older) == Roster(
        version=3, items=(RosterItem("nurse@capulet.lit", subscription="both", groups=("Family",)),)
    )


def test_cached_sizes_of_rosters_and_block_lists_follow_their_encoded_length() -> None:
    """Without a ring the cache counts a roster's or block list's bytes from an estimate (no encoding only to
    measure it): within 25 % of the encoded length (+ a few bytes), from empty to many items, with Unicode."""
    items = [RosterItem(f"contact{n}@example.com", subscription="both") for n in range(200)]
    unusual = RosterItem(
        "jülïet@capulet.lit",
        name="Juliet «the sun» Capulet",
        subscription="from",
        groups=("Friends", "Verona", "家族"),
        request=b"<presence type='subscribe'><status>hi</status></presence>",
    )
    rosters = [
        Roster(1, ()),
        Roster(2, tuple(items[:1])),
        Roster(3, tuple(items[:20])),
        Roster(4, tuple(items)),
    ]
    rosters += [Roster(5, (unusual,)), Roster(6, (unusual,) * 50)]
    for roster in rosters:
        encoded = len(codecs.ROSTER.encode(roster))
        assert abs(codecs.ROSTER.encoded_size(roster) - encoded) <= encoded // 4 + 16, roster
    for blocked in ([], ["eve@example.com"], [f"spam{n}@bots.example" for n in range(100)]):
        encoded = len(codecs.BLOCKLIST.encode(blocked))
        assert abs(codecs.BLOCKLIST.encoded_size(blocked) - encoded) <= encoded // 4 + 16
    assert codecs.VCARD.encoded_size(b"<vCard/>") == len(codecs.VCARD.encode(b"<vCard/>"))  # no estimate


async def test_roster_quota_counts_new_items_only(storage: Storage) -> None:
    for n in range(3):
        await storage.rosters.put("juliet", RosterItem(f"c{n}@capulet.lit"), max_items=3)
    with pytest.raises(QuotaExceeded):
        await storage.rosters.put("juliet", RosterItem("c3@capulet.lit"), max_items=3)
    assert len((await storage.rosters.get("juliet")).items) == 3
    assert await storage.rosters.version("juliet") == 3  # the refused put changed nothing
    renamed = RosterItem("c0@capulet.lit", name="Nurse")  # replacing an item is no growth
    await storage.rosters.put("juliet", renamed, max_items=3)
    assert await storage.rosters.get_item("juliet", "c0@capulet.lit") == renamed
    await storage.rosters.put("juliet", RosterItem("c3@capulet.lit"))  # no limit given: none applies
    assert len((await storage.rosters.get("juliet")).items) == 4


async def test_roster_of_unknown_user(storage: Storage) -> None:
    assert (await storage.rosters.get("nurse")).items == ()
    assert await storage.rosters.version("nurse") == 0
    assert await storage.rosters.get_item("nurse", "romeo@montague.lit") is None
    assert await storage.rosters.remove("nurse", "romeo@montague.lit") is None
    with pytest.raises(NoSuchAccount):
        await storage.rosters.put("nurse", RosterItem("romeo@montague.lit"))


async def test_concurrent_roster_changes_get_distinct_versions(storage: Storage) -> None:
    versions = await asyncio.gather(
        *(storage.rosters.put("juliet", RosterItem(f"guest{i}@capulet.lit")) for i in range(20))
    )
    assert sorted(versions) == list(range(1, 21))
    roster = await storage.rosters.get("juliet")
    assert roster.version == 20
    assert len(roster.items) == 20


# --- offline messages ------------------------------------------------------------------------------------


async def test_offline_messages_oldest_first_and_delete_a_subset(storage: Storage) -> None:
    before = datetime.now(UTC)
    ids = [await storage.offline.push("juliet", f"<message id='{i}'/>".encode(), quota=10) for i in range(5)]
    assert ids == sorted(ids)
    messages = await storage.offline.list("juliet")
    assert [m.id for m in messages] == ids
    assert [m.stanza for m in messages] == [f"<message id='{i}'/>".encode() for i in range(5)]
    for message in messages:
        assert message.stored_at.tzinfo is UTC
        assert before - timedelta(seconds=1) <= message.stored_at <= datetime.now(UTC)
    assert await storage.offline.count("juliet") == 5

    await storage.offline.delete("juliet", [ids[1], ids[3]])
    assert [m.id for m in await storage.offline.list("juliet")] == [ids[0], ids[2], ids[4]]
    await storage.offline.delete("juliet", [])
    assert await storage.offline.count("juliet") == 3


async def test_offline_ids_are_not_reused(storage: Storage) -> None:
    first = await storage.offline.push("juliet", b"<message/>", quota=10)
    await storage.offline.delete("juliet", [first])
    assert await storage.offline.push("juliet", b"<message/>", quota=10) > first


async def test_offline_quota(storage: Storage) -> None:
    for _ in range(3):
        await storage.offline.push("juliet", b"<message/>", quota=3)
    with pytest.raises(QuotaExceeded):
        await storage.offline.push("juliet", b"<message>over</message>", quota=3)
    assert await storage.offline.count("juliet") == 3
    await storage.offline.push("romeo", b"<message/>", quota=3)  # the quota is per user
    (oldest, *_) = await storage.offline.list("juliet")
    await storage.offline.delete("juliet", [oldest.id])
    await storage.offline.push("juliet", b"<message>fits</message>", quota=3)


async def test_concurrent_pushes_respect_the_quota(storage: Storage) -> None:
    results = await asyncio.gather(
        *(storage.offline.push("juliet", b"<message/>", quota=10) for _ in range(25)), return_exceptions=True
    )
    assert sum(isinstance(r, int) for r in results) == 10
    assert all(isinstance(r, int | QuotaExceeded) for r in results)
    assert await storage.offline.count("juliet") == 10


async def test_offline_messages_are_per_user(storage: Storage) -> None:
    juliet_id = await storage.offline.push("juliet", b"<message>for juliet</message>", quota=10)
    romeo_id = await storage.offline.push("romeo", b"<message>for romeo</message>", quota=10)
    await storage.offline.delete("romeo", [juliet_id])  # not romeo's: nothing happens
    assert [m.stanza for m in await storage.offline.list("juliet")] == [b"<message>for juliet</message>"]
    assert [m.id for m in await storage.offline.list("romeo")] == [romeo_id]
    assert await storage.offline.list("nurse") == []
    assert await storage.offline.count("nurse") == 0
    with pytest.raises(NoSuchAccount):
        await storage.offline.push("nurse", b"<message/>", quota=10)


async def test_large_stanza(storage: Storage) -> None:
    stanza = b"<message><body>" + b"x" * 300_000 + b"</body></message>"
    await storage.offline.push("juliet", stanza, quota=10)
    assert (await storage.offline.list("juliet"))[0].stanza == stanza


# --- account deletion, persistence, migrations -----------------------------------------------------------


async def test_deleting_an_account_deletes_everything_of_it(sqlite_storage: Storage, db_path: Path) -> None:
    storage = sqlite_storage
    await storage.rosters.put("juliet", RosterItem("romeo@montague.lit", subscription="both"))
    await storage.offline.push("juliet", b"<message/>", quota=10)
    await storage.rosters.put("romeo", RosterItem("juliet@capulet.lit", subscription="both"))
    await storage.offline.push("romeo", b"<message/>", quota=10)

    assert await storage.accounts.delete("juliet")
    assert raw_rows(db_path, "SELECT username FROM accounts") == [(b"romeo",)]
    # What is left is romeo's: his two credentials, roster version, roster item and message.
    assert raw_rows(
        db_path,
        "SELECT (SELECT count(*) FROM scram_credentials), (SELECT count(*) FROM roster_versions),"
        " (SELECT count(*) FROM roster_items), (SELECT count(*) FROM offline_messages)",
    ) == [(2, 1, 1, 1)]
    assert raw_rows(db_path, "SELECT DISTINCT account_id FROM scram_credentials") == raw_rows(
        db_path, "SELECT id FROM accounts"
    )

    await storage.accounts.create("juliet", credentials(8))
    assert await storage.rosters.get("juliet") == Roster(version=0, items=())
    assert await storage.offline.list("juliet") == []
    assert (await storage.rosters.get("romeo")).version == 1


async def test_everything_survives_a_reopen(sql_backend: SqlBackend) -> None:
    dsn = sql_backend.dsn
    item = RosterItem("romeo@montague.lit", name="Romeo", subscription="from", pending_in=True, groups=("♥",))
    async with open_sql_storage(dsn) as storage:
        await storage.accounts.create("juliet", credentials(1))
        await storage.rosters.put("juliet", RosterItem("nurse@capulet.lit"))
        await storage.rosters.put("juliet", item)
        await storage.rosters.remove("juliet", "nurse@capulet.lit")
        message_id = await storage.offline.push("juliet", b"<message/>", quota=10)

    async with open_sql_storage(dsn) as storage:
        assert await storage.accounts.get_credentials("juliet") == credentials(1)
        roster = await storage.rosters.get("juliet")
        assert roster.version == 3
        assert roster.items == (item,)
        assert [m.id for m in await storage.offline.list("juliet")] == [message_id]
        assert await storage.rosters.put("juliet", RosterItem("nurse@capulet.lit")) == 4


async def test_migrations_are_idempotent_and_match_the_schema(dsn: str, db_path: Path) -> None:
    async with open_sql_storage(dsn) as storage:
        await storage.accounts.create("juliet", {})
    async with open_sql_storage(dsn) as storage:  # upgrading an up-to-date database changes nothing
        assert await storage.accounts.list_usernames() == ["juliet"]
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    assert {row[0] for row in raw_rows(db_path, "SELECT version_num FROM alembic_version")} == heads
    assert raw_rows(db_path, "PRAGMA journal_mode") == [("wal",)]

    def differences(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    engine = create_engine(dsn)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


def test_schema_is_valid_for_mariadb() -> None:
    ddl = io.StringIO()
    config = alembic_config()
    config.output_buffer = ddl
    config.attributes["dialect_name"] = "mysql"
    command.upgrade(config, "heads", sql=True)  # the migration rendered for MariaDB, without a server
    rendered = ddl.getvalue()
    for expected in ("VARBINARY(1023)", "BINARY(32)", "VARBINARY(3071)", "MEDIUMBLOB", "DATETIME(6)"):
        assert expected in rendered
    assert rendered.count("ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin") == len(metadata.sorted_tables)
    for table in metadata.sorted_tables:
        assert "ENGINE=InnoDB" in str(CreateTable(table).compile(dialect=mysql.dialect()))


# --- faults ----------------------------------------------------------------------------------------------


@pytest.fixture
def garbage_file(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"this is no SQLite database, just garbage\n" * 100)


@pytest.mark.usefixtures("garbage_file")
async def test_a_file_that_is_not_a_database_is_unavailable(dsn: str) -> None:
    with pytest.raises(StorageUnavailable, match="not a database"):
        async with open_sql_storage(dsn):
            pass


async def test_missing_directory_is_unavailable_without_create_dirs(dsn: str, db_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="unable to open"):
        async with open_sql_storage(dsn, create_dirs=False):
            pass
    assert not db_path.parent.exists()


@pytest.fixture
def file_instead_of_directory(db_path: Path) -> None:
    db_path.parent.write_text("a file where the directory should be")


@pytest.mark.usefixtures("file_instead_of_directory")
async def test_directory_path_blocked_by_a_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable):
        async with open_sql_storage(f"sqlite+aiosqlite:///{tmp_path}/data/sub/nitro.db"):
            pass


async def test_locked_database_is_unavailable_for_writes_until_released(db_path: Path, dsn: str) -> None:
    async with open_sql_storage(f"{dsn}?timeout=0.2") as storage:
        await storage.accounts.create("juliet", {})
        other_writer = sqlite3.connect(db_path, isolation_level=None)
        try:
            other_writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StorageUnavailable, match="locked"):
                await storage.accounts.create("romeo", {})
            with pytest.raises(StorageUnavailable, match="locked"):
                await storage.offline.push("juliet", b"<message/>", quota=10)
            with pytest.raises(StorageUnavailable, match="locked"):  # one statement, no BEGIN of ours
                await storage.last.set("juliet", LastActivity(datetime.now(UTC), "gone"))
            assert await storage.accounts.exists("juliet")  # WAL: reads go on
            other_writer.execute("ROLLBACK")
        finally:
            other_writer.close()
        await storage.accounts.create("romeo", {})
        assert await storage.accounts.list_usernames() == ["juliet", "romeo"]
        assert await storage.offline.count("juliet") == 0


async def test_a_sqlite_connection_returned_inside_a_transaction_is_rolled_back(
    db_path: Path, dsn: str
) -> None:
    """The pool rolls back on return only when a transaction is open (no trip to aiosqlite's thread after
    a commit): a connection given back in the middle of one releases the write lock and keeps no rows."""
    async with open_database(dsn) as db:
        assert db.write_engine is not None
        async with db.write_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.execute("BEGIN IMMEDIATE")  # behind SQLAlchemy's back: only the pool can end it
            await driver.execute("INSERT INTO accounts (username) VALUES (x'6e75727365')")
            assert driver.in_transaction
        other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the write lock is free again
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert raw_rows(db_path, "SELECT username FROM accounts") == []
        async with db.writer.begin() as conn:  # and the connection starts its next transaction cleanly
            await conn.exec_driver_sql("INSERT INTO accounts (username) VALUES (x'6e75727365')")
        assert raw_rows(db_path, "SELECT username FROM accounts") == [(b"nurse",)]


async def test_items_for_reads_one_contact_in_many_rosters(storage: Storage) -> None:
    for name in ("nurse", "tybalt", "paris"):
        await storage.accounts.create(name, credentials(4))
    romeo = RosterItem("romeo@montague.lit", subscription="both")
    await storage.rosters.put("juliet", romeo)
    await storage.rosters.put("nurse", RosterItem("romeo@montague.lit", subscription="from", name="Romeo"))
    await storage.rosters.put("tybalt", RosterItem("mercutio@montague.lit"))
    found = await storage.rosters.items_for(
        ["juliet", "nurse", "tybalt", "paris", "nobody"], "romeo@montague.lit"
    )
    assert found == {
        "juliet": romeo,
        "nurse": RosterItem("romeo@montague.lit", subscription="from", name="Romeo"),
    }
    assert await storage.rosters.items_for([], "romeo@montague.lit") == {}
    many = [f"user{i}" for i in range(1200)]  # more than one IN (…) batch
    assert await storage.rosters.items_for([*many, "juliet"], "romeo@montague.lit") == {"juliet": romeo}
