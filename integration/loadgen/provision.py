"""Creating the benchmark accounts and rosters in Nitro's storage (see `accounts` for what they are)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select

from integration.loadgen.accounts import ITERATIONS, PASSWORD, SALT, contacts
from nitro.storage import RosterItem, Storage
from nitro.storage.schema import accounts, roster_items, roster_versions, scram_credentials
from nitro.storage.sql import create_engine, open_sql_storage, upgrade_schema
from nitro.storage.sql_base import WRITE
from nitro.storage.sql_roster import item_row
from nitro.xmpp.sasl.credentials import HashName, ScramCredential, derive_credential

BATCH = 5000


def credentials(password: str, iterations: int) -> dict[HashName, ScramCredential]:
    return {
        name: derive_credential(password, name, salt=SALT, iterations=iterations)
        for name in ("SHA-1", "SHA-256")
    }


async def provision_storage(
    storage: Storage,
    domain: str,
    names: Sequence[str],
    *,
    roster_size: int,
    password: str = PASSWORD,
    iterations: int = ITERATIONS,
) -> None:
    """Create the accounts and rosters one by one through the storage API (slow: small runs and tests)."""
    secrets = credentials(password, iterations)
    for name in names:
        await storage.accounts.create(name, secrets)
    for index, name in enumerate(names):
        for contact in contacts(index, len(names), roster_size):
            await storage.rosters.put(name, RosterItem(jid=f"{names[contact]}@{domain}", subscription="both"))


async def provision_bulk(
    dsn: str,
    domain: str,
    names: Sequence[str],
    *,
    roster_size: int,
    password: str = PASSWORD,
    iterations: int = ITERATIONS,
) -> None:
    """The same rows as `provision_storage`, inserted in one transaction (thousands of users in seconds).

    The storage API commits each roster item on its own (about a hundred a second on SQLite), so
    this writes Nitro's tables directly, with the repository's own row builder, and then reads one
    account back through the API to check the result.
    """
    secrets = credentials(password, iterations)
    engine = create_engine(dsn)
    try:
        await upgrade_schema(engine)
        async with engine.execution_options(**{WRITE: True}).begin() as conn:
            for offset in range(0, len(names), BATCH):
                await conn.execute(
                    insert(accounts), [{"username": n.encode()} for n in names[offset : offset + BATCH]]
                )
            ids: dict[bytes, int] = {}
            for row in await conn.execute(select(accounts.c.id, accounts.c.username)):
                ids[bytes(row.username)] = row.id
            account_ids = [ids[name.encode()] for name in names]
            rows = [
                {
                    "account_id": account_id,
                    "hash_name": c.hash_name,
                    "salt": c.salt,
                    "iterations": c.iterations,
                    "stored_key": c.stored_key,
                    "server_key": c.server_key,
                }
                for account_id in account_ids
                for c in secrets.values()
            ]
            for offset in range(0, len(rows), BATCH):
                await conn.execute(insert(scram_credentials), rows[offset : offset + BATCH])
            rosters = {index: contacts(index, len(names), roster_size) for index in range(len(names))}
            versions = [{"account_id": account_ids[i], "version": len(rosters[i])} for i in range(len(names))]
            for offset in range(0, len(versions), BATCH):
                await conn.execute(insert(roster_versions), versions[offset : offset + BATCH])
            items = [
                {
                    "account_id": account_ids[index],
                    **item_row(RosterItem(jid=f"{names[contact]}@{domain}", subscription="both")),
                }
                for index, roster in rosters.items()
                for contact in roster
            ]
            for offset in range(0, len(items), BATCH):
                await conn.execute(insert(roster_items), items[offset : offset + BATCH])
    finally:
        await engine.dispose()
    if names:
        await check(dsn, domain, names, roster_size=roster_size)


async def check(dsn: str, domain: str, names: Sequence[str], *, roster_size: int) -> None:
    """Read the first account back through the storage API; raise if it is not what we provisioned."""
    async with open_sql_storage(dsn) as storage:
        stored = await storage.accounts.get_credentials(names[0])
        if not stored or set(stored) != {"SHA-1", "SHA-256"}:
            raise RuntimeError(f"provisioning check: {names[0]} has no SCRAM credentials")
        roster = await storage.rosters.get(names[0])
        expected = {f"{names[c]}@{domain}" for c in contacts(0, len(names), roster_size)}
        if {item.jid for item in roster.items} != expected or any(
            i.subscription != "both" for i in roster.items
        ):
            raise RuntimeError(f"provisioning check: {names[0]}'s roster is not the one written")
