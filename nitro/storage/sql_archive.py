"""The message archive (XEP-0313) on SQL: every page is an index range walk, never a table scan.

`archive_messages.id` only grows, so it orders each archive; a page is the rows after (or before) one
row's id in (account_id, id) or (account_id, with_key, id) order, fetched with one row more than asked
to learn whether the page is the last one in its direction (XEP-0059 RSM paging).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import get_args

from sqlalchemy import ColumnElement, Row, delete, false, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from nitro.storage.errors import ItemNotFound, StorageError
from nitro.storage.models import (
    ArchiveDefault,
    ArchivedMessage,
    ArchivePage,
    ArchivePrefs,
    ArchiveQuery,
    ArchiveRow,
)
from nitro.storage.schema import ARCHIVE_ID_MAX, accounts, archive_messages, archive_prefs
from nitro.storage.sql_base import (
    DELETE_CHUNK,
    Database,
    contact_keys,
    json_strings,
    strings_from_json,
    translated,
    username_key,
)

log = logging.getLogger(__name__)

_EXPIRE_CHUNK = 1000  # rows per retention transaction: other writers get the lock in between
_MODES: dict[str, ArchiveDefault] = {mode: mode for mode in get_args(ArchiveDefault)}
_PAGE_COLUMNS = (
    archive_messages.c.id,
    archive_messages.c.stanza_id,
    archive_messages.c.with_jid,
    archive_messages.c.timestamp,
    archive_messages.c.stanza,
)


# On a SQLite file a batch is sent to the driver directly, its rows as tuples in the statement's order.
_SQLITE_INSERT = (
    "INSERT INTO archive_messages (account_id, stanza_id, with_key, with_jid, timestamp, stanza)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _account_ids_sql(count: int) -> str:
    """The ids of `count` accounts by username (only placeholders are put in the text)."""
    return f"SELECT username, id FROM accounts WHERE username IN ({', '.join('?' * count)})"  # noqa: S608


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return moment


def sqlite_time_text(moment: datetime) -> str:
    """An aware time as SQLAlchemy stores it in SQLite's DATETIME: naive UTC text with six decimals
    ("2026-12-06 00:05:00.000000"), in one C call where its processors take three Python ones."""
    return _aware(moment, "timestamp").astimezone(UTC).isoformat(" ", "microseconds")[:-6]  # no "+00:00"


def _message(row: Row[int, str, bytes, datetime, bytes]) -> ArchivedMessage:
    return ArchivedMessage(
        id=row.stanza_id, with_jid=row.with_jid.decode(), timestamp=row.timestamp, stanza=row.stanza
    )


# Counting walks index entries: results larger than this go uncounted, so a query on an archive of a
# million messages stays a bounded index walk.
COUNT_CAP = 10_000


class SqlArchiveStore:
    """ArchiveStore on SQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def append(
        self, username: str, *, with_jid: str, stanza: bytes, stanza_id: str, timestamp: datetime
    ) -> None:
        if not 0 < len(stanza_id) <= ARCHIVE_ID_MAX:
            raise ValueError(f"an archive id is 1 to {ARCHIVE_ID_MAX} characters")
        with_raw, with_key = contact_keys(with_jid)
        values = {
            "stanza_id": stanza_id,
            "with_key": with_key,
            "with_jid": with_raw,
            "timestamp": _aware(timestamp, "timestamp"),
            "stanza": stanza,
        }
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            await conn.execute(insert(archive_messages).values(account_id=account_id, **values))

    @translated
    async def append_batch(self, rows: Sequence[ArchiveRow]) -> int:
        """One transaction for the whole batch (the commit of nitro/modules/archive_writer.py)."""
        if not rows:
            return 0
        for row in rows:
            if not 0 < len(row.stanza_id) <= ARCHIVE_ID_MAX:
                raise ValueError(f"an archive id is 1 to {ARCHIVE_ID_MAX} characters")
        if self._db.write_engine is not None:
            return await self._append_batch_sqlite(rows)
        keys = sorted({username_key(row.username) for row in rows})
        async with self._db.writer.begin() as conn:
            # The accounts' rows locked in one order (MariaDB), so that no account is deleted mid-batch.
            found = select(accounts.c.username, accounts.c.id).where(accounts.c.username.in_(keys))
            ids = {name: account_id for name, account_id in await conn.execute(found.with_for_update())}
            values = []
            for row in rows:
                account_id = ids.get(username_key(row.username))
                if account_id is None:
                    continue  # the account is gone: nothing to archive for it
                with_raw, with_key = contact_keys(row.with_jid)
                values.append(
                    {
                        "account_id": account_id,
                        "stanza_id": row.stanza_id,
                        "with_key": with_key,
                        "with_jid": with_raw,
                        "timestamp": _aware(row.timestamp, "timestamp"),
                        "stanza": row.stanza,
                    }
                )
            if values:
                await conn.execute(insert(archive_messages), values)
        return len(values)

    async def _append_batch_sqlite(self, rows: Sequence[ArchiveRow]) -> int:
        """The batch on a SQLite file in four trips to its writing connection (BEGIN IMMEDIATE, the
        accounts' ids, the rows, COMMIT); SQLite's write lock is the whole file's, no row is locked."""
        keys = list({username_key(row.username): None for row in rows})
        values = []
        async with self._db.sqlite_writing() as driver:
            ids: dict[bytes, int] = {}
            for start in range(0, len(keys), DELETE_CHUNK):  # below SQLite's old limit of 999 parameters
                chunk = keys[start : start + DELETE_CHUNK]
                found = await driver.execute_fetchall(_account_ids_sql(len(chunk)), chunk)
                ids.update((username, account_id) for username, account_id in found)
            for row in rows:
                account_id = ids.get(row.username.encode())
                if account_id is None:
                    continue  # the account is gone: nothing to archive for it
                with_raw, with_key = contact_keys(row.with_jid)
                stamp = sqlite_time_text(row.timestamp)
                values.append((account_id, row.stanza_id, with_key, with_raw, stamp, row.stanza))
            if values:
                await driver.executemany(_SQLITE_INSERT, values)
        return len(values)

    @translated
    async def query(self, username: str, query: ArchiveQuery) -> ArchivePage:
        if query.limit < 0:
            raise ValueError("limit must not be negative")
        t = archive_messages
        # One read transaction (page and counts agree), off the loop: it may walk many index entries.
        async with self._db.engine.connect() as conn:
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                if query.after_id is not None or query.before_id:
                    raise ItemNotFound("no such archived message")
                return ArchivePage(messages=(), complete=True, count=0, first_index=None)

            # XEP-0313 §4.1 filters; each keeps the query on one of the (account_id, …) indexes.
            filters: list[ColumnElement[bool]] = [t.c.account_id == account_id]
            if query.with_jid is not None:
                filters.append(t.c.with_key == contact_keys(query.with_jid)[1])
            if query.start is not None:
                filters.append(t.c.timestamp >= _aware(query.start, "start"))
            if query.end is not None:
                filters.append(t.c.timestamp <= _aware(query.end, "end"))
            if query.ids is not None:  # looked up in the unique index, then fetched by primary key
                found = select(t.c.id).where(t.c.account_id == account_id, t.c.stanza_id.in_(query.ids))
                filters.append(t.c.id.in_(list((await conn.execute(found)).scalars())))
            if query.start is not None or query.end is not None:
                # The time range as an id range (exact: the first and last matching ids, found in the
                # (account_id, timestamp) index), so the page walks ids in order instead of sorting.
                first_last = select(func.min(t.c.id), func.max(t.c.id)).where(*filters)
                first, last = (await conn.execute(first_last)).one()
                if first is None:
                    filters.append(false())
                else:
                    filters += [t.c.id >= first, t.c.id <= last]

            # XEP-0059 §2.2/§2.3: after → forward from that item; before → backward, "" from the end.
            bounds: list[ColumnElement[bool]] = []
            if query.after_id is not None:
                bounds.append(t.c.id > await self._row_id(conn, account_id, query.after_id))
            backward = query.before_id is not None
            if query.before_id:
                bounds.append(t.c.id < await self._row_id(conn, account_id, query.before_id))

            page = select(*_PAGE_COLUMNS).where(*filters, *bounds)
            page = page.order_by(t.c.id.desc() if backward else t.c.id).limit(query.limit + 1)
            rows = list(await conn.execute(page))
            complete = len(rows) <= query.limit
            rows = rows[: query.limit]
            if backward:
                rows.reverse()

            count = await self._bounded_count(conn, filters) if query.with_count else None
            first_index: int | None
            if not rows:
                first_index = None
            elif not bounds and not backward:
                first_index = 0
            elif count is None:
                first_index = None
            elif not bounds:  # the very first or the very last page of the result
                first_index = count - len(rows) if backward else 0
            else:
                first_index = await self._bounded_count(conn, [*filters, t.c.id < rows[0].id])
            return ArchivePage(
                messages=tuple(_message(row) for row in rows),
                complete=complete,
                count=count,
                first_index=first_index,
            )

    @translated
    async def get_prefs(self, username: str) -> ArchivePrefs | None:
        query = (
            select(archive_prefs)
            .join_from(archive_prefs, accounts)
            .where(accounts.c.username == username_key(username))
        )
        row = await self._db.one_or_none(query)
        if row is None:
            return None
        default = _MODES.get(row.default_mode)
        if default is None:
            raise StorageError(f"archive preferences with unknown default {row.default_mode!r}")
        return ArchivePrefs(
            default=default,
            always=strings_from_json(row.always_jids),
            never=strings_from_json(row.never_jids),
        )

    @translated
    async def set_prefs(self, username: str, prefs: ArchivePrefs) -> None:
        if prefs.default not in _MODES:
            raise ValueError(f"unknown archiving default {prefs.default!r}")
        values = {
            "default_mode": prefs.default,
            "always_jids": json_strings(prefs.always),
            "never_jids": json_strings(prefs.never),
        }
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            await conn.execute(delete(archive_prefs).where(archive_prefs.c.account_id == account_id))
            await conn.execute(insert(archive_prefs).values(account_id=account_id, **values))

    @translated
    async def expire(self, before: datetime) -> int:
        t = archive_messages
        oldest = select(t.c.id).where(t.c.timestamp < _aware(before, "before")).limit(_EXPIRE_CHUNK)
        deleted = 0
        while True:
            async with self._db.writer.begin() as conn:
                ids = list((await conn.execute(oldest)).scalars())
                for start in range(0, len(ids), DELETE_CHUNK):
                    await conn.execute(delete(t).where(t.c.id.in_(ids[start : start + DELETE_CHUNK])))
            deleted += len(ids)
            if len(ids) < _EXPIRE_CHUNK:
                break
        if deleted:
            log.info("archive retention deleted %d messages older than %s", deleted, before.isoformat())
        return deleted

    @translated
    async def count(self, username: str) -> int:
        async with self._db.engine.connect() as conn:
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                return 0
            return await self._count(conn, [archive_messages.c.account_id == account_id])

    @staticmethod
    async def _bounded_count(conn: AsyncConnection, filters: list[ColumnElement[bool]]) -> int | None:
        """COUNT of at most COUNT_CAP index entries; None past that (RSM count is optional, XEP-0059 §2.2)."""
        capped = select(archive_messages.c.id).where(*filters).limit(COUNT_CAP + 1).subquery()
        counted = int((await conn.execute(select(func.count()).select_from(capped))).scalar_one())
        return counted if counted <= COUNT_CAP else None

    @staticmethod
    async def _count(conn: AsyncConnection, filters: list[ColumnElement[bool]]) -> int:
        query = select(func.count()).select_from(archive_messages).where(*filters)
        return int((await conn.execute(query)).scalar_one())

    @staticmethod
    async def _row_id(conn: AsyncConnection, account_id: int, stanza_id: str) -> int:
        """The row id of the archived message with this XEP-0359 id; ItemNotFound if there is none."""
        query = select(archive_messages.c.id).where(
            archive_messages.c.account_id == account_id, archive_messages.c.stanza_id == stanza_id
        )
        row_id: int | None = (await conn.execute(query)).scalar_one_or_none()
        if row_id is None:
            raise ItemNotFound("no such archived message")
        return row_id
