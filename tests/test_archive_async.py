"""The archive off the delivery path (issue 11 item 2): a message is delivered at once, its archive rows are
committed in the background in batches, and the sender's XEP-0198 acknowledgement waits for that commit —
through a slow database, a failing one, a full queue, a shutdown and a crash.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import signal
import sqlite3
import types
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from conftest import DOMAIN, PASSWORD, Clients, free_port, make_config, started_server
from test_c2s import logged_in
from test_cli import nitro, serve
from test_stream_management import ENABLE, ENABLED, REQUEST, Peer, bodies, body, bound, managed, ping

from nitro.c2s.ack_gate import AckGate
from nitro.config import ArchiveSection, load_config
from nitro.core.durability import Promise
from nitro.modules.archive_writer import ArchiveWriter
from nitro.server import Server
from nitro.storage.models import ArchiveRow
from nitro.storage.protocols import ArchiveStore

MAM = "urn:xmpp:mam:2"
ACK = re.compile(rb'<a xmlns="urn:xmpp:sm:3" h="(\d+)"/>')


def chat(to: str, text: str | int) -> bytes:
    return f"<message type='chat' to='{to}@{DOMAIN}' id='m{text}'><body>{text}</body></message>".encode()


def mam_query(queryid: str) -> bytes:
    return f"<iq type='set' id='{queryid}'><query xmlns='{MAM}' queryid='{queryid}'/></iq>".encode()


def archived_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "nitro.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM archive_messages").fetchone()[0])


async def available(server: Server, username: str) -> Peer:
    """A raw stream bound and available, so that messages to the bare JID reach it (RFC 6121 §8.5.2)."""
    peer = await bound(server, username)
    peer.send(b"<presence/>")
    await peer.expect(b"<presence")  # its own presence, back from the server
    return peer


async def no_ack(peer: Peer, seconds: float = 1.0) -> None:
    """Nothing acknowledged for `seconds` (the server holds its `<a/>`)."""
    with pytest.raises((AssertionError, TimeoutError)):
        await peer.expect(ACK, timeout=seconds)


# -- the acknowledgement gate, sans-IO ---------------------------------------------------------------------


async def test_h_counts_in_handling_order_however_the_writes_finish() -> None:
    loop = asyncio.get_running_loop()
    counted: list[int] = []
    answers: list[int] = []
    gate = AckGate(lambda: counted.append(len(counted) + 1), lambda: answers.append(len(counted)))
    first: Promise = loop.create_future()
    third: Promise = loop.create_future()
    gate.handled([first])  # a message whose row is not committed yet
    gate.handled([])  # an IQ: nothing stored, but it comes after the message
    gate.handled([third])
    gate.request()  # <r/>: answered once the three before it count
    third.set_result(None)
    await asyncio.sleep(0)
    assert (counted, answers) == ([], [])  # the third is durable, but the first is not
    first.set_result(None)
    await asyncio.sleep(0)
    assert (counted, answers) == ([1, 2, 3], [3])
    gate.request()
    assert answers == [3, 3]  # nothing held: answered at once
    never: Promise = loop.create_future()
    gate.handled([never])
    never.cancel()  # the writer gave up on it: never counted, and neither is what follows
    gate.handled([])
    await asyncio.sleep(0)
    assert counted == [1, 2, 3]
    assert not await gate.drained(0.05)


# -- the writer on the real store ---------------------------------------------------------------------------


async def test_rows_queued_together_are_one_transaction(server: Server, clients: Clients) -> None:
    await clients.user("alice")
    writer = ArchiveWriter(server.storage.archive, lambda: ArchiveSection(batch_size=100, batch_delay=0.2))
    running = asyncio.create_task(writer.run())
    now = datetime.datetime.now(datetime.UTC)
    rows = [ArchiveRow("alice", f"bob@{DOMAIN}", b"<message/>", f"id{n}", now) for n in range(150)]
    promises = [await writer.submit(row) for row in rows]
    await asyncio.wait_for(asyncio.gather(*promises), 10)
    assert (writer.committed, writer.batches) == (150, 2)  # batch_size rows, then the rest
    assert await server.storage.archive.count("alice") == 150
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


class _HeldStore:
    """An archive store whose batches commit only when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.open = asyncio.Event()

    async def append_batch(self, rows: list[ArchiveRow]) -> int:
        await self.open.wait()
        self.batches.append([row.stanza_id for row in rows])
        return len(rows)


class _Senders:
    """A running writer over `store` and numbered senders of alice's rows: `send(n)` submits `idN` (waiting
    for room as a sender does) and returns its promise; `queued` lists the ids in queue order."""

    def __init__(self, store: object, *, batch_size: int, max_pending: int) -> None:
        settings = ArchiveSection(batch_size=batch_size, batch_delay=0, max_pending=max_pending)
        self.writer = ArchiveWriter(cast(ArchiveStore, store), lambda: settings)
        self.running = asyncio.create_task(self.writer.run())
        self.queued: list[str] = []
        self._now = datetime.datetime.now(datetime.UTC)

    async def send(self, n: int) -> Promise:
        row = ArchiveRow("alice", f"bob@{DOMAIN}", b"<message/>", f"id{n}", self._now)
        promise = await self.writer.submit(row)
        self.queued.append(f"id{n}")
        return promise

    async def stop(self) -> None:
        self.running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.running


async def test_a_full_queue_admits_waiting_senders_in_order_as_rows_are_committed() -> None:
    store = _HeldStore()
    line = _Senders(store, batch_size=2, max_pending=3)
    send, queued = line.send, line.queued

    senders = [asyncio.create_task(send(n)) for n in range(8)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert queued == ["id0", "id1", "id2"]  # max_pending rows; the other senders wait
    late = asyncio.create_task(send(8))  # arrives while others wait: waits behind them, room or not
    cancelled = senders[4]
    cancelled.cancel()  # a waiting sender that goes away leaves the line
    store.open.set()
    promises = await asyncio.wait_for(asyncio.gather(*senders[:4], *senders[5:], late), 10)
    await asyncio.wait_for(asyncio.gather(*promises), 10)
    assert queued == ["id0", "id1", "id2", "id3", "id5", "id6", "id7", "id8"]  # first come first
    assert [n for batch in store.batches for n in batch] == queued
    assert cancelled.cancelled()
    assert line.writer.pending == 0
    await line.stop()


class _PermittedStore:
    """An archive store that commits one batch per permit the test gives, and can have something done right
    after a commit (before anything the commit woke runs)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.permits = asyncio.Semaphore(0)
        self.after_commit: list[Callable[[], object]] = []

    async def append_batch(self, rows: list[ArchiveRow]) -> int:
        await self.permits.acquire()
        self.batches.append([row.stanza_id for row in rows])
        loop = asyncio.get_running_loop()
        for call in self.after_commit:  # queued ahead of the wake-ups the writer makes on return
            loop.call_soon(call)
        self.after_commit = []
        return len(rows)


async def test_a_sender_cancelled_once_woken_passes_its_room_to_the_next_in_line() -> None:
    """A waiting sender is woken with a row's room reserved for it; cancelled before it queues its row (its
    client gone), the room goes to the next sender in line instead of being held for ever."""
    store = _PermittedStore()
    line = _Senders(store, batch_size=1, max_pending=1)
    send, queued = line.send, line.queued

    first = await send(0)
    woken, next_in_line = asyncio.create_task(send(1)), asyncio.create_task(send(2))
    for _ in range(3):
        await asyncio.sleep(0)
    assert queued == ["id0"]  # the queue is full: both wait, in order
    store.after_commit.append(woken.cancel)  # cancelled after the commit has woken it, before it runs
    store.permits.release()
    await asyncio.wait_for(first, 5)
    promise = await asyncio.wait_for(next_in_line, 5)
    assert woken.cancelled()
    assert queued == ["id0", "id2"]
    store.permits.release()
    await asyncio.wait_for(promise, 5)
    assert line.writer.pending == 0
    later = await asyncio.wait_for(send(3), 5)  # no room is left reserved for the cancelled sender
    store.permits.release()
    await asyncio.wait_for(later, 5)
    assert store.batches == [["id0"], ["id2"], ["id3"]]
    await line.stop()


# -- through the server ------------------------------------------------------------------------------------


@pytest.mark.fault
async def test_the_ack_waits_for_the_commit_but_delivery_does_not(tmp_path: Path) -> None:
    async with started_server(make_config(tmp_path)) as server:
        for name in ("alice", "bob"):
            await Clients(server).user(name)
        bob = await available(server, "bob")
        alice, _ = await managed(server, "alice")
        with sqlite3.connect(tmp_path / "nitro.db", isolation_level=None) as db:
            db.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock: commits wait
            alice.send(chat("bob", 1) + ping(1) + REQUEST)
            await bob.expect(body(1))  # delivered while its archive rows wait
            await alice.expect(b'id="p1"')  # later stanzas are handled meanwhile ...
            await no_ack(alice)  # ... but 'h' covers nothing before the rows are committed
            db.execute("COMMIT")
        assert int((await alice.expect(ACK, timeout=10)).group(1)) == 2  # the message and the ping
        assert archived_rows(tmp_path) == 2  # alice's copy and bob's


@pytest.mark.fault
async def test_a_failing_archive_is_retried_and_a_full_queue_pauses_the_sender(tmp_path: Path) -> None:
    config = make_config(tmp_path, archive={"retention_days": 0, "max_pending": 2})
    async with started_server(config) as server:
        for name in ("alice", "bob"):
            await Clients(server).user(name)
        bob = await available(server, "bob")
        alice, _ = await managed(server, "alice")
        with sqlite3.connect(tmp_path / "nitro.db") as db:  # the archive's table goes away for a while
            schema = [
                row[0]
                for row in db.execute(
                    "SELECT sql FROM sqlite_master WHERE tbl_name = ?", ("archive_messages",)
                )
            ]
            db.execute("DROP TABLE archive_messages")
        alice.send(chat("bob", 1) + chat("bob", 2) + chat("bob", 3) + REQUEST)
        await bob.expect(body(1))
        with pytest.raises(
            (AssertionError, TimeoutError)
        ):  # two rows wait (max_pending): alice is not read any further
            await bob.expect(body(2), timeout=1.0)
        await no_ack(alice, 0.1)
        with sqlite3.connect(tmp_path / "nitro.db") as db:
            for statement in schema:
                db.execute(statement)
        await bob.expect(body(2), timeout=10)  # nothing was dropped, nothing reordered
        await bob.expect(body(3))
        assert int((await alice.expect(ACK, timeout=10)).group(1)) == 3
        assert archived_rows(tmp_path) == 6


async def test_a_query_sees_the_messages_of_a_moment_ago(tmp_path: Path) -> None:
    config = make_config(tmp_path, archive={"retention_days": 0, "batch_delay": 2.0})  # slow batches
    async with started_server(config) as server:
        for name in ("alice", "bob"):
            await Clients(server).user(name)
        alice = await bound(server, "alice")
        alice.send(chat("bob", "hello") + mam_query("q1"))
        results = await alice.expect(re.compile(rb"<message[^>]*>.*?<fin[^>]*>", re.DOTALL))
        assert bodies(results.group(0)) == ["hello"]  # read through the batch that was still gathering
        bob = await bound(server, "bob")  # not available: the offline copy stays where it is
        bob.send(mam_query("q2"))
        results = await bob.expect(re.compile(rb".*?<fin[^>]*>", re.DOTALL))
        assert bodies(results.group(0)) == ["hello"]


async def test_shutdown_writes_what_is_queued(tmp_path: Path) -> None:
    config = make_config(tmp_path, archive={"retention_days": 0, "batch_delay": 30.0})  # never on its own
    async with started_server(config) as server:
        for name in ("alice", "bob"):
            await Clients(server).user(name)
        bob = await available(server, "bob")
        alice = await bound(server, "alice")
        alice.send(chat("bob", "bye"))
        await bob.expect(body("bye"))
        assert archived_rows(tmp_path) == 0
    assert archived_rows(tmp_path) == 2


@pytest.mark.fault
@pytest.mark.slow
async def test_what_was_acknowledged_survives_a_crash(tmp_path: Path) -> None:
    config_file = tmp_path / "nitro.toml"
    config_file.write_text(
        f"""
[server]
domain = "{DOMAIN}"
[storage]
dsn = "sqlite+aiosqlite:///{tmp_path}/nitro.db"
[c2s]
port = {free_port()}
direct_tls_port = {free_port()}
[tls]
cert = "{tmp_path}/cert.pem"
key = "{tmp_path}/key.pem"
[metrics]
port = 0
[http]
enabled = false
[archive]
batch_delay = 0.3
"""
    )
    for name in ("alice", "bob"):
        assert (
            nitro(config_file, "user", "add", name, "--password-stdin", stdin=f"{PASSWORD}\n").returncode == 0
        )
    stand_in = cast(Server, types.SimpleNamespace(config=load_config(config_file)))  # what logged_in reads

    async def started() -> asyncio.subprocess.Process:
        process = await serve(config_file)
        assert process.stdout is not None
        while b"serving" not in await asyncio.wait_for(process.stdout.readline(), 30):
            pass
        return process

    process = await started()
    try:
        alice = Peer(*await logged_in(stand_in, "alice"))
        alice.send(ENABLE)
        await alice.expect(ENABLED)
        alice.send(b"".join(chat("bob", n) for n in range(5)) + REQUEST)  # bob is offline
        assert int((await alice.expect(ACK, timeout=10)).group(1)) == 5
        process.send_signal(signal.SIGKILL)  # right after the acknowledgement
        await process.wait()
        process = await started()
        alice = Peer(*await logged_in(stand_in, "alice"))
        alice.send(mam_query("after-crash"))
        results = await alice.expect(re.compile(rb".*?<fin[^>]*>", re.DOTALL))
        assert bodies(results.group(0)) == ["0", "1", "2", "3", "4"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
