"""RosterStore on SQL (RFC 6121 rosters); the version (XEP-0237) is bumped in the transaction that changes
the roster.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, get_args

from sqlalchemy import Row, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nitro.interned import Interned
from nitro.storage.errors import NoSuchAccount, QuotaExceeded, StorageError
from nitro.storage.models import Roster, RosterItem, Subscription
from nitro.storage.schema import accounts, roster_items, roster_versions
from nitro.storage.sql_base import Database, contact_keys, translated, username_key
from nitro.storage.sqlite_read import Reader
from nitro.storage.sqlite_select import loop_compiled

_ITEMS_FOR_BATCH = 500  # usernames per IN (…) of `items_for`: far below any bound-parameter limit
_SUBSCRIPTIONS: dict[str, Subscription] = {name: name for name in get_args(Subscription)}


def item_row(item: RosterItem) -> dict[str, Any]:
    if item.subscription not in _SUBSCRIPTIONS:
        raise ValueError(f"unknown subscription state {item.subscription!r}")
    if not all(isinstance(group, str) for group in item.groups):
        raise TypeError("roster groups are strings")
    contact, contact_key = contact_keys(item.jid)
    return {
        "contact_key": contact_key,
        "contact": contact,
        "name": item.name,
        "subscription": item.subscription,
        "ask": item.ask,
        "pending_in": item.pending_in,
        "approved": item.approved,
        "groups": json.dumps(list(item.groups), ensure_ascii=False),
        "in_roster": item.in_roster,
        "request": item.request,
    }


# Every roster read selects the item's columns last, in the table's order: a row is decoded by position
# (a tuple unpacking instead of nine lookups by name).
_ITEM_COLUMNS = (
    *("contact", "name", "subscription", "ask", "pending_in"),
    *("approved", "groups", "in_roster", "request"),
)
if tuple(roster_items.c.keys()[-len(_ITEM_COLUMNS) :]) != _ITEM_COLUMNS:
    raise RuntimeError("roster_items' last columns are not those _item_from_row unpacks")
# Decoded group lists, shared: most rosters use a few ("[]", '["Friends"]'), so each is parsed once.
_GROUPS_KEPT = 4096


def _decoded_groups(text: str) -> tuple[str, ...]:
    """The JSON array of a row's groups."""
    return tuple(json.loads(text))


_GROUPS: Interned[str, tuple[str, ...]] = Interned(_decoded_groups, kept=_GROUPS_KEPT)
_groups = _GROUPS.get


# Decoded items, shared: a contact's item is often the same in every roster that has it (same subscription,
# no name or the same one, the same groups), and the rosters cached for online users then hold one object
# per distinct item instead of one per row (20 of 2 KB per idle session with rosters of 20; issue 16).
# Keyed by the row's raw values, so a hit also skips the decoding; cleared when full, like _GROUPS.
_ITEMS_KEPT = 8192


def _item_from_row(row: Row[Any]) -> RosterItem:
    values: tuple[Any, ...] = row[-9:]  # see _ITEM_COLUMNS
    if values[-1] is not None:  # a pending request's XML: rare, not shared (and maybe not hashable)
        return _decoded(values)
    try:
        return _ITEMS.get(values)
    except TypeError:  # a driver's unhashable value (a bytearray): decoded, not shared
        return _decoded(values)


def _decoded(values: tuple[Any, ...]) -> RosterItem:
    contact, name, subscription, ask, pending_in, approved, groups, in_roster, request = values
    checked = _SUBSCRIPTIONS.get(subscription)
    if checked is None:
        raise StorageError(f"roster item with unknown subscription {subscription!r}")
    return RosterItem(
        # interned: a contact is in many rosters, and cached rosters then share one string (idle memory)
        sys.intern(contact.decode()),
        name,
        checked,
        bool(ask),
        bool(pending_in),
        bool(approved),
        _groups(groups),
        bool(in_roster),
        None if request is None else bytes(request),
    )


_ITEMS: Interned[tuple[Any, ...], RosterItem] = Interned(_decoded, kept=_ITEMS_KEPT)

_DECODE_SLICE = 250  # roster rows decoded between two turns of the event loop

# Built once (see sql_base._ACCOUNT_ID): the roster of a login, and its contacts' items for its presence.
_ROSTER = loop_compiled(
    select(roster_versions.c.version.label("roster_version"), roster_items)
    .select_from(accounts)
    .outerjoin(roster_versions, roster_versions.c.account_id == accounts.c.id)
    .outerjoin(roster_items, roster_items.c.account_id == accounts.c.id)
    .where(accounts.c.username == bindparam("username"))
    .order_by(roster_items.c.contact)
)
_ITEMS_FOR = loop_compiled(
    select(accounts.c.username, roster_items)
    .join(accounts, accounts.c.id == roster_items.c.account_id)
    .where(
        accounts.c.username.in_(bindparam("usernames", expanding=True)),
        roster_items.c.contact_key == bindparam("contact_key"),
    )
)


class SqlRosterStore:
    """RosterStore on SQL; the version is bumped in the transaction that changes the roster."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get(self, username: str) -> Roster:
        # One statement (one snapshot): the account, its version and its items; no row means no account,
        # one row with no contact an empty roster.
        rows = await self._db.rows(_ROSTER, {"username": username_key(username)})
        if not rows:
            return Roster(version=0, items=())
        items = []
        for index, row in enumerate(rows, 1):
            if row.contact is not None:
                items.append(_item_from_row(row))
            if index % _DECODE_SLICE == 0:
                await asyncio.sleep(0)  # thousands of items: other sessions get turns meanwhile
        return Roster(version=rows[0].roster_version or 0, items=tuple(items))

    @translated
    async def get_item(self, username: str, contact: str) -> RosterItem | None:
        _, contact_key = contact_keys(contact)

        async def body(conn: Reader) -> RosterItem | None:
            account_id = await self._db.account_id(conn, username)
            if account_id is None:
                return None
            row = (
                await conn.execute(
                    select(roster_items).where(
                        roster_items.c.account_id == account_id, roster_items.c.contact_key == contact_key
                    )
                )
            ).one_or_none()
            return None if row is None else _item_from_row(row)

        return await self._db.read(body)

    @translated
    async def items_for(self, usernames: Sequence[str], contact: str) -> dict[str, RosterItem]:
        _, contact_key = contact_keys(contact)
        batches = [
            [username_key(name) for name in usernames[offset : offset + _ITEMS_FOR_BATCH]]
            for offset in range(0, len(usernames), _ITEMS_FOR_BATCH)
        ]

        found: dict[str, RosterItem] = {}
        for keys in batches:  # each user's item as of one moment (not one snapshot for all the batches)
            for row in await self._db.rows(_ITEMS_FOR, {"usernames": keys, "contact_key": contact_key}):
                found[bytes(row.username).decode()] = _item_from_row(row)
        return found

    @translated
    async def put(self, username: str, item: RosterItem, *, max_items: int | None = None) -> int:
        values = item_row(item)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                raise NoSuchAccount(username)
            replaced = await conn.execute(
                delete(roster_items).where(
                    roster_items.c.account_id == account_id,
                    roster_items.c.contact_key == values["contact_key"],
                )
            )
            if replaced.rowcount == 0 and max_items is not None:
                count = select(func.count()).where(roster_items.c.account_id == account_id)
                held = int((await conn.execute(count)).scalar_one())
                if held >= max_items:
                    raise QuotaExceeded(f"{held} roster items, at most {max_items}")
            await conn.execute(insert(roster_items).values(account_id=account_id, **values))
            return await self._bump(conn, account_id)

    @translated
    async def remove(self, username: str, contact: str) -> int | None:
        _, contact_key = contact_keys(contact)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return None
            result = await conn.execute(
                delete(roster_items).where(
                    roster_items.c.account_id == account_id, roster_items.c.contact_key == contact_key
                )
            )
            if result.rowcount == 0:
                return None
            return await self._bump(conn, account_id)

    @translated
    async def update(
        self,
        username: str,
        contact: str,
        change: Callable[[RosterItem | None], RosterItem | None],
        *,
        max_items: int | None = None,
    ) -> tuple[RosterItem | None, RosterItem | None, int | None]:
        _, contact_key = contact_keys(contact)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)  # held until commit
            if account_id is None:
                raise NoSuchAccount(username)
            where = (roster_items.c.account_id == account_id, roster_items.c.contact_key == contact_key)
            row = (await conn.execute(select(roster_items).where(*where))).one_or_none()
            before = None if row is None else _item_from_row(row)
            after = change(before)
            if after == before:
                return before, after, None
            await conn.execute(delete(roster_items).where(*where))
            if after is not None:
                if before is None and max_items is not None:
                    count = select(func.count()).where(roster_items.c.account_id == account_id)
                    held = int((await conn.execute(count)).scalar_one())
                    if held >= max_items:
                        raise QuotaExceeded(f"{held} roster items, at most {max_items}")
                await conn.execute(insert(roster_items).values(account_id=account_id, **item_row(after)))
            return before, after, await self._bump(conn, account_id)

    @translated
    async def version(self, username: str) -> int:
        async def body(conn: Reader) -> int:
            account_id = await self._db.account_id(conn, username)
            return 0 if account_id is None else await self._version(conn, account_id)

        return await self._db.read(body)

    @staticmethod
    async def _version(conn: Reader, account_id: int) -> int:
        version: int | None = (
            await conn.execute(
                select(roster_versions.c.version).where(roster_versions.c.account_id == account_id)
            )
        ).scalar_one_or_none()
        return version or 0

    @staticmethod
    async def _bump(conn: AsyncConnection, account_id: int) -> int:
        """XEP-0237 §2: every change gets a new, greater version."""
        result = await conn.execute(
            update(roster_versions)
            .where(roster_versions.c.account_id == account_id)
            .values(version=roster_versions.c.version + 1)
        )
        if result.rowcount == 0:  # an account created without its counter row
            await conn.execute(insert(roster_versions).values(account_id=account_id, version=1))
            return 1
        return await SqlRosterStore._version(conn, account_id)
