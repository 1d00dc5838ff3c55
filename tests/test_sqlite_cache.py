"""The in-process cache without a ring, on the embedded SQLite default: served while SQLite's
`PRAGMA data_version` reports no commit by another process; any such commit drops it, and the server's
own writes (all on one writing connection) drop what they changed, so no read after a write returned
sees the old value."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from conftest import make_config

from nitro.accounts import change_password, create_account
from nitro.storage.layered import LayeredStorage, open_storage
from nitro.storage.models import LastActivity, RosterItem
from nitro.storage.singleflight import SingleFlight
from nitro.storage.sqlite_watch import DataVersion, watchable_path
from nitro.xmpp.sasl.credentials import verify_password


def hits(storage: LayeredStorage, kind: str) -> int:
    return storage.tiers.cache.stats.get(kind, {}).get("hits", 0)


def item(jid: str) -> RosterItem:
    return RosterItem(jid=jid, name=None, subscription="both")


async def test_reads_are_cached_until_another_connection_commits(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as first, open_storage(config) as second:
        assert first.tiers.ring is None
        assert first.tiers.watch is not None
        await create_account(first, "alice", "secret")
        await first.rosters.get("alice")
        assert (await first.rosters.get("alice")).items == ()
        assert hits(first, "roster") == 1  # the second read came from the cache
        await second.rosters.put("alice", item("bob@localhost"))  # another pool, as another process
        assert [i.jid for i in (await first.rosters.get("alice")).items] == ["bob@localhost"]
        assert hits(first, "roster") == 1
        await first.blocklist.list("alice")
        await second.blocklist.add("alice", ["eve@localhost"])
        assert await first.blocklist.list("alice") == ["eve@localhost"]


async def test_own_writes_are_read_back_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        assert await storage.blocklist.list("alice") == []
        await storage.blocklist.add("alice", ["eve@localhost"])
        assert await storage.blocklist.list("alice") == ["eve@localhost"]
        await storage.rosters.get("alice")
        await storage.rosters.put("alice", item("bob@localhost"))
        assert [i.jid for i in (await storage.rosters.get("alice")).items] == ["bob@localhost"]


async def test_nitro_user_passwd_in_another_process_takes_effect(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    toml = tmp_path / "cli.toml"
    toml.write_text(f'[storage]\ndsn = "{config.storage.dsn}"\n[admin]\nsocket = ""\npid_file = ""\n')
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "old-secret")
        before = await storage.accounts.get_credentials("alice")
        assert before is not None
        assert verify_password("old-secret", before["SHA-1"])
        await storage.accounts.get_credentials("alice")
        assert hits(storage, "account") == 1
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "nitro",
                "--config",
                str(toml),
                "user",
                "passwd",
                "alice",
                "--password-stdin",
            ],
            input="new-secret\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        after = await storage.accounts.get_credentials("alice")
        assert after is not None
        assert verify_password("new-secret", after["SHA-1"])
        assert not verify_password("old-secret", after["SHA-1"])


async def test_cached_credentials_are_kept_encoded_and_read_back_equal(tmp_path: Path) -> None:
    """Credentials are read at logins only: the cache keeps their encoding (less memory per online user) and a
    hit decodes it; a password change (which drops the entry's group) is read back at once."""
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        first = await storage.accounts.get_credentials("alice")
        assert first is not None
        [(key, entry)] = [(k, e) for k, e in storage.tiers.cache._entries.items() if k.startswith("account")]
        assert isinstance(entry.value, bytes)
        assert entry.group is key  # one string for both (the group of an owner's one value is its key)
        again = await storage.accounts.get_credentials("alice")
        assert hits(storage, "account") == 1
        assert again == first
        assert again is not first
        assert verify_password("secret", again["SHA-1"])
        assert await change_password(storage, "alice", "other-secret")
        changed = await storage.accounts.get_credentials("alice")
        assert changed is not None
        assert verify_password("other-secret", changed["SHA-1"])
        assert not verify_password("secret", changed["SHA-1"])
        assert await storage.accounts.get_credentials("nobody") is None
        assert await storage.accounts.get_credentials("nobody") is None  # a cached absence, decoded


def test_only_sqlite_files_are_watched(tmp_path: Path) -> None:
    assert watchable_path(f"sqlite+aiosqlite:///{tmp_path}/nitro.db") == tmp_path / "nitro.db"
    assert watchable_path("sqlite+aiosqlite:///:memory:") is None
    assert watchable_path("sqlite+aiosqlite:///file:shared?mode=memory&cache=shared&uri=true") is None
    assert watchable_path("mysql+asyncmy://nitro:pw@127.0.0.1:3306/nitro") is None


def test_a_database_that_cannot_be_read_counts_as_changed(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not SQLite" * 100)
    watch = DataVersion(path)
    watch.open()
    try:
        assert watch.changed()
        assert watch.changed()  # every time: nothing may be served from the cache
    finally:
        watch.close()
    assert DataVersion(path).changed()  # never opened


def test_data_version_sees_other_connections_only(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    watch = DataVersion(path)
    watch.open()
    try:
        assert watch.changed()  # the first look
        assert not watch.changed()
        writer.execute("INSERT INTO t VALUES (1)")
        assert watch.changed()
        assert not watch.changed()
    finally:
        watch.close()
        writer.close()


async def test_an_unwatchable_database_caches_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        assert storage.tiers.watch is not None
        storage.tiers.watch.close()
        storage.tiers.watch = None  # as when the watching connection could not be opened
        await create_account(storage, "alice", "secret")
        await storage.rosters.get("alice")
        await storage.rosters.get("alice")
        assert len(storage.tiers.cache) == 0


async def test_a_read_of_a_newer_generation_never_joins_an_older_flight() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()
    loads: list[int] = []

    async def load(value: int) -> int:
        loads.append(value)
        await release.wait()
        return value

    first = asyncio.ensure_future(flights.read("alice", lambda: load(1), 0))
    joined = asyncio.ensure_future(flights.read("alice", lambda: load(2), 0))
    await asyncio.sleep(0)
    newer = asyncio.ensure_future(flights.read("alice", lambda: load(3), 1))  # committed elsewhere since
    await asyncio.sleep(0)
    release.set()
    assert list(await asyncio.gather(first, joined, newer)) == [1, 1, 3]
    assert loads == [1, 3]


async def test_the_generation_moves_when_another_connection_commits(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as first, open_storage(config) as second:
        await create_account(first, "alice", "secret")
        await first.tiers.fresh()
        generation = first.tiers.generation()
        await first.tiers.fresh()
        assert first.tiers.generation() == generation
        await first.blocklist.add("alice", ["mallory@localhost"])  # our own write: invalidated by itself
        await first.tiers.fresh()
        assert first.tiers.generation() == generation
        await second.blocklist.add("alice", ["eve@localhost"])
        await first.tiers.fresh()
        assert first.tiers.generation() == generation + 1


async def test_our_own_commits_keep_what_they_did_not_change_cached(tmp_path: Path) -> None:
    """Every write of the server goes through its one writing connection, so a logout storm (last
    activity), offline messages or a roster change of one user drop nothing else from the cache."""
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        await create_account(storage, "bob", "secret")
        await storage.rosters.put("alice", item("carol@localhost"))
        await storage.rosters.get("alice")
        await storage.blocklist.list("alice")
        roster_hits, list_hits = hits(storage, "roster"), hits(storage, "blocklist")
        await storage.last.set("bob", LastActivity(datetime.now(UTC), "gone"))
        await storage.offline.push("bob", b"<message/>", quota=10)
        await storage.rosters.put("bob", item("dave@localhost"))
        await storage.blocklist.add("bob", ["eve@localhost"])
        assert [i.jid for i in (await storage.rosters.get("alice")).items] == ["carol@localhost"]
        assert await storage.blocklist.list("alice") == []
        assert hits(storage, "roster") == roster_hits + 1
        assert hits(storage, "blocklist") == list_hits + 1
        # and what they did change is read back at once
        assert [i.jid for i in (await storage.rosters.get("bob")).items] == ["dave@localhost"]
        assert await storage.blocklist.list("bob") == ["eve@localhost"]


async def test_a_commit_elsewhere_during_a_look_is_seen_by_the_reads_after_it(tmp_path: Path) -> None:
    """A read that arrives while the writing connection is being asked waits for that look, and looks
    again: the look may have run before a commit that happened before this read began."""
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as first, open_storage(config) as second:
        await create_account(first, "alice", "secret")
        assert await first.blocklist.list("alice") == []
        tiers = first.tiers
        asked = tiers._writer_version
        assert asked is not None
        gate, looked = asyncio.Event(), asyncio.Event()
        looks: list[int] = []

        async def slow_look() -> int:
            version = await asked()  # runs before the commit below
            looks.append(version)
            looked.set()
            await gate.wait()
            return version

        tiers._writer_version = slow_look
        await first.rosters.put("alice", item("bob@localhost"))  # our own: the watch moves
        early = asyncio.ensure_future(first.blocklist.list("alice"))
        await looked.wait()
        await second.blocklist.add("alice", ["eve@localhost"])  # another process, after that look ran
        late = asyncio.ensure_future(first.blocklist.list("alice"))
        await asyncio.sleep(0.05)
        gate.set()
        assert await early in ([], ["eve@localhost"])  # concurrent with the commit: either is linearizable
        assert await late == ["eve@localhost"]
        assert len(looks) == 2  # the late read did not rely on the look that began before it


async def test_items_for_takes_cached_rosters_and_reads_the_others(tmp_path: Path) -> None:
    """A login's probes: the contacts' rosters cached here answer without SQL; the others are read."""
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        for name in ("alice", "bob", "carol", "dave"):
            await create_account(storage, name, "secret")
        for name in ("bob", "carol", "dave"):
            await storage.rosters.put(name, item("alice@localhost"))
        await storage.rosters.put("dave", item("zed@localhost"))
        await storage.rosters.get("bob")  # bob's and dave's rosters are cached; carol's is not
        await storage.rosters.get("dave")
        before = hits(storage, "roster")
        misses = storage.tiers.cache.stats["roster"]["misses"]
        found = await storage.rosters.items_for(["bob", "carol", "dave", "erin"], "alice@localhost")
        assert found == {name: item("alice@localhost") for name in ("bob", "carol", "dave")}
        assert hits(storage, "roster") == before + 2
        assert storage.tiers.cache.stats["roster"]["misses"] == misses + 2  # carol's and erin's
        assert await storage.rosters.items_for(["bob", "dave"], "nobody@localhost") == {}
        assert await storage.rosters.items_for([], "alice@localhost") == {}


async def test_items_for_sees_another_process_commit_over_a_cached_roster(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as first, open_storage(config) as second:
        await create_account(first, "alice", "secret")
        await create_account(first, "bob", "secret")
        await first.rosters.put("bob", item("alice@localhost"))
        await first.rosters.get("bob")
        assert await first.rosters.items_for(["bob"], "alice@localhost") == {"bob": item("alice@localhost")}
        from_only = RosterItem(jid="alice@localhost", name="A", subscription="from")
        await second.rosters.put("bob", from_only)  # another pool, as another process
        assert await first.rosters.items_for(["bob"], "alice@localhost") == {"bob": from_only}
        await second.rosters.remove("bob", "alice@localhost")
        assert await first.rosters.items_for(["bob"], "alice@localhost") == {}


async def test_items_for_own_write_is_seen_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        await create_account(storage, "bob", "secret")
        await storage.rosters.put("bob", item("alice@localhost"))
        await storage.rosters.get("bob")
        await storage.rosters.remove("bob", "alice@localhost")
        assert await storage.rosters.items_for(["bob"], "alice@localhost") == {}


async def test_a_read_begun_after_a_commit_elsewhere_sees_it_while_an_earlier_read_is_in_flight(
    tmp_path: Path,
) -> None:
    """A read looks at data_version once, when it begins (its lookup follows that look): a commit by
    another process after an earlier read's look may be missed by that read, never by a later one."""
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "alice", "secret")
        await storage.rosters.put("alice", item("bob@localhost"))

        async def roster_version() -> object:
            return (await storage.rosters.get("alice")).version

        async def iterations() -> object:
            credentials = await storage.accounts.get_credentials("alice")
            assert credentials is not None
            return credentials["SHA-1"].iterations

        async def blocked() -> object:
            return await storage.blocklist.list("alice")

        changes: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (roster_version, "UPDATE roster_versions SET version = version + 10"),
            (iterations, "UPDATE scram_credentials SET iterations = iterations + 1"),
            (blocked, "INSERT INTO blocked_jids SELECT account_id, contact_key, contact FROM roster_items"),
        ]
        for read, change in changes:
            old = await read()
            assert await read() == old  # cached
            early = asyncio.ensure_future(read())
            await asyncio.sleep(0)  # the early read has looked and waits for its load
            other = sqlite3.connect(tmp_path / "nitro.db", isolation_level=None, timeout=5)
            try:  # another process: a commit with no await of ours in between
                other.execute(change)
            finally:
                other.close()
            new = await read()
            assert new != old, change
            assert await early in (old, new)  # concurrent with the commit: either is linearizable
