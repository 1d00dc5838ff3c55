"""`open_storage(config)`: the SQL repositories behind the tiers of `nitro.storage.tiers`.

Cached: account credentials, rosters, vCards, block lists, private XML and archive preferences, and on the
embedded SQLite default which users have no offline messages (cached_offline.py). Every write goes to SQL
first and invalidates afterwards (also when SQL failed: a commit whose outcome is unknown may have happened).
Offline messages themselves, the archive, PEP and last activity pass straight through to SQL (last activity
in batches on a SQLite file: last_batch.py). Each wrapper spells out every method of its protocol, so mypy
flags a method added later and not wrapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from nitro.config import Config
from nitro.storage import codecs
from nitro.storage.cached_offline import CachedOfflineStore
from nitro.storage.fair import fair_storage
from nitro.storage.last_batch import ManyLastActivities, batched_last_activity
from nitro.storage.models import (
    ArchivePage,
    ArchivePrefs,
    ArchiveQuery,
    ArchiveRow,
    Roster,
    RosterItem,
)
from nitro.storage.protocols import (
    AccountStore,
    ArchiveStore,
    BlockListStore,
    PrivateStore,
    RosterStore,
    Storage,
    VCardStore,
)
from nitro.storage.singleflight import SingleFlight
from nitro.storage.sql import open_database, sql_repositories
from nitro.storage.tiers import Tiers
from nitro.xmpp.sasl.credentials import HashName, ScramCredential


@dataclass(frozen=True, slots=True)
class LayeredStorage(Storage):
    """The repositories, and the tiers behind them (for statistics and the session directory)."""

    tiers: Tiers


class CachedAccountStore:
    """Credentials through the tiers; concurrent reads of one account's credentials share a single read."""

    def __init__(self, sql: AccountStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers
        self._flights: SingleFlight[dict[HashName, ScramCredential] | None] = SingleFlight()

    async def create(self, username: str, credentials: Mapping[HashName, ScramCredential]) -> None:
        with self._flights.writing(username):
            try:
                await self._sql.create(username, credentials)
            finally:  # "no such account" was cacheable, and so were the empty roster and lists of none
                await self._tiers.invalidate(codecs.CACHED_KINDS, username)

    async def get_credentials(self, username: str) -> dict[HashName, ScramCredential] | None:
        await self._tiers.fresh()  # a commit by another process starts a new generation
        found = await self._flights.read(
            username,
            lambda: self._tiers.read(
                codecs.ACCOUNT, username, lambda: self._sql.get_credentials(username), checked=True
            ),
            self._tiers.generation(),
        )
        return None if found is None else dict(found)  # a copy: the cached dict is shared

    async def set_credentials(self, username: str, credentials: Mapping[HashName, ScramCredential]) -> bool:
        with self._flights.writing(username):
            try:
                return await self._sql.set_credentials(username, credentials)
            finally:
                await self._tiers.invalidate([codecs.ACCOUNT], username)

    async def delete(self, username: str) -> bool:
        with self._flights.writing(username):
            try:
                return await self._sql.delete(username)
            finally:
                await self._tiers.invalidate(codecs.CACHED_KINDS, username)

    async def exists(self, username: str) -> bool:
        return await self.get_credentials(username) is not None

    async def list_usernames(self, *, limit: int | None = None, after: str | None = None) -> list[str]:
        return await self._sql.list_usernames(limit=limit, after=after)

    async def count(self) -> int:
        return await self._sql.count()


class CachedRosterStore:
    """Rosters through the tiers; concurrent reads of one roster share a single read (all of a user's
    sessions coming online at once read it once), and a write makes later reads start afresh."""

    def __init__(self, sql: RosterStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers
        self._flights: SingleFlight[Roster] = SingleFlight()

    async def get(self, username: str) -> Roster:
        await self._tiers.fresh()
        return await self._flights.read(
            username,
            lambda: self._tiers.read(codecs.ROSTER, username, lambda: self._sql.get(username), checked=True),
            self._tiers.generation(),
        )

    async def get_item(self, username: str, contact: str) -> RosterItem | None:
        return _item_of(await self.get(username), contact)

    async def items_for(self, usernames: Sequence[str], contact: str) -> dict[str, RosterItem]:
        found: dict[str, RosterItem] = {}
        if self._tiers.ring is not None:
            for username in usernames:  # cached rosters, each checked against its generation
                item = await self.get_item(username, contact)
                if item is not None:
                    found[username] = item
            return found
        # The rosters cached here (an online contact's, read at its login) answer at once; one query reads
        # the contact's item in the others (all of them on a backend this process cannot cache).
        cached = await self._tiers.cached(codecs.ROSTER, usernames)
        for username, roster in cached.items():
            item = _item_of(roster, contact)
            if item is not None:
                found[username] = item
        missing = [username for username in usernames if username not in cached]
        if missing:
            found.update(await self._sql.items_for(missing, contact))
        return found

    async def put(self, username: str, item: RosterItem, *, max_items: int | None = None) -> int:
        with self._flights.writing(username):  # reads begun before this write are not shared after it
            try:
                return await self._sql.put(username, item, max_items=max_items)
            finally:
                await self._tiers.invalidate([codecs.ROSTER], username)

    async def remove(self, username: str, contact: str) -> int | None:
        with self._flights.writing(username):
            try:
                return await self._sql.remove(username, contact)
            finally:
                await self._tiers.invalidate([codecs.ROSTER], username)

    async def update(
        self,
        username: str,
        contact: str,
        change: Callable[[RosterItem | None], RosterItem | None],
        *,
        max_items: int | None = None,
    ) -> tuple[RosterItem | None, RosterItem | None, int | None]:
        with self._flights.writing(username):  # read and written in SQL, under its row lock
            try:
                return await self._sql.update(username, contact, change, max_items=max_items)
            finally:
                await self._tiers.invalidate([codecs.ROSTER], username)

    async def version(self, username: str) -> int:
        return (await self.get(username)).version


def _item_of(roster: Roster, contact: str) -> RosterItem | None:
    for item in roster.items:  # a loop, not next(generator): once per contact's roster at every login
        if item.jid == contact:
            return item
    return None


class CachedArchiveStore:
    """Preferences are cached; messages pass through."""

    def __init__(self, sql: ArchiveStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers

    async def append(
        self, username: str, *, with_jid: str, stanza: bytes, stanza_id: str, timestamp: datetime
    ) -> None:
        await self._sql.append(
            username, with_jid=with_jid, stanza=stanza, stanza_id=stanza_id, timestamp=timestamp
        )

    async def append_batch(self, rows: Sequence[ArchiveRow]) -> int:
        return await self._sql.append_batch(rows)

    async def query(self, username: str, query: ArchiveQuery) -> ArchivePage:
        return await self._sql.query(username, query)

    async def get_prefs(self, username: str) -> ArchivePrefs | None:
        return await self._tiers.read(codecs.ARCHIVE_PREFS, username, lambda: self._sql.get_prefs(username))

    async def set_prefs(self, username: str, prefs: ArchivePrefs) -> None:
        try:
            await self._sql.set_prefs(username, prefs)
        finally:
            await self._tiers.invalidate([codecs.ARCHIVE_PREFS], username)

    async def expire(self, before: datetime) -> int:
        return await self._sql.expire(before)

    async def count(self, username: str) -> int:
        return await self._sql.count(username)


class CachedBlockListStore:
    """Block lists through the tiers; concurrent reads of one list (a login asks twice) share one read."""

    def __init__(self, sql: BlockListStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers
        self._flights: SingleFlight[list[str]] = SingleFlight()

    async def list(self, username: str) -> list[str]:
        await self._tiers.fresh()
        blocked = await self._flights.read(
            username,
            lambda: self._tiers.read(
                codecs.BLOCKLIST, username, lambda: self._sql.list(username), checked=True
            ),
            self._tiers.generation(),
        )
        return list(blocked)  # a copy: the cached list is shared

    async def add(self, username: str, jids: Sequence[str]) -> None:
        with self._flights.writing(username):
            try:
                await self._sql.add(username, jids)
            finally:
                await self._tiers.invalidate([codecs.BLOCKLIST], username)

    async def remove(self, username: str, jids: Sequence[str]) -> None:
        with self._flights.writing(username):
            try:
                await self._sql.remove(username, jids)
            finally:
                await self._tiers.invalidate([codecs.BLOCKLIST], username)

    async def clear(self, username: str) -> None:
        with self._flights.writing(username):
            try:
                await self._sql.clear(username)
            finally:
                await self._tiers.invalidate([codecs.BLOCKLIST], username)


class CachedVCardStore:
    def __init__(self, sql: VCardStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers

    async def get(self, username: str) -> bytes | None:
        return await self._tiers.read(codecs.VCARD, username, lambda: self._sql.get(username))

    async def set(self, username: str, vcard: bytes | None) -> None:
        try:
            await self._sql.set(username, vcard)
        finally:
            await self._tiers.invalidate([codecs.VCARD], username)


class CachedPrivateStore:
    def __init__(self, sql: PrivateStore, tiers: Tiers) -> None:
        self._sql = sql
        self._tiers = tiers

    async def get(self, username: str, key: str) -> bytes | None:
        return await self._tiers.read(
            codecs.PRIVATE, username, lambda: self._sql.get(username, key), item=key
        )

    async def set(self, username: str, key: str, payload: bytes, *, max_keys: int | None = None) -> None:
        try:
            await self._sql.set(username, key, payload, max_keys=max_keys)
        finally:
            await self._tiers.invalidate([codecs.PRIVATE], username)


def layer(sql: Storage, tiers: Tiers) -> LayeredStorage:
    """The SQL repositories wrapped by the tiers."""
    return LayeredStorage(
        accounts=CachedAccountStore(sql.accounts, tiers),
        rosters=CachedRosterStore(sql.rosters, tiers),
        offline=CachedOfflineStore(sql.offline, tiers),
        archive=CachedArchiveStore(sql.archive, tiers),
        pep=sql.pep,
        blocklist=CachedBlockListStore(sql.blocklist, tiers),
        vcards=CachedVCardStore(sql.vcards, tiers),
        private=CachedPrivateStore(sql.private, tiers),
        last=sql.last,  # written at logout (in batches on a SQLite file: open_storage), read by a rare query
        tiers=tiers,
    )


@asynccontextmanager
async def open_storage(
    config: Config, *, wrap_sql: Callable[[Storage], Storage] | None = None
) -> AsyncIterator[LayeredStorage]:
    """SQL at `[storage].dsn` behind the cache and the ring of `[redis]`; all closed on exit.

    A ring instance that is down at start is only out of the ring (health checks bring it in later).
    `wrap_sql` wraps the SQL repositories under the tiers (the metrics' timing proxy).
    """
    async with open_database(config.storage.dsn, pool=config.storage) as db:
        sql = sql_repositories(db)
        # all our writes use the writing connection: its data_version moves only for other processes
        tiers = Tiers.from_config(config, None if db.write_engine is None else db.writer_data_version)
        await tiers.start()
        try:
            shared = fair_storage(sql)  # no account takes the whole SQL pool (nitro/storage/fair.py)
            storage = layer(shared if wrap_sql is None else wrap_sql(shared), tiers)
            if db.write_engine is None:
                yield storage
            else:  # a SQLite file: logouts' writes share transactions on its writing connection
                async with batched_last_activity(cast(ManyLastActivities, storage.last)) as last:
                    yield dataclasses.replace(storage, last=last)
        finally:
            await tiers.close()
