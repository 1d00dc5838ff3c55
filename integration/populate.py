"""Users and rosters written through the SQL layer (nitro's schema and row encoders), thousands in seconds.

Every user gets the same password (its SCRAM keys are derived once) and a roster of `roster` contacts:
user i and users i+1 … i+roster (wrapping around) are subscribed both ways.
"""

from __future__ import annotations

import time

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from nitro.storage import schema
from nitro.storage.models import RosterItem
from nitro.storage.sql import open_sql_storage
from nitro.storage.sql_base import username_key
from nitro.storage.sql_roster import item_row
from nitro.xmpp.sasl.credentials import derive_all

PASSWORD = "cluster bot password"
BATCH = 1000


def username(index: int) -> str:
    return f"user{index}"


def contacts(index: int, users: int, roster: int) -> list[int]:
    """Whom user `index` has in its roster (symmetric: i has j iff j has i, for roster < users / 2)."""
    roster = min(roster, (users - 1) // 2)
    return [(index + k) % users for k in range(1, roster + 1)] + [
        (index - k) % users for k in range(1, roster + 1)
    ]


async def populate(dsn: str, users: int, roster: int, domain: str = "localhost") -> float:
    """Create user0 … user<users-1> with rosters; returns the seconds it took."""
    start = time.perf_counter()
    async with open_sql_storage(dsn):
        pass  # the schema is there, migrated
    credentials = derive_all(PASSWORD, iterations=4096)
    engine = create_async_engine(dsn)
    try:
        ids: dict[int, int] = {}
        async with engine.begin() as conn:
            for first in range(0, users, BATCH):
                batch = range(first, min(first + BATCH, users))
                await conn.execute(
                    insert(schema.accounts), [{"username": username_key(username(i))} for i in batch]
                )
                rows = await conn.execute(
                    select(schema.accounts.c.id, schema.accounts.c.username).where(
                        schema.accounts.c.username.in_([username_key(username(i)) for i in batch])
                    )
                )
                by_name = {bytes(name).decode(): account_id for account_id, name in rows}
                ids.update({i: by_name[username(i)] for i in batch})
                scram = [
                    {"account_id": ids[i], "hash_name": name, "salt": c.salt, "iterations": c.iterations,
                     "stored_key": c.stored_key, "server_key": c.server_key}
                    for i in batch for name, c in credentials.items()
                ]  # fmt: skip
                await conn.execute(insert(schema.scram_credentials), scram)
                await conn.execute(
                    insert(schema.roster_versions), [{"account_id": ids[i], "version": 1} for i in batch]
                )
            for first in range(0, users, BATCH):
                items = [
                    {
                        "account_id": ids[i],
                        **item_row(RosterItem(f"{username(j)}@{domain}", subscription="both")),
                    }
                    for i in range(first, min(first + BATCH, users))
                    for j in contacts(i, users, roster)
                ]
                if items:
                    await conn.execute(insert(schema.roster_items), items)
    finally:
        await engine.dispose()
    return time.perf_counter() - start
