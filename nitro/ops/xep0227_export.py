"""`nitro export FILE`: every account of the database with its data, as one XEP-0227 document.

Read in one transaction straight from the SQL tables (a consistent snapshot even while the server
writes, as `db copy` does) and written user by user, so memory stays flat. Per account: SCRAM keys,
roster (with pre-approvals; pending requests as `<presence type='subscribe'/>`, as Prosody writes them),
vCard, private XML, offline messages, PEP nodes (configuration, whitelist as member affiliations) and
items oldest first, the message archive (Prosody's `urn:xmpp:pie:0#mam` form) and the block list.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from lxml import etree
from sqlalchemy import Connection, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from nitro.config import Config
from nitro.ops.xep0227 import BLOCKING, FORWARD, MAM, MAM_ARCHIVE, PIE, PRIVATE, parser, scram_element
from nitro.storage import schema
from nitro.storage.errors import StorageError
from nitro.storage.sql import alembic_config, create_engine
from nitro.storage.sql_base import strings_from_json, translate_errors
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Field, Form, form_type_field
from nitro.xmpp.pubsub import NODE_CONFIG, OWNER, PUBSUB
from nitro.xmpp.sasl.credentials import ScramCredential
from nitro.xmpp.stanza import child, element

_USER = f"{{{PIE}}}user"


@dataclass
class Counts:
    """What an export or an import moved, for the closing line and the tests."""

    accounts: int = 0
    roster_items: int = 0
    vcards: int = 0
    private: int = 0
    offline: int = 0
    pep_nodes: int = 0
    pep_items: int = 0
    archived: int = 0
    blocked: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.accounts} accounts, {self.roster_items} roster items, {self.vcards} vCards, "
            f"{self.private} private XML elements, {self.offline} offline messages, "
            f"{self.pep_nodes} PEP nodes with {self.pep_items} items, {self.archived} archived messages, "
            f"{self.blocked} blocked JIDs"
        )


async def export_command(config: Config, target: Path, *, per_user: bool = False) -> int:
    shown = make_url(config.storage.dsn).render_as_string(hide_password=True)
    try:
        if per_user:
            counts = await export_database(config, None, per_user=target)
        else:
            with _output(target) as out:
                counts = await export_database(config, out)
    except (StorageError, OSError) as exc:
        print(f"nitro: export failed: {exc}", file=sys.stderr)
        return 1
    print(f"exported {counts.summary()} from {shown} to {target}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(target: Path) -> Iterator[IO[bytes]]:
    """The file to write: under a temporary name until it is complete, removed if the export fails."""
    if str(target) == "-":
        yield sys.stdout.buffer
        return
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as out:
            yield out
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)


@contextlib.contextmanager
def _document(out: IO[bytes], domain: str) -> Iterator[Any]:
    """An incremental XEP-0227 document, open inside `<server-data><host jid=domain>`."""
    with etree.xmlfile(out, encoding="utf-8") as document:
        document.write_declaration()
        server_data = document.element(f"{{{PIE}}}server-data", nsmap=ns.default_ns(PIE))
        with server_data, document.element(f"{{{PIE}}}host", jid=domain):
            yield document


async def export_database(config: Config, out: IO[bytes] | None, *, per_user: Path | None = None) -> Counts:
    """Write the XEP-0227 document of `config`'s database to `out`, or one document per account into the
    directory `per_user`, named `<user>@<domain>.xml` as Prosody's xep0227 storage expects."""
    url = make_url(config.storage.dsn)
    if url.get_backend_name() == "sqlite" and url.database and not _exists(url.database):
        raise StorageError(f"no database at {url.database}")  # connecting would create an empty one
    domain = config.server.domain
    engine = create_engine(config.storage.dsn, create_dirs=False, pool=config.storage)
    counts = Counts()
    try:
        with translate_errors():
            async with engine.connect() as conn:  # one read transaction: a consistent snapshot
                await _check_schema(conn)
                accounts = (
                    await conn.execute(select(schema.accounts).order_by(schema.accounts.c.username))
                ).all()
                if per_user is None:
                    assert out is not None
                    with _document(out, domain) as document:
                        for account in accounts:
                            await _account(conn, document, account, counts)
                else:
                    _mkdir(per_user)
                    for account in accounts:
                        name = f"{account.username.decode()}@{domain}.xml"
                        with _output(per_user / name) as file, _document(file, domain) as document:
                            await _account(conn, document, account, counts)
    finally:
        await engine.dispose()
    return counts


async def _account(conn: AsyncConnection, document: Any, account: Any, counts: Counts) -> None:
    with document.element(_USER, name=account.username.decode()):
        await _user(conn, document, account.id, counts)
    counts.accounts += 1


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def _check_schema(conn: AsyncConnection) -> None:
    def revisions(sync: Connection) -> set[str]:
        return set(MigrationContext.configure(sync).get_current_heads())

    found = await conn.run_sync(revisions)
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    if found != heads:
        raise StorageError(
            f"the database is at schema revision {sorted(found) or 'none'}, this Nitro at {sorted(heads)}: "
            "run `nitro db upgrade` first (or check [storage].dsn)"
        )


async def _rows(conn: AsyncConnection, table: Any, account_id: int, *order: Any) -> list[Any]:
    query = select(table).where(table.c.account_id == account_id)
    return list((await conn.execute(query.order_by(*order))).all())


async def _user(conn: AsyncConnection, document: Any, account_id: int, counts: Counts) -> None:
    """The children of one `<user/>`, written one by one (an archive may be large)."""
    parts = element(PIE, "user")  # the small parts are gathered here first (PIE in scope, as in the file)
    for row in await _rows(conn, schema.scram_credentials, account_id, schema.scram_credentials.c.hash_name):
        credential = ScramCredential(row.hash_name, row.salt, row.iterations, row.stored_key, row.server_key)
        parts.append(scram_element(credential))
    _roster(parts, await _rows(conn, schema.roster_items, account_id, schema.roster_items.c.contact), counts)
    for row in await _rows(conn, schema.vcards, account_id):
        parts.append(_xml(row.vcard))
        counts.vcards += 1
    private = await _rows(conn, schema.private_xml, account_id, schema.private_xml.c.key)
    if private:
        query = child(parts, PRIVATE, "query")
        for row in private:
            query.append(_xml(row.payload))
            counts.private += 1
    offline = await _rows(conn, schema.offline_messages, account_id, schema.offline_messages.c.id)
    if offline:
        messages = etree.SubElement(parts, f"{{{PIE}}}offline-messages")
        for row in offline:
            messages.append(_xml(row.stanza))
            counts.offline += 1
    await _pep(conn, parts, account_id, counts)
    blocked = await _rows(conn, schema.blocked_jids, account_id, schema.blocked_jids.c.jid)
    if blocked:
        blocklist = child(parts, BLOCKING, "blocklist")
        for row in blocked:
            etree.SubElement(blocklist, f"{{{BLOCKING}}}item", jid=row.jid.decode())
            counts.blocked += 1
    for part in parts:
        document.write(part)
    await _archive(conn, document, account_id, counts)


def _xml(data: bytes) -> etree._Element:
    return etree.fromstring(data, parser())


def _roster(user: etree._Element, rows: list[Any], counts: Counts) -> None:
    """RFC 6121 roster items; a pending request (§3.1.3) as Prosody writes it, a stranger's too."""
    query: etree._Element | None = None
    for row in rows:
        contact = row.contact.decode()
        if row.in_roster:
            if query is None:
                query = child(user, ns.ROSTER, "query")
            item = etree.SubElement(query, f"{{{ns.ROSTER}}}item", jid=contact, subscription=row.subscription)
            if row.name is not None:
                item.set("name", row.name)
            if row.ask:
                item.set("ask", "subscribe")
            if row.approved:
                item.set("approved", "true")  # RFC 6121 §3.4 pre-approval
            for group in json.loads(row.groups):
                etree.SubElement(item, f"{{{ns.ROSTER}}}group").text = group
            counts.roster_items += 1
        if row.pending_in:
            presence = child(user, ns.CLIENT, "presence", type="subscribe")
            presence.set("from", contact)


async def _pep(conn: AsyncConnection, user: etree._Element, account_id: int, counts: Counts) -> None:
    nodes = await _rows(conn, schema.pep_nodes, account_id, schema.pep_nodes.c.name)
    if not nodes:
        return
    owner = child(user, OWNER, "pubsub")
    published = child(user, PUBSUB, "pubsub")
    for node in nodes:
        name = node.name.decode()
        configure = etree.SubElement(owner, f"{{{OWNER}}}configure", node=name)
        form = Form(
            "submit",
            (
                form_type_field(NODE_CONFIG),
                Field("pubsub#access_model", values=(node.access_model,)),
                Field("pubsub#max_items", values=(str(node.max_items),)),
                Field("pubsub#persist_items", values=("1" if node.persist_items else "0",)),
            ),
        )
        configure.append(form.to_element())
        whitelist = strings_from_json(node.whitelist)
        if whitelist:
            affiliations = etree.SubElement(owner, f"{{{OWNER}}}affiliations", node=name)
            for jid in whitelist:
                etree.SubElement(affiliations, f"{{{OWNER}}}affiliation", jid=jid, affiliation="member")
        items = (
            await conn.execute(
                select(schema.pep_items)
                .where(schema.pep_items.c.node_id == node.id)
                .order_by(schema.pep_items.c.id)
            )
        ).all()
        container = etree.SubElement(published, f"{{{PUBSUB}}}items", node=name)
        for row in items:  # oldest first: importing them in this order keeps the newest newest
            item = etree.SubElement(container, f"{{{PUBSUB}}}item", id=row.item_id.decode())
            item.append(_xml(row.payload))
            counts.pep_items += 1
        counts.pep_nodes += 1


async def _archive(conn: AsyncConnection, document: Any, account_id: int, counts: Counts) -> None:
    """Prosody's form: `<result xmlns='urn:xmpp:mam:2' id=…><forwarded><delay stamp/><message/>…`,
    streamed from the database one message at a time."""
    query = (
        select(schema.archive_messages)
        .where(schema.archive_messages.c.account_id == account_id)
        .order_by(schema.archive_messages.c.id)
        .execution_options(yield_per=500)
    )
    archive: contextlib.ExitStack | None = None
    result = await conn.stream(query)
    with contextlib.ExitStack() as stack:
        async for row in result:
            if archive is None:
                archive = stack
                stack.enter_context(
                    document.element(f"{{{MAM_ARCHIVE}}}archive", nsmap=ns.default_ns(MAM_ARCHIVE))
                )
            entry = element(MAM, "result", id=row.stanza_id)
            forwarded = child(entry, FORWARD, "forwarded")
            stamp = row.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            child(forwarded, ns.DELAY, "delay", stamp=stamp)
            forwarded.append(_xml(row.stanza))
            document.write(entry)
            counts.archived += 1
