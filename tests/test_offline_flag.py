"""Whether a user has offline messages, cached on the embedded SQLite default: a login of a user with none
reads nothing, and a message stored by this server, another node on the same file or another process is
still listed at the next login."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import Clients, make_config, wait_for
from test_message import online, roundtrip, send

from nitro.accounts import create_account
from nitro.server import running_server
from nitro.storage import QuotaExceeded
from nitro.storage.cached_offline import CachedOfflineStore
from nitro.storage.layered import LayeredStorage, open_storage
from nitro.storage.models import OfflineMessage
from nitro.storage.protocols import OfflineStore, Storage
from nitro.xmpp.jid import JID


def counts(storage: LayeredStorage) -> dict[str, int]:
    return storage.tiers.cache.stats.get("offline", {"hits": 0, "misses": 0})


def bodies(messages: Sequence[OfflineMessage]) -> list[bytes]:
    return [message.stanza for message in messages]


async def test_a_user_with_no_messages_is_read_once(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "bob", "secret")
        assert await storage.offline.list("bob") == []
        assert await storage.offline.list("bob") == []
        assert await storage.offline.list("bob") == []
        assert counts(storage) == {"hits": 2, "misses": 1, "evictions": 0, "expired": 0}
        assert await storage.offline.list("nobody") == []  # no such account: none either


async def test_own_pushes_and_deletes_are_seen_at_once(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "bob", "secret")
        assert await storage.offline.list("bob") == []
        first = await storage.offline.push("bob", b"<message>1</message>", quota=10)
        assert bodies(await storage.offline.list("bob")) == [b"<message>1</message>"]
        assert bodies(await storage.offline.list("bob")) == [b"<message>1</message>"]  # a flag "some": read
        await storage.offline.delete("bob", [first])
        assert await storage.offline.list("bob") == []
        await storage.offline.push("bob", b"<message>2</message>", quota=10)
        assert bodies(await storage.offline.list("bob")) == [b"<message>2</message>"]


async def test_a_refused_push_drops_the_flag_too(tmp_path: Path) -> None:
    """Whatever a push's outcome, the flag is read again (a commit whose outcome is unknown may have
    happened)."""
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        await create_account(storage, "bob", "secret")
        assert await storage.offline.list("bob") == []
        with pytest.raises(QuotaExceeded):
            await storage.offline.push("bob", b"<message/>", quota=0)
        misses = counts(storage)["misses"]
        assert await storage.offline.list("bob") == []
        assert counts(storage)["misses"] == misses + 1


async def test_a_message_stored_by_another_node_on_the_file_is_listed(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as first, open_storage(config) as second:
        await create_account(first, "bob", "secret")
        assert await first.offline.list("bob") == []
        assert await first.offline.list("bob") == []
        await second.offline.push("bob", b"<message>elsewhere</message>", quota=10)
        assert bodies(await first.offline.list("bob")) == [b"<message>elsewhere</message>"]


async def test_a_message_stored_by_another_process_is_listed(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    path = tmp_path / "nitro.db"
    assert config.storage.dsn.endswith(str(path))
    script = textwrap.dedent(
        """
        import sqlite3, sys
        connection = sqlite3.connect(sys.argv[1])
        with connection:
            connection.execute(
                "INSERT INTO offline_messages (account_id, stanza, stored_at)"
                " SELECT id, ?, '2026-01-01 00:00:00.000000' FROM accounts WHERE username = ?",
                (b"<message>from a script</message>", b"bob"),
            )
        connection.close()
        """
    )
    async with open_storage(config) as storage:
        await create_account(storage, "bob", "secret")
        assert await storage.offline.list("bob") == []
        assert await storage.offline.list("bob") == []  # cached: none
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        listed = await storage.offline.list("bob")
        assert bodies(listed) == [b"<message>from a script</message>"]
        assert listed[0].stored_at == datetime(2026, 1, 1, tzinfo=UTC)


class _SlowLists:
    """The SQL offline store, whose listing waits for `gate` after it read (as a slow read would)."""

    def __init__(self, sql: OfflineStore) -> None:
        self.sql = sql
        self.read = asyncio.Event()
        self.gate = asyncio.Event()
        self.push = sql.push
        self.delete = sql.delete
        self.count = sql.count

    async def list(self, username: str) -> list[OfflineMessage]:
        messages = await self.sql.list(username)
        self.read.set()
        await self.gate.wait()
        return messages


async def test_a_push_during_a_listing_is_not_hidden_by_its_flag(tmp_path: Path) -> None:
    """A listing that read before a push committed returns without it (they were concurrent), but its
    "none" is not kept: the next login lists the message."""
    config = make_config(tmp_path, redis={"instances": []})
    slow: list[_SlowLists] = []

    def wrap(sql: Storage) -> Storage:
        slow.append(_SlowLists(sql.offline))
        return Storage(
            **{**{name: getattr(sql, name) for name in sql.__dataclass_fields__}, "offline": slow[0]}
        )

    async with open_storage(config, wrap_sql=wrap) as storage:
        await create_account(storage, "bob", "secret")
        listing = asyncio.ensure_future(storage.offline.list("bob"))
        await slow[0].read.wait()
        await storage.offline.push("bob", b"<message>meanwhile</message>", quota=10)
        slow[0].gate.set()
        assert await listing == []
        assert bodies(await storage.offline.list("bob")) == [b"<message>meanwhile</message>"]


async def test_a_commit_elsewhere_during_a_listing_is_not_hidden_by_it(tmp_path: Path) -> None:
    """A listing that read before another process's commit keeps no "none" once that commit is seen."""
    config = make_config(tmp_path, redis={"instances": []})
    slow: list[_SlowLists] = []

    def wrap(sql: Storage) -> Storage:
        slow.append(_SlowLists(sql.offline))
        return Storage(
            **{**{name: getattr(sql, name) for name in sql.__dataclass_fields__}, "offline": slow[0]}
        )

    async with open_storage(config, wrap_sql=wrap) as first, open_storage(config) as second:
        await create_account(first, "bob", "secret")
        listing = asyncio.ensure_future(first.offline.list("bob"))
        await slow[0].read.wait()
        await second.offline.push("bob", b"<message>elsewhere</message>", quota=10)
        await first.tiers.fresh()  # another reader notices the commit meanwhile: a new generation
        slow[0].gate.set()
        assert await listing == []
        slow[0].gate.set()
        assert bodies(await first.offline.list("bob")) == [b"<message>elsewhere</message>"]


async def test_the_users_known_to_have_none_are_bounded_by_the_cache_size(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []}, cache={"max_entries": 3})
    async with open_storage(config) as storage:
        offline = storage.offline
        assert isinstance(offline, CachedOfflineStore)
        for n in range(5):
            await create_account(storage, f"user{n}", "secret")
            assert await offline.list(f"user{n}") == []
            assert len(offline) <= 3
        await offline.push("user4", b"<message/>", quota=10)
        assert bodies(await offline.list("user4")) == [b"<message/>"]


async def test_nothing_is_cached_without_a_watch(tmp_path: Path) -> None:
    config = make_config(tmp_path, redis={"instances": []})
    async with open_storage(config) as storage:
        assert storage.tiers.watch is not None
        storage.tiers.watch.close()
        storage.tiers.watch = None  # as when the watching connection could not be opened
        await create_account(storage, "bob", "secret")
        assert await storage.offline.list("bob") == []
        assert await storage.offline.list("bob") == []
        assert isinstance(storage.offline, CachedOfflineStore)
        assert len(storage.offline) == 0
        assert counts(storage)["hits"] == 0


async def test_bob_who_was_online_before_gets_what_came_while_he_was_away(tmp_path: Path) -> None:
    """Bob's first login finds (and caches) no messages; alice writes while he is away; his next login
    gets them."""
    config = make_config(tmp_path, redis={"instances": []})
    async with running_server(config) as server:
        pool = Clients(server)
        try:
            alice_jid, bob_jid = await pool.user("alice"), await pool.user("bob")
            alice, _ = await online(pool, alice_jid)
            bob, _ = await online(pool, bob_jid)
            await roundtrip(bob)
            await bob.disconnect(wait=0.5)
            await wait_for(lambda: not server.sessions.resources(JID.parse(bob_jid)))
            send(alice, bob_jid, "while you were away", id_="away-1")
            await roundtrip(alice)
            assert await server.storage.offline.count("bob") == 1
            _, inbox = await online(pool, f"{bob_jid}/again")
            await wait_for(lambda: len(inbox) == 1)
            assert [m["body"] for m in inbox] == ["while you were away"]
        finally:
            await pool.close_all()
