"""The issue-3 SQL repositories on a real SQLite file: archive, PEP, block list, vCard, private XML."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, event
from sqlbackends import SqlBackend

from nitro.storage import (
    ArchivedMessage,
    ArchivePrefs,
    ArchiveQuery,
    ItemNotFound,
    LastActivity,
    NoSuchAccount,
    PepItem,
    PepNode,
    QuotaExceeded,
    Storage,
    StorageError,
    StorageUnavailable,
)
from nitro.storage.models import ArchiveRow
from nitro.storage.schema import metadata
from nitro.storage.sql import alembic_config, create_engine, open_sql_storage, upgrade_schema
from nitro.storage.sql_archive import SqlArchiveStore
from nitro.storage.sql_base import Database
from nitro.storage.sql_pep import SqlPepStore
from nitro.storage.sql_userdata import SqlBlockListStore, SqlLastActivityStore, SqlPrivateStore, SqlVCardStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ROMEO = "romeo@montague.lit"
NURSE = "nurse@capulet.lit"
NEW_TABLES = (
    "archive_messages",
    "archive_prefs",
    "pep_nodes",
    "pep_items",
    "blocked_jids",
    "vcards",
    "private_xml",
)
ACCOUNT_TABLES = (*NEW_TABLES, "last_activity")  # every table of per-account data after 0002


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nitro.db"


@pytest.fixture
def dsn(db_path: Path) -> str:
    return f"sqlite+aiosqlite:///{db_path}"


@pytest.fixture
async def storage(sql_backend: SqlBackend) -> AsyncIterator[Storage]:
    """Juliet and Romeo's accounts, once on each SQL backend."""
    async with open_sql_storage(sql_backend.dsn) as storage:
        await storage.accounts.create("juliet", {})
        await storage.accounts.create("romeo", {})
        yield storage


@pytest.fixture
async def sqlite_storage(dsn: str) -> AsyncIterator[Storage]:
    """The same on SQLite only, for tests that read or fill the file behind the repositories' back."""
    async with open_sql_storage(dsn) as storage:
        await storage.accounts.create("juliet", {})
        await storage.accounts.create("romeo", {})
        yield storage


def raw_rows(db_path: Path, sql: str, parameters: Any = ()) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db_path)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def stanza(n: int, with_jid: str = ROMEO) -> bytes:
    return f"<message xmlns='jabber:client' from='{with_jid}/r'><body>{n} ♥</body></message>".encode()


async def fill(storage: Storage, count: int, *, user: str = "juliet") -> list[ArchivedMessage]:
    """`count` messages, one per second from T0, alternating between romeo and the nurse."""
    messages = []
    for n in range(count):
        message = ArchivedMessage(
            id=f"{user}-{n}",
            with_jid=ROMEO if n % 2 == 0 else NURSE,
            timestamp=T0 + timedelta(seconds=n),
            stanza=stanza(n, ROMEO if n % 2 == 0 else NURSE),
        )
        await storage.archive.append(
            user,
            with_jid=message.with_jid,
            stanza=message.stanza,
            stanza_id=message.id,
            timestamp=message.timestamp,
        )
        messages.append(message)
    return messages


def bulk_fill(db_path: Path, user: str, count: int) -> None:
    """Many messages straight into the file (the query tests need volume, not append's commits)."""
    connection = sqlite3.connect(db_path)
    try:
        (account_id,) = connection.execute(
            "SELECT id FROM accounts WHERE username = ?", (user.encode(),)
        ).fetchone()
        rows = []
        for n in range(count):
            with_jid = f"contact{n % 50}@example.org".encode()
            stamp = (
                (T0 + timedelta(seconds=n)).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
            )
            rows.append(
                (account_id, f"{user}-bulk-{n}", hashlib.sha256(with_jid).digest(), with_jid, stamp, b"<m/>")
            )
        with connection:
            connection.executemany(
                "INSERT INTO archive_messages (account_id, stanza_id, with_key, with_jid, timestamp, stanza)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
    finally:
        connection.close()


# --- archive: append and filters -------------------------------------------------------------------------


async def test_archive_round_trips_a_message(storage: Storage) -> None:
    [message] = await fill(storage, 1)
    page = await storage.archive.query("juliet", ArchiveQuery())
    assert page.messages == (message,)
    assert page.complete
    assert page.count == 1
    assert page.first_index == 0
    assert page.messages[0].timestamp.tzinfo is not None
    assert await storage.archive.count("juliet") == 1


async def test_a_batch_is_one_transaction_over_several_archives(storage: Storage) -> None:
    rows = [
        ArchiveRow(user, ROMEO, stanza(n), f"{user}-{n}", T0 + timedelta(seconds=n))
        for n in range(6)
        for user in ("juliet", "romeo", "nobody")  # nobody's account does not exist: skipped
    ]
    assert await storage.archive.append_batch(rows) == 12
    page = await storage.archive.query("juliet", ArchiveQuery())
    assert [m.id for m in page.messages] == [f"juliet-{n}" for n in range(6)]  # in the batch's order
    assert await storage.archive.count("romeo") == 6
    assert await storage.archive.append_batch([]) == 0
    bad = [
        ArchiveRow("juliet", ROMEO, stanza(7), "juliet-7", T0),
        ArchiveRow("juliet", ROMEO, stanza(8), "", T0),
    ]
    with pytest.raises(ValueError, match="archive id"):
        await storage.archive.append_batch(bad)
    with pytest.raises(StorageError):  # an id used twice fails the whole batch
        await storage.archive.append_batch([ArchiveRow("juliet", ROMEO, stanza(9), "juliet-9", T0)] * 2)
    assert await storage.archive.count("juliet") == 6  # neither failed batch left a row


async def test_a_batch_may_span_more_accounts_than_one_statement_takes_parameters(
    sqlite_storage: Storage,
) -> None:
    users = [f"user{n}" for n in range(1100)]  # SQLite before 3.32 took at most 999 parameters
    for user in users:
        await sqlite_storage.accounts.create(user, {})
    rows = [ArchiveRow(user, ROMEO, stanza(n), f"id-{n}", T0) for n, user in enumerate(users)]
    assert await sqlite_storage.archive.append_batch(rows) == len(users)
    assert await sqlite_storage.archive.count(users[-1]) == 1


async def test_a_batchs_times_are_stored_as_single_appends_store_them(storage: Storage) -> None:
    """Whole seconds, microseconds and another zone: a time range with a row's own time at either end
    finds the row, whichever way it was written (on SQLite the batch bypasses SQLAlchemy's execution)."""
    plus_two = timezone(timedelta(hours=2))
    times = [
        T0,
        T0 + timedelta(microseconds=7),
        (T0 + timedelta(seconds=1, microseconds=5)).astimezone(plus_two),
    ]
    await storage.archive.append_batch(
        [ArchiveRow("juliet", ROMEO, stanza(n), f"batch-{n}", moment) for n, moment in enumerate(times)]
    )
    for n, moment in enumerate(times):
        await storage.archive.append(
            "romeo", with_jid=NURSE, stanza=stanza(n), stanza_id=f"single-{n}", timestamp=moment
        )
    for user, prefix in (("juliet", "batch"), ("romeo", "single")):
        everything = await storage.archive.query(user, ArchiveQuery())
        assert [m.timestamp for m in everything.messages] == times
        for n, moment in enumerate(times):
            at_that_time = await storage.archive.query(user, ArchiveQuery(start=moment, end=moment))
            assert [m.id for m in at_that_time.messages] == [f"{prefix}-{n}"]


async def test_archive_filters_and_their_combinations(storage: Storage) -> None:
    messages = await fill(storage, 10)

    async def ids(**filters: Any) -> list[str]:
        page = await storage.archive.query("juliet", ArchiveQuery(**filters))
        assert page.count == len(page.messages)
        return [m.id for m in page.messages]

    everything = [m.id for m in messages]
    assert await ids() == everything
    assert await ids(with_jid=ROMEO) == everything[0::2]
    assert await ids(with_jid=NURSE) == everything[1::2]
    assert await ids(with_jid="benvolio@montague.lit") == []
    assert await ids(start=T0 + timedelta(seconds=3)) == everything[3:]  # inclusive
    assert await ids(end=T0 + timedelta(seconds=3)) == everything[:4]  # inclusive
    assert await ids(start=T0 + timedelta(seconds=2), end=T0 + timedelta(seconds=6)) == everything[2:7]
    assert await ids(with_jid=ROMEO, start=T0 + timedelta(seconds=3), end=T0 + timedelta(seconds=8)) == [
        "juliet-4",
        "juliet-6",
        "juliet-8",
    ]
    assert await ids(ids=("juliet-7", "juliet-2", "unknown")) == ["juliet-2", "juliet-7"]
    assert await ids(ids=("juliet-7", "juliet-2"), with_jid=NURSE) == ["juliet-7"]
    assert await ids(ids=()) == []
    # Times in another zone mean the same instants.
    other_zone = (T0 + timedelta(seconds=8)).astimezone(datetime.now().astimezone().tzinfo)
    assert await ids(start=other_zone) == everything[8:]


async def test_archive_limit_and_counts(storage: Storage) -> None:
    await fill(storage, 10)
    page = await storage.archive.query("juliet", ArchiveQuery(limit=3))
    assert [m.id for m in page.messages] == ["juliet-0", "juliet-1", "juliet-2"]
    assert not page.complete
    assert (page.count, page.first_index) == (10, 0)

    only_count = await storage.archive.query("juliet", ArchiveQuery(limit=0))  # RSM <max>0</max>
    assert (only_count.messages, only_count.complete, only_count.count, only_count.first_index) == (
        (),
        False,
        10,
        None,
    )

    exact = await storage.archive.query("juliet", ArchiveQuery(limit=10))
    assert len(exact.messages) == 10
    assert exact.complete


async def test_archive_is_per_user(storage: Storage) -> None:
    await fill(storage, 3, user="juliet")
    await fill(storage, 2, user="romeo")
    assert [m.id for m in (await storage.archive.query("romeo", ArchiveQuery())).messages] == [
        "romeo-0",
        "romeo-1",
    ]
    assert await storage.archive.count("juliet") == 3
    # Another user's id is unknown in this archive.
    with pytest.raises(ItemNotFound):
        await storage.archive.query("romeo", ArchiveQuery(after_id="juliet-0"))
    assert (await storage.archive.query("romeo", ArchiveQuery(ids=("juliet-0",)))).messages == ()
    # The same stanza id may exist in two archives (ids are unique per archive only).
    await storage.archive.append("romeo", with_jid=ROMEO, stanza=b"<m/>", stanza_id="juliet-0", timestamp=T0)


async def test_archive_of_unknown_user(storage: Storage) -> None:
    page = await storage.archive.query("benvolio", ArchiveQuery())
    assert (page.messages, page.complete, page.count, page.first_index) == ((), True, 0, None)
    assert await storage.archive.count("benvolio") == 0
    with pytest.raises(ItemNotFound):
        await storage.archive.query("benvolio", ArchiveQuery(after_id="x"))
    with pytest.raises(NoSuchAccount):
        await storage.archive.append("benvolio", with_jid=ROMEO, stanza=b"<m/>", stanza_id="a", timestamp=T0)


async def test_archive_refuses_bad_values(storage: Storage) -> None:
    await fill(storage, 1)
    with pytest.raises(StorageError):  # an id is unique per archive
        await storage.archive.append(
            "juliet", with_jid=ROMEO, stanza=b"<m/>", stanza_id="juliet-0", timestamp=T0
        )
    with pytest.raises(ValueError, match="timezone"):
        await storage.archive.append(
            "juliet", with_jid=ROMEO, stanza=b"<m/>", stanza_id="n", timestamp=T0.replace(tzinfo=None)
        )
    with pytest.raises(ValueError, match="archive id"):
        await storage.archive.append(
            "juliet", with_jid=ROMEO, stanza=b"<m/>", stanza_id="x" * 129, timestamp=T0
        )
    with pytest.raises(ValueError, match="negative"):
        await storage.archive.query("juliet", ArchiveQuery(limit=-1))
    assert await storage.archive.count("juliet") == 1


# --- archive: paging -------------------------------------------------------------------------------------


async def test_paging_forward_and_backward_visits_every_message_once(
    sqlite_storage: Storage, db_path: Path
) -> None:
    storage = sqlite_storage
    bulk_fill(db_path, "juliet", 1000)
    all_ids = [f"juliet-bulk-{n}" for n in range(1000)]

    seen: list[str] = []
    page = await storage.archive.query("juliet", ArchiveQuery(limit=7))
    while True:
        assert page.count == 1000
        assert page.first_index == len(seen)
        seen += [m.id for m in page.messages]
        if page.complete:
            break
        page = await storage.archive.query("juliet", ArchiveQuery(after_id=seen[-1], limit=7))
    assert seen == all_ids

    seen = []
    page = await storage.archive.query("juliet", ArchiveQuery(before_id="", limit=7))  # the last page
    assert [m.id for m in page.messages] == all_ids[-7:]
    while True:
        assert page.count == 1000
        assert page.first_index == 1000 - len(seen) - len(page.messages)
        seen = [m.id for m in page.messages] + seen
        if page.complete:
            break
        page = await storage.archive.query("juliet", ArchiveQuery(before_id=seen[0], limit=7))
    assert seen == all_ids

    window = ArchiveQuery(start=T0 + timedelta(seconds=100), end=T0 + timedelta(seconds=199), limit=7)
    page = await storage.archive.query("juliet", window)
    assert [m.id for m in page.messages] == all_ids[100:107]
    assert (page.count, page.first_index, page.complete) == (100, 0, False)


async def test_last_page_and_paging_with_a_filter(storage: Storage) -> None:
    messages = await fill(storage, 20)
    romeo = [m.id for m in messages if m.with_jid == ROMEO]  # 0, 2, …, 18

    last = await storage.archive.query("juliet", ArchiveQuery(before_id="", limit=3))
    assert [m.id for m in last.messages] == ["juliet-17", "juliet-18", "juliet-19"]  # chronological
    assert (last.complete, last.count, last.first_index) == (False, 20, 17)

    page = await storage.archive.query("juliet", ArchiveQuery(with_jid=ROMEO, after_id="juliet-5", limit=2))
    assert [m.id for m in page.messages] == ["juliet-6", "juliet-8"]
    assert (page.complete, page.count, page.first_index) == (False, 10, 3)

    page = await storage.archive.query("juliet", ArchiveQuery(with_jid=ROMEO, before_id="juliet-5", limit=5))
    assert [m.id for m in page.messages] == romeo[:3]
    assert (page.complete, page.first_index) == (True, 0)

    # after and before together (MAM after-id + before-id): the messages strictly between.
    between = await storage.archive.query(
        "juliet", ArchiveQuery(after_id="juliet-3", before_id="juliet-9", limit=10)
    )
    assert [m.id for m in between.messages] == [f"juliet-{n}" for n in range(4, 9)]
    assert between.complete
    assert between.first_index == 4

    tail = await storage.archive.query("juliet", ArchiveQuery(after_id="juliet-19"))
    assert (tail.messages, tail.complete, tail.count, tail.first_index) == ((), True, 20, None)
    whole = await storage.archive.query("juliet", ArchiveQuery(before_id="", limit=100))
    assert len(whole.messages) == 20
    assert whole.complete
    assert whole.first_index == 0


async def test_unknown_paging_ids_are_item_not_found(storage: Storage) -> None:
    await fill(storage, 3)
    for query in (
        ArchiveQuery(after_id="nonexistent"),
        ArchiveQuery(before_id="nonexistent"),
        ArchiveQuery(after_id=""),
        ArchiveQuery(after_id="x" * 500),
    ):
        with pytest.raises(ItemNotFound):
            await storage.archive.query("juliet", query)


# --- archive: prefs, retention, query plans --------------------------------------------------------------


async def test_archive_prefs_round_trip(storage: Storage) -> None:
    assert await storage.archive.get_prefs("juliet") is None  # never set: the config default applies
    prefs = ArchivePrefs(default="roster", always=(ROMEO, "тибальт@capulet.lit"), never=(NURSE,))
    await storage.archive.set_prefs("juliet", prefs)
    assert await storage.archive.get_prefs("juliet") == prefs
    await storage.archive.set_prefs("juliet", ArchivePrefs(default="never"))
    assert await storage.archive.get_prefs("juliet") == ArchivePrefs(default="never")
    assert await storage.archive.get_prefs("romeo") is None
    assert await storage.archive.get_prefs("benvolio") is None
    with pytest.raises(NoSuchAccount):
        await storage.archive.set_prefs("benvolio", prefs)


async def test_expire_deletes_old_messages_of_every_user(sqlite_storage: Storage, db_path: Path) -> None:
    storage = sqlite_storage
    await fill(storage, 10, user="juliet")
    await fill(storage, 10, user="romeo")
    assert await storage.archive.expire(T0 + timedelta(seconds=4)) == 8  # 0…3 of each, strictly older
    assert [m.id for m in (await storage.archive.query("juliet", ArchiveQuery(limit=1))).messages] == [
        "juliet-4"
    ]
    assert await storage.archive.count("romeo") == 6
    assert await storage.archive.expire(T0) == 0

    bulk_fill(db_path, "juliet", 2500)  # more than one retention chunk
    assert await storage.archive.expire(T0 + timedelta(days=1)) == 2500 + 6 + 6
    assert raw_rows(db_path, "SELECT count(*) FROM archive_messages") == [(0,)]


@contextmanager
def recorded_selects(store_engine: Any) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(store_engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(store_engine.sync_engine, "before_cursor_execute", record)


async def test_every_archive_query_uses_an_index(dsn: str, db_path: Path) -> None:
    engine = create_engine(dsn)
    try:
        await upgrade_schema(engine)
        async with open_sql_storage(dsn) as storage:
            for user in ("juliet", "romeo", "nurse"):
                await storage.accounts.create(user, {})
        for user in ("juliet", "romeo", "nurse"):
            bulk_fill(db_path, user, 2000)
        archive = SqlArchiveStore(Database(engine))
        some = T0 + timedelta(seconds=500)
        with recorded_selects(engine) as selects:
            await archive.query("juliet", ArchiveQuery(limit=7))
            await archive.query("juliet", ArchiveQuery(with_jid="contact3@example.org", limit=7))
            await archive.query("juliet", ArchiveQuery(after_id="juliet-bulk-900", limit=7))
            await archive.query("juliet", ArchiveQuery(before_id="juliet-bulk-900", limit=7))
            await archive.query("juliet", ArchiveQuery(before_id="", limit=7))
            await archive.query("juliet", ArchiveQuery(start=some, end=some + timedelta(minutes=5), limit=7))
            await archive.query("juliet", ArchiveQuery(start=some, with_jid="contact3@example.org", limit=7))
            await archive.query(
                "juliet", ArchiveQuery(with_jid="contact3@example.org", after_id="juliet-bulk-903", limit=7)
            )
            await archive.query("juliet", ArchiveQuery(ids=("juliet-bulk-5", "juliet-bulk-7")))
            await archive.count("juliet")
            await archive.get_prefs("juliet")
        with recorded_selects(engine) as expiring:
            await archive.expire(T0 + timedelta(seconds=10))
    finally:
        await engine.dispose()

    assert len(selects) > 20
    connection = sqlite3.connect(db_path)
    try:
        for statement, parameters in selects + expiring:
            plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert plan, statement
            for step in plan:
                # a full table or index scan; scanning the capped count's own subquery (at most
                # COUNT_CAP + 1 rows, themselves found through an index) is the bounded walk we want
                if step.startswith("SCAN anon_"):
                    continue
                assert not step.startswith("SCAN"), (step, statement)
                assert "TEMP B-TREE" not in step, (step, statement)  # sorting every matching row
                if step.startswith("SEARCH"):
                    assert "USING" in step, (step, statement)
    finally:
        connection.close()


# --- PEP -------------------------------------------------------------------------------------------------


def item(item_id: str, n: int = 0) -> PepItem:
    payload = f"<geoloc xmlns='http://jabber.org/protocol/geoloc'><text>Verona {n} ☀</text></geoloc>"
    return PepItem(id=item_id, payload=payload.encode(), published_at=T0 + timedelta(seconds=n))


async def test_pep_nodes_create_configure_list_delete(storage: Storage) -> None:
    assert await storage.pep.get_node("juliet", "urn:xmpp:avatar:metadata") is None
    assert await storage.pep.list_nodes("juliet") == []
    avatar = PepNode("urn:xmpp:avatar:metadata")
    await storage.pep.put_node("juliet", avatar)
    assert await storage.pep.get_node("juliet", "urn:xmpp:avatar:metadata") == avatar
    configured = PepNode(
        "eu.siacs.conversations.axolotl.bundles:42", "whitelist", 5, False, (ROMEO, "тибальт@x")
    )
    await storage.pep.put_node("juliet", configured)
    await storage.pep.publish("juliet", configured.name, item("current"), max_items=5)
    reconfigured = PepNode(configured.name, access_model="open", max_items=10)
    await storage.pep.put_node("juliet", reconfigured)  # reconfiguring keeps the items
    assert await storage.pep.get_node("juliet", configured.name) == reconfigured
    assert [i.id for i in await storage.pep.items("juliet", configured.name)] == ["current"]
    assert await storage.pep.list_nodes("juliet") == [reconfigured, avatar]  # sorted by name
    assert await storage.pep.list_nodes("romeo") == []

    assert await storage.pep.delete_node("juliet", configured.name)
    assert not await storage.pep.delete_node("juliet", configured.name)
    assert await storage.pep.items("juliet", configured.name) == []
    assert await storage.pep.list_nodes("juliet") == [avatar]
    assert not await storage.pep.delete_node("benvolio", "x")
    with pytest.raises(NoSuchAccount):
        await storage.pep.put_node("benvolio", avatar)
    with pytest.raises(ValueError, match="access model"):
        await storage.pep.put_node("juliet", PepNode("n", access_model="everyone"))  # type: ignore[arg-type]  # on purpose
    with pytest.raises(ValueError, match="node name"):
        await storage.pep.put_node("juliet", PepNode("n" * 1024))


async def test_pep_publish_replaces_same_id_and_trims(storage: Storage) -> None:
    node = "http://jabber.org/protocol/geoloc"
    await storage.pep.publish("juliet", node, item("a", 1), max_items=3)  # auto-creates the node
    assert await storage.pep.get_node("juliet", node) == PepNode(node, max_items=3)
    await storage.pep.publish("juliet", node, item("b", 2), max_items=3)
    await storage.pep.publish("juliet", node, item("c", 3), max_items=3)
    await storage.pep.publish("juliet", node, item("a", 4), max_items=3)  # replaced, now the newest
    items = await storage.pep.items("juliet", node)
    assert [(i.id, i.published_at) for i in items] == [
        ("a", T0 + timedelta(seconds=4)),
        ("c", T0 + timedelta(seconds=3)),
        ("b", T0 + timedelta(seconds=2)),
    ]
    assert items[0] == item("a", 4)
    assert "☀" in items[0].payload.decode()

    await storage.pep.publish("juliet", node, item("d", 5), max_items=3)  # the oldest, b, goes
    assert [i.id for i in await storage.pep.items("juliet", node)] == ["d", "a", "c"]
    await storage.pep.publish("juliet", node, item("e", 6), max_items=1)
    assert [i.id for i in await storage.pep.items("juliet", node)] == ["e"]
    assert await storage.pep.items("romeo", node) == []
    with pytest.raises(NoSuchAccount):
        await storage.pep.publish("benvolio", node, item("a"), max_items=1)
    with pytest.raises(ValueError, match="max_items"):
        await storage.pep.publish("juliet", node, item("a"), max_items=0)


async def test_pep_items_per_account_quota(storage: Storage) -> None:
    """Growth past max_account_items is refused whole; replacing or trimming an item is no growth."""
    await storage.pep.publish("juliet", "n1", item("a"), max_items=2, max_account_items=3)
    await storage.pep.publish("juliet", "n1", item("b"), max_items=2, max_account_items=3)
    await storage.pep.publish("juliet", "n2", item("c"), max_items=2, max_account_items=3)
    with pytest.raises(QuotaExceeded):
        await storage.pep.publish("juliet", "n2", item("d"), max_items=2, max_account_items=3)
    with pytest.raises(QuotaExceeded):  # nor into a new node, which is not created either
        await storage.pep.publish("juliet", "n3", item("e"), max_items=2, max_account_items=3)
    assert [i.id for i in await storage.pep.items("juliet", "n2")] == ["c"]
    assert await storage.pep.get_node("juliet", "n3") is None
    await storage.pep.publish("juliet", "n2", item("c", 9), max_items=2, max_account_items=3)  # replaced
    await storage.pep.publish("juliet", "n1", item("f"), max_items=2, max_account_items=3)  # a is trimmed
    assert [i.id for i in await storage.pep.items("juliet", "n1")] == ["f", "b"]
    await storage.pep.publish("romeo", "n1", item("a"), max_items=2, max_account_items=3)  # per account


async def test_pep_items_newest_first_by_count_and_ids_and_retract(storage: Storage) -> None:
    node = "urn:xmpp:microblog:0"
    for n in range(6):
        await storage.pep.publish("juliet", node, item(f"post{n}", n), max_items=100)
    assert [i.id for i in await storage.pep.items("juliet", node)] == [f"post{n}" for n in range(5, -1, -1)]
    assert [i.id for i in await storage.pep.items("juliet", node, max_items=2)] == ["post5", "post4"]
    assert [i.id for i in await storage.pep.items("juliet", node, item_ids=["post1", "post4", "zz"])] == [
        "post4",
        "post1",
    ]
    assert [
        i.id for i in await storage.pep.items("juliet", node, item_ids=["post1", "post4"], max_items=1)
    ] == ["post4"]
    assert await storage.pep.items("juliet", node, item_ids=[]) == []
    assert await storage.pep.items("juliet", node, item_ids=[], max_items=3) == []
    assert await storage.pep.items("juliet", node, max_items=0) == []
    assert await storage.pep.items("juliet", "no-such-node") == []
    assert await storage.pep.items("romeo", node) == []  # the same node name, another account
    with pytest.raises(ValueError, match="negative"):
        await storage.pep.items("juliet", node, max_items=-1)
    with pytest.raises(ValueError, match="item id"):
        await storage.pep.items("juliet", node, item_ids=[""])

    assert await storage.pep.retract("juliet", node, "post4")
    assert not await storage.pep.retract("juliet", node, "post4")
    assert not await storage.pep.retract("juliet", "no-such-node", "post4")
    assert not await storage.pep.retract("benvolio", node, "post4")
    assert [i.id for i in await storage.pep.items("juliet", node, max_items=2)] == ["post5", "post3"]


# --- block list, vCard, private XML ----------------------------------------------------------------------


async def test_blocklist_add_remove_clear_idempotent(storage: Storage) -> None:
    assert await storage.blocklist.list("juliet") == []
    await storage.blocklist.add("juliet", [ROMEO, "capulet.lit", f"{NURSE}/balcony"])
    await storage.blocklist.add("juliet", [ROMEO, ROMEO, "élan@x.lit"])  # already blocked ones stay once
    assert await storage.blocklist.list("juliet") == sorted(
        [ROMEO, "capulet.lit", f"{NURSE}/balcony", "élan@x.lit"], key=str.encode
    )
    await storage.blocklist.remove("juliet", [ROMEO, "never-blocked@x"])
    await storage.blocklist.remove("juliet", [ROMEO])
    assert ROMEO not in await storage.blocklist.list("juliet")
    await storage.blocklist.add("juliet", [])
    await storage.blocklist.remove("juliet", [])
    assert await storage.blocklist.list("romeo") == []

    await storage.blocklist.clear("juliet")
    await storage.blocklist.clear("juliet")
    assert await storage.blocklist.list("juliet") == []
    with pytest.raises(NoSuchAccount):
        await storage.blocklist.add("benvolio", [ROMEO])
    await storage.blocklist.remove("benvolio", [ROMEO])
    await storage.blocklist.clear("benvolio")
    assert await storage.blocklist.list("benvolio") == []


async def test_vcard_set_get_delete(storage: Storage) -> None:
    assert await storage.vcards.get("juliet") is None
    vcard = "<vCard xmlns='vcard-temp'><FN>Juliet Capulet ♥</FN></vCard>".encode()
    await storage.vcards.set("juliet", vcard)
    assert await storage.vcards.get("juliet") == vcard
    await storage.vcards.set("juliet", b"<vCard xmlns='vcard-temp'/>")
    assert await storage.vcards.get("juliet") == b"<vCard xmlns='vcard-temp'/>"
    assert await storage.vcards.get("romeo") is None
    await storage.vcards.set("juliet", None)
    assert await storage.vcards.get("juliet") is None
    await storage.vcards.set("juliet", None)
    big = b"<vCard xmlns='vcard-temp'><PHOTO><BINVAL>" + b"A" * 200_000 + b"</BINVAL></PHOTO></vCard>"
    await storage.vcards.set("juliet", big)
    assert await storage.vcards.get("juliet") == big
    with pytest.raises(NoSuchAccount):
        await storage.vcards.set("benvolio", vcard)
    await storage.vcards.set("benvolio", None)


async def test_private_xml_set_get_replace_unicode(storage: Storage) -> None:
    key = "{storage:bookmarks}storage"
    assert await storage.private.get("juliet", key) is None
    first = "<storage xmlns='storage:bookmarks'><conference name='Balcón ☾' jid='r@m'/></storage>".encode()
    await storage.private.set("juliet", key, first)
    assert await storage.private.get("juliet", key) == first
    second = "<storage xmlns='storage:bookmarks'><conference name='Верона 🌹' jid='v@m'/></storage>".encode()
    await storage.private.set("juliet", key, second)
    assert await storage.private.get("juliet", key) == second
    other_key = "{urn:ünïcode:ns}données"
    await storage.private.set("juliet", other_key, b"<donn\xc3\xa9es xmlns='urn:\xc3\xbcn\xc3\xafcode:ns'/>")
    assert await storage.private.get("juliet", key) == second
    assert (
        await storage.private.get("juliet", other_key)
        == b"<donn\xc3\xa9es xmlns='urn:\xc3\xbcn\xc3\xafcode:ns'/>"
    )
    assert await storage.private.get("romeo", key) is None
    assert await storage.private.get("benvolio", key) is None
    with pytest.raises(NoSuchAccount):
        await storage.private.set("benvolio", key, first)


async def test_private_xml_quota_counts_new_elements_only(storage: Storage) -> None:
    for n in range(2):
        await storage.private.set("juliet", f"{{urn:n{n}}}x", f"<x xmlns='urn:n{n}'/>".encode(), max_keys=2)
    with pytest.raises(QuotaExceeded):
        await storage.private.set("juliet", "{urn:n2}x", b"<x xmlns='urn:n2'/>", max_keys=2)
    assert await storage.private.get("juliet", "{urn:n2}x") is None
    await storage.private.set("juliet", "{urn:n0}x", b"<x xmlns='urn:n0'>new</x>", max_keys=2)  # replaced
    assert await storage.private.get("juliet", "{urn:n0}x") == b"<x xmlns='urn:n0'>new</x>"
    await storage.private.set("romeo", "{urn:n2}x", b"<x xmlns='urn:n2'/>", max_keys=2)  # per account


async def test_last_activity_set_get_replace(storage: Storage) -> None:
    """XEP-0012 §4: one row per account, replaced at each logout; microseconds and Unicode survive."""
    assert await storage.last.get("juliet") is None
    first = LastActivity(datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC), "Gone to Mantua 🌙")
    await storage.last.set("juliet", first)
    assert await storage.last.get("juliet") == first
    later = LastActivity(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    await storage.last.set("juliet", later)
    assert await storage.last.get("juliet") == later
    assert later.status == ""
    assert await storage.last.get("romeo") is None
    assert await storage.last.get("benvolio") is None  # no such account
    with pytest.raises(NoSuchAccount):
        await storage.last.set("benvolio", first)


async def test_last_activity_written_again_with_the_same_values(storage: Storage) -> None:
    """The upsert replaces a row by an equal one without error (MariaDB reports such a row as found, not
    changed), and only an account that does not exist is refused."""
    same = LastActivity(datetime(2026, 3, 1, 12, 30, tzinfo=UTC), "away")
    for _ in range(3):
        await storage.last.set("juliet", same)
    assert await storage.last.get("juliet") == same
    await storage.last.set("romeo", same)
    assert await storage.last.get("romeo") == same
    with pytest.raises(NoSuchAccount):
        await storage.last.set("benvolio", same)
    with pytest.raises(ValueError, match="username"):
        await storage.last.set("", same)
    with pytest.raises(ValueError, match="timezone"):
        await storage.last.set("juliet", LastActivity(datetime(2026, 3, 1, 12, 30), "naive"))
    assert await storage.last.get("juliet") == same


async def test_last_activity_of_many_users_in_one_call(storage: Storage) -> None:
    """The batch of logouts (nitro/storage/last_batch.py): every account's row written or replaced, the
    usernames without an account returned (nothing written for them), an empty batch writes nothing."""
    last = storage.last
    assert isinstance(last, SqlLastActivityStore)
    first = LastActivity(datetime(2026, 3, 1, 12, 30, tzinfo=UTC), "away")
    later = LastActivity(datetime(2026, 3, 2, 8, 0, 1, 5, tzinfo=UTC), "Gone to Mantua 🌙")
    assert await last.set_many([("juliet", first)]) == frozenset()
    for _ in range(2):  # the second time with the same values (MariaDB reports those rows as found)
        missing = await last.set_many([("juliet", later), ("benvolio", first), ("romeo", later)])
        assert missing == {"benvolio"}
    assert await last.get("juliet") == later
    assert await last.get("romeo") == later
    assert await last.get("benvolio") is None
    assert await last.set_many([]) == frozenset()
    with pytest.raises(ValueError, match="timezone"):
        await last.set_many([("juliet", LastActivity(datetime(2026, 3, 1, 12, 30), "naive"))])
    assert await last.get("juliet") == later


async def test_last_activity_write_is_one_statement(sql_backend: SqlBackend) -> None:
    """A logout's write is one upsert (plus its transaction), whether the row is new or replaced; here
    through SQLAlchemy, as without a writing connection of its own (MariaDB; tests/test_sqlite_write.py
    for a SQLite file)."""
    async with open_sql_storage(sql_backend.dsn) as storage:
        await storage.accounts.create("juliet", {})
    engine = create_engine(sql_backend.dsn)
    try:
        store = SqlLastActivityStore(Database(engine))
        statements: list[str] = []

        def record(
            _conn: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
        ) -> None:
            statements.append(statement.split()[0].upper())

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        for n in range(2):
            await store.set("juliet", LastActivity(datetime(2026, 3, n + 1, tzinfo=UTC), f"gone {n}"))
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert [s for s in statements if s not in ("BEGIN", "SET")] == ["INSERT", "INSERT"]
        assert await store.get("juliet") == LastActivity(datetime(2026, 3, 2, tzinfo=UTC), "gone 1")
    finally:
        await engine.dispose()


# --- accounts, migrations, faults ------------------------------------------------------------------------


async def test_deleting_an_account_deletes_all_its_im_data(sqlite_storage: Storage, db_path: Path) -> None:
    storage = sqlite_storage
    for user in ("juliet", "romeo"):
        await fill(storage, 3, user=user)
        await storage.archive.set_prefs(user, ArchivePrefs(default="always", always=(ROMEO,)))
        await storage.pep.publish(user, "urn:xmpp:avatar:data", item("a"), max_items=1)
        await storage.pep.put_node(user, PepNode("urn:xmpp:avatar:metadata"))
        await storage.blocklist.add(user, [NURSE])
        await storage.vcards.set(user, b"<vCard xmlns='vcard-temp'/>")
        await storage.private.set(user, "{storage:bookmarks}storage", b"<storage xmlns='storage:bookmarks'/>")
        await storage.last.set(user, LastActivity(datetime(2026, 1, 1, tzinfo=UTC), "gone"))

    assert await storage.accounts.delete("juliet")
    (romeo_id,) = raw_rows(db_path, "SELECT id FROM accounts")[0]
    expected = {"archive_messages": 3, "pep_nodes": 2, "blocked_jids": 1}
    for table in ACCOUNT_TABLES:
        if table == "pep_items":
            rows = raw_rows(
                db_path, "SELECT DISTINCT account_id FROM pep_items JOIN pep_nodes ON node_id = pep_nodes.id"
            )
            assert rows == [(romeo_id,)]
            continue
        assert raw_rows(db_path, f"SELECT account_id, count(*) FROM {table} GROUP BY account_id") == [  # noqa: S608
            (romeo_id, expected.get(table, 1))
        ]

    await storage.accounts.create("juliet", {})  # a new account starts empty
    assert await storage.archive.count("juliet") == 0
    assert await storage.archive.get_prefs("juliet") is None
    assert await storage.pep.list_nodes("juliet") == []
    assert await storage.blocklist.list("juliet") == []
    assert await storage.vcards.get("juliet") is None
    assert await storage.private.get("juliet", "{storage:bookmarks}storage") is None
    assert await storage.last.get("juliet") is None


async def test_account_rows_cascade_when_deleted_directly(sqlite_storage: Storage, db_path: Path) -> None:
    storage = sqlite_storage
    """ON DELETE CASCADE is the safety net for rows deleted outside Nitro (e.g. by a DBA)."""
    await fill(storage, 2)
    await storage.pep.publish("juliet", "n", item("a"), max_items=1)
    await storage.blocklist.add("juliet", [ROMEO])
    await storage.vcards.set("juliet", b"<v/>")
    await storage.private.set("juliet", "{a}b", b"<b xmlns='a'/>")
    await storage.archive.set_prefs("juliet", ArchivePrefs(default="never"))
    await storage.last.set("juliet", LastActivity(datetime(2026, 1, 1, tzinfo=UTC)))
    connection = sqlite3.connect(db_path)
    try:
        connection.execute("PRAGMA foreign_keys=ON")
        with connection:
            connection.execute("DELETE FROM accounts WHERE username = ?", (b"juliet",))
        for table in ACCOUNT_TABLES:
            assert connection.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)  # noqa: S608
    finally:
        connection.close()


async def test_data_survives_a_reopen(sql_backend: SqlBackend) -> None:
    dsn = sql_backend.dsn
    async with open_sql_storage(dsn) as storage:
        await storage.accounts.create("juliet", {})
        messages = await fill(storage, 3)
        await storage.pep.publish("juliet", "n", item("a", 1), max_items=1)
        await storage.blocklist.add("juliet", [ROMEO])
    async with open_sql_storage(dsn) as storage:
        assert (await storage.archive.query("juliet", ArchiveQuery())).messages == tuple(messages)
        assert await storage.pep.items("juliet", "n") == [item("a", 1)]
        assert await storage.blocklist.list("juliet") == [ROMEO]


async def test_migration_matches_the_schema(dsn: str, db_path: Path) -> None:
    async with open_sql_storage(dsn):
        pass

    def differences(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    engine = create_engine(dsn)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    assert {row[0] for row in raw_rows(db_path, "SELECT version_num FROM alembic_version")} == heads
    indexes = {row[0] for row in raw_rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {
        "ix_archive_messages_account_id_id",
        "ix_archive_messages_account_id_with_key_id",
        "ix_archive_messages_account_id_timestamp",
        "uq_archive_messages_stanza_id_account_id",
    } <= indexes


def test_migration_renders_for_mariadb() -> None:
    ddl = io.StringIO()
    config = alembic_config()
    config.output_buffer = ddl
    config.attributes["dialect_name"] = "mysql"
    command.upgrade(config, "0001_initial:0002_im_features", sql=True)
    rendered = ddl.getvalue()
    for table in NEW_TABLES:
        assert f"CREATE TABLE {table} " in rendered
    assert rendered.count("ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin") == len(NEW_TABLES)
    assert "MEDIUMBLOB" in rendered
    assert "DATETIME(6)" in rendered
    assert "BINARY(32)" in rendered
    assert "ON DELETE CASCADE" in rendered


def test_later_migrations_render_for_mariadb() -> None:
    ddl = io.StringIO()
    config = alembic_config()
    config.output_buffer = ddl
    config.attributes["dialect_name"] = "mysql"
    command.upgrade(config, "0003_roster_in_roster:0006_archive_stanza_id_first", sql=True)
    rendered = ddl.getvalue()
    new_key = "CREATE UNIQUE INDEX uq_archive_messages_stanza_id_account_id ON archive_messages"
    old_key = "DROP INDEX uq_archive_messages_account_id_stanza_id ON archive_messages"
    assert rendered.index(new_key) < rendered.index(old_key)  # the archive's key is never unguarded
    assert f"{new_key} (stanza_id, account_id)" in rendered
    assert "ALTER TABLE roster_items ADD COLUMN request BLOB" in rendered
    assert "CREATE TABLE last_activity " in rendered
    assert "seen_at DATETIME(6) NOT NULL" in rendered
    assert "ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin" in rendered
    assert "ON DELETE CASCADE" in rendered


@pytest.fixture
def garbage_file(db_path: Path) -> None:
    db_path.write_bytes(b"this is no SQLite database, just garbage\n" * 100)


@pytest.mark.usefixtures("garbage_file")
async def test_a_file_that_is_not_a_database_is_unavailable_to_every_repository(dsn: str) -> None:
    engine = create_engine(dsn)
    try:
        db = Database(engine)
        archive, pep = SqlArchiveStore(db), SqlPepStore(db)
        blocklist, vcards, private = SqlBlockListStore(db), SqlVCardStore(db), SqlPrivateStore(db)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: archive.query("juliet", ArchiveQuery()),
            lambda: archive.append("juliet", with_jid=ROMEO, stanza=b"<m/>", stanza_id="z", timestamp=T0),
            lambda: archive.get_prefs("juliet"),
            lambda: archive.set_prefs("juliet", ArchivePrefs(default="always")),
            lambda: archive.expire(T0),
            lambda: archive.count("juliet"),
            lambda: pep.put_node("juliet", PepNode("n")),
            lambda: pep.publish("juliet", "n", item("a"), max_items=1),
            lambda: pep.items("juliet", "n"),
            lambda: pep.list_nodes("juliet"),
            lambda: pep.retract("juliet", "n", "a"),
            lambda: blocklist.add("juliet", [ROMEO]),
            lambda: blocklist.list("juliet"),
            lambda: vcards.set("juliet", b"<v/>"),
            lambda: vcards.get("juliet"),
            lambda: private.set("juliet", "{a}b", b"<b/>"),
            lambda: private.get("juliet", "{a}b"),
        ]
        for call in calls:
            with pytest.raises(StorageUnavailable, match="not a database"):
                await call()
    finally:
        await engine.dispose()


async def test_locked_database_is_unavailable_for_writes(db_path: Path, dsn: str) -> None:
    async with open_sql_storage(f"{dsn}?timeout=0.2") as storage:
        await storage.accounts.create("juliet", {})
        other_writer = sqlite3.connect(db_path, isolation_level=None)
        try:
            other_writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            writes: list[Callable[[], Awaitable[object]]] = [
                lambda: storage.archive.append(
                    "juliet", with_jid=ROMEO, stanza=b"<m/>", stanza_id="a", timestamp=T0
                ),
                lambda: storage.pep.put_node("juliet", PepNode("n")),
                lambda: storage.blocklist.add("juliet", [ROMEO]),
                lambda: storage.vcards.set("juliet", b"<v/>"),
                lambda: storage.private.set("juliet", "{a}b", b"<b/>"),
            ]
            for write in writes:
                with pytest.raises(StorageUnavailable, match="locked"):
                    await write()
            assert await storage.archive.count("juliet") == 0  # WAL: reads go on
            other_writer.execute("ROLLBACK")
        finally:
            other_writer.close()
        await storage.blocklist.add("juliet", [ROMEO])
        assert await storage.blocklist.list("juliet") == [ROMEO]
