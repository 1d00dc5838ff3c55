"""The compliance record: one append-only SQL table (an UPDATE is refused by a trigger; rows leave only by
the retention purge), on the server's DSN unless the plugin's `dsn` option names another."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = sa.MetaData()
messages = sa.Table(
    "compliance_messages",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("spool", sa.String(32), nullable=False),  # (spool, seq): the core's numbering, for dedupe
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("sent_at", sa.Float(), nullable=False, index=True),  # when the core routed it
    sa.Column("recorded_at", sa.Float(), nullable=False),  # when this plugin wrote it
    sa.Column("sender", sa.String(3071), nullable=False, index=True),
    sa.Column("recipients", sa.Text(), nullable=False),  # a JSON list of bare JIDs
    sa.Column("message_type", sa.String(16), nullable=False),
    sa.Column("stanza_id", sa.String(256), nullable=True),  # the message's id (origin-id when it has one)
    sa.Column("body", sa.Text(), nullable=True),
    sa.UniqueConstraint("spool", "seq", name="compliance_messages_seq"),
)

_NO_UPDATE = {
    "sqlite": "CREATE TRIGGER IF NOT EXISTS compliance_append_only BEFORE UPDATE ON compliance_messages "
    "BEGIN SELECT RAISE(ABORT, 'compliance_messages is append-only'); END",
    "mysql": "CREATE TRIGGER compliance_append_only BEFORE UPDATE ON compliance_messages FOR EACH ROW "
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'compliance_messages is append-only'",
}


@dataclass(frozen=True, slots=True)
class Record:
    spool: str
    seq: int
    sent_at: float
    sender: str
    recipients: tuple[str, ...]
    message_type: str
    stanza_id: str | None
    body: str | None


async def open_store(dsn: str) -> AsyncEngine:
    """The engine, with the table and its append-only trigger created if missing."""
    engine = create_async_engine(dsn, connect_args={"timeout": 30} if dsn.startswith("sqlite") else {})
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        trigger = _NO_UPDATE.get(engine.dialect.name)
        if trigger is not None:
            try:
                await connection.execute(sa.text(trigger))
            except sa.exc.DBAPIError as exc:
                if "already exists" not in str(exc):
                    raise
    return engine


def _values(item: Record) -> dict[str, Any]:
    return {
        "spool": item.spool,
        "seq": item.seq,
        "sent_at": item.sent_at,
        "recorded_at": time.time(),
        "sender": item.sender,
        "recipients": json.dumps(list(item.recipients)),
        "message_type": item.message_type,
        "stanza_id": item.stanza_id,
        "body": item.body,
    }


_INSERT = (
    sa.insert(messages).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")
)


async def record(engine: AsyncEngine, items: Sequence[Record]) -> None:
    """Append messages in one transaction; one the core sent before (same spool and seq) is skipped."""
    async with engine.begin() as connection:
        await connection.execute(_INSERT, [_values(item) for item in items])


class Batcher:
    """Group commit: records that arrive while a transaction is running go together in the next one, and
    each `add` returns once its record is committed (only then may the plugin acknowledge it)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: list[tuple[Record, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, item: Record) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await record(self._engine, [item for item, _future in batch])
            except Exception as exc:
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _item, future in batch:
                if not future.done():
                    future.set_result(None)


async def search(
    engine: AsyncEngine,
    *,
    user: str | None = None,
    peer: str | None = None,
    since: float | None = None,
    until: float | None = None,
    text: str | None = None,
    limit: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Records matching every given criterion, oldest first (`user` and `peer`: bare JIDs, either side)."""
    query = sa.select(messages).order_by(messages.c.sent_at, messages.c.id)
    for jid in (user, peer):
        if jid:
            query = query.where(sa.or_(messages.c.sender == jid, messages.c.recipients.like(f'%"{jid}"%')))
    if since is not None:
        query = query.where(messages.c.sent_at >= since)
    if until is not None:
        query = query.where(messages.c.sent_at < until)
    if text:
        query = query.where(messages.c.body.like(f"%{text}%"))
    if limit:
        query = query.limit(limit)
    async with engine.connect() as connection:
        result = await connection.stream(query)
        async for row in result:
            yield feed_record(row._mapping)


def feed_record(row: Any) -> dict[str, Any]:
    """One line of the compliance feed (plugins/compliance/README.md)."""
    return {
        "id": row["id"],
        "sent_at": _iso(row["sent_at"]),
        "recorded_at": _iso(row["recorded_at"]),
        "from": row["sender"],
        "to": json.loads(row["recipients"]),
        "type": row["message_type"],
        "stanza_id": row["stanza_id"],
        "body": row["body"],
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}Z"


async def purge(engine: AsyncEngine, older_than: float) -> int:
    """Retention: delete what was sent before `older_than` (seconds since the epoch); the count deleted."""
    async with engine.begin() as connection:
        result = await connection.execute(sa.delete(messages).where(messages.c.sent_at < older_than))
    return int(result.rowcount)


def recipients_of(to: str | None, extra: Sequence[str] = ()) -> tuple[str, ...]:
    bare = (to or "").split("/", 1)[0]
    return tuple(dict.fromkeys([bare, *extra]) if bare else extra)
