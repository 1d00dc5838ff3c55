"""`nitro import FILE…`: accounts and their data from XEP-0227 files (Nitro's, Prosody's, ejabberd's).

Each `<user/>` is read and written on its own (memory stays flat) through the storage repositories, so
the Redis ring's caches see every write. Hosts other than `[server].domain` are skipped and named. An
account that exists already is skipped unless `--replace` (delete, then import). A user that cannot be
imported is named on standard error and the rest goes on; the exit code is then 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import sys
from collections.abc import Iterator
from pathlib import Path

from lxml import etree
from sqlalchemy.engine import make_url

from nitro.accounts import InvalidUsername, prepare_username
from nitro.config import Config
from nitro.ops.xep0227 import (
    BLOCKING,
    FORWARD,
    MAM,
    MAM_ARCHIVE,
    PIE_NAMESPACES,
    PRIVATE,
    VCARD,
    XINCLUDE,
    BadCredentials,
    pie_children,
    plain_password,
    read_credentials,
)
from nitro.ops.xep0227_export import Counts
from nitro.storage import PepItem, PepNode, RosterItem, Storage
from nitro.storage.errors import StorageError
from nitro.storage.layered import open_storage
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Form, InvalidForm
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.pubsub import OWNER, PUBSUB, serialize_payload
from nitro.xmpp.pubsub_config import ACCESS_MODELS
from nitro.xmpp.sasl.credentials import derive_all

_SUBSCRIPTIONS = ("none", "to", "from", "both")
_NO_QUOTA = 2**31 - 1  # an import keeps every offline message it is given


class BadExport(ValueError):
    """The file is not one this importer reads; nothing more is read from it."""


class Skipped(Exception):
    """This user is not imported; the message says why."""


async def import_command(config: Config, files: list[Path], *, replace: bool = False) -> int:
    shown = make_url(config.storage.dsn).render_as_string(hide_password=True)
    counts = Counts()
    try:
        async with open_storage(config) as storage:
            importer = Importer(config, storage, counts, replace=replace)
            for file in files:
                await importer.file(file)
    except (StorageError, OSError, etree.XMLSyntaxError, BadExport) as exc:
        print(f"nitro: import stopped: {exc}", file=sys.stderr)
        return 1
    for problem in counts.problems:
        print(f"nitro: {problem}", file=sys.stderr)
    print(f"imported {counts.summary()} into {shown}", file=sys.stderr)
    return 1 if counts.problems else 0


class Importer:
    """Reads XEP-0227 files user by user into `storage`."""

    def __init__(self, config: Config, storage: Storage, counts: Counts, *, replace: bool) -> None:
        self.config = config
        self.storage = storage
        self.counts = counts
        self.replace = replace
        self.domain = config.server.domain

    async def file(self, path: Path, depth: int = 0) -> None:
        host: str | None = None
        for event, node in _elements(path):
            name = etree.QName(node)
            if event == "start" and name.localname == "host" and name.namespace in PIE_NAMESPACES:
                host = _domain(node.get("jid"))
                if host != self.domain:
                    self.counts.problems.append(
                        f"{path}: host {node.get('jid')!r} skipped: this is {self.domain}"
                    )
            elif event == "end" and name.localname == "user" and name.namespace in PIE_NAMESPACES:
                if host == self.domain:
                    await self.user(node)
                _release(node)
            elif event == "end" and node.tag == f"{{{XINCLUDE}}}include" and depth < 2:
                await self.file(_included(path, node.get("href")), depth + 1)  # ejabberd: a file per host

    async def user(self, node: etree._Element) -> None:
        name = node.get("name") or ""
        try:
            username = prepare_username(name, self.domain)
            credentials = read_credentials(node)
            password = plain_password(node)
            if not credentials and password:
                credentials = await asyncio.to_thread(
                    derive_all, password, iterations=self.config.auth.scram_iterations
                )
            if not credentials:
                raise Skipped("no SCRAM-SHA-1 or SCRAM-SHA-256 credentials and no password")
            if await self.storage.accounts.exists(username):
                if not self.replace:
                    raise Skipped("the account exists here (--replace deletes and imports it)")
                await self.storage.accounts.delete(username)
            await self.storage.accounts.create(username, credentials)
        except (InvalidUsername, BadCredentials, Skipped) as exc:
            self.counts.problems.append(f"user {name!r} not imported: {exc}")
            return
        self.counts.accounts += 1
        for part in (
            self.roster,
            self.vcard,
            self.private,
            self.offline,
            self.pep,
            self.archive,
            self.blocked,
        ):
            try:
                await part(username, node)
            except (StorageError, ValueError, InvalidJID, etree.XMLSyntaxError) as exc:
                self.counts.problems.append(f"user {username!r}: {part.__name__} partly imported: {exc}")

    async def roster(self, username: str, user: etree._Element) -> None:
        """RFC 6121 items; `<presence type='subscribe'/>` children are requests awaiting an answer."""
        own = JID.make(username, self.domain)
        items: dict[str, RosterItem] = {}
        for query in user.iterchildren(f"{{{ns.ROSTER}}}query"):
            for item in query.iterchildren(f"{{{ns.ROSTER}}}item"):
                contact = str(JID.parse(item.get("jid") or "").bare)
                subscription = item.get("subscription") or "none"
                if contact == str(own) or subscription not in _SUBSCRIPTIONS:
                    continue  # self-contacts and subscription='remove' are not roster items
                items[contact] = RosterItem(
                    contact,
                    name=item.get("name"),
                    subscription=subscription,  # type: ignore[arg-type]  # checked above
                    ask=item.get("ask") == "subscribe",
                    approved=item.get("approved") in ("true", "1"),
                    groups=tuple(
                        dict.fromkeys(g.text or "" for g in item.iterchildren(f"{{{ns.ROSTER}}}group"))
                    ),
                )
        for presence in pie_children(user, "presence"):
            if presence.get("type") != "subscribe" or not presence.get("from"):
                continue
            contact = str(JID.parse(presence.get("from") or "").bare)
            known = items.get(contact)
            if known is not None:
                items[contact] = dataclasses.replace(known, pending_in=True)
            else:  # a stranger's request: kept, not shown in the roster (RFC 6121 §3.1.3)
                items[contact] = RosterItem(contact, pending_in=True, in_roster=False)
        for entry in items.values():
            await self.storage.rosters.put(username, entry)
            self.counts.roster_items += entry.in_roster

    async def vcard(self, username: str, user: etree._Element) -> None:
        for vcard in user.iterchildren(f"{{{VCARD}}}vCard"):
            await self.storage.vcards.set(username, _bytes(vcard))
            self.counts.vcards += 1

    async def private(self, username: str, user: etree._Element) -> None:
        for query in user.iterchildren(f"{{{PRIVATE}}}query"):
            for payload in _elements_of(query):
                await self.storage.private.set(username, payload.tag, _bytes(payload))
                self.counts.private += 1

    async def offline(self, username: str, user: etree._Element) -> None:
        for messages in pie_children(user, "offline-messages"):
            for message in _elements_of(messages):
                if etree.QName(message).localname != "message":
                    continue
                stanza = _as_client(message)
                if stanza.find(f"{{{ns.DELAY}}}delay") is None:  # XEP-0160: stored messages carry a stamp
                    delay = etree.SubElement(stanza, f"{{{ns.DELAY}}}delay", nsmap=ns.default_ns(ns.DELAY))
                    delay.set("from", self.domain)
                    delay.set("stamp", _stamp(datetime.datetime.now(datetime.UTC)))
                await self.storage.offline.push(username, _bytes(stanza), quota=_NO_QUOTA)
                self.counts.offline += 1

    async def pep(self, username: str, user: etree._Element) -> None:
        """XEP-0060 node configuration (owner namespace), then items in file order (oldest first)."""
        nodes: dict[str, PepNode] = {}
        cap = self.config.pep.max_items_per_node
        for owner in user.iterchildren(f"{{{OWNER}}}pubsub"):
            for configure in owner.iterchildren(f"{{{OWNER}}}configure"):
                name = configure.get("node") or ""
                nodes[name] = _node(name, configure, nodes.get(name, PepNode(name)), cap)
            for affiliations in owner.iterchildren(f"{{{OWNER}}}affiliations"):
                name = affiliations.get("node") or ""
                members = tuple(
                    str(JID.parse(a.get("jid") or "").bare)
                    for a in affiliations.iterchildren(f"{{{OWNER}}}affiliation")
                    if a.get("affiliation") in ("member", "publisher")
                )
                nodes[name] = dataclasses.replace(nodes.get(name, PepNode(name)), whitelist=members)
        for node in nodes.values():
            if node.name:
                await self.storage.pep.put_node(username, node)
                self.counts.pep_nodes += 1
        now = datetime.datetime.now(datetime.UTC)
        for published in user.iterchildren(f"{{{PUBSUB}}}pubsub"):
            for items in published.iterchildren(f"{{{PUBSUB}}}items"):
                name = items.get("node") or ""
                if not name:
                    continue
                if name not in nodes:  # items without a configuration: auto-created (XEP-0163 §3)
                    nodes[name] = PepNode(name)
                    self.counts.pep_nodes += 1
                for item in items.iterchildren(f"{{{PUBSUB}}}item"):
                    payloads = _elements_of(item)
                    if len(payloads) != 1:
                        continue
                    entry = PepItem(item.get("id") or "current", serialize_payload(payloads[0]), now)
                    await self.storage.pep.publish(username, name, entry, max_items=nodes[name].max_items)
                    self.counts.pep_items += 1

    async def archive(self, username: str, user: etree._Element) -> None:
        """Prosody's `<archive xmlns='urn:xmpp:pie:0#mam'>` of MAM results (XEP-0313 §4.2 form)."""
        own = str(JID.make(username, self.domain))
        for archive in user.iterchildren(f"{{{MAM_ARCHIVE}}}archive"):
            for result in archive.iterchildren(f"{{{MAM}}}result"):
                forwarded = result.find(f"{{{FORWARD}}}forwarded")
                message = None if forwarded is None else forwarded.find(f"{{{ns.CLIENT}}}message")
                stamp = None if forwarded is None else forwarded.find(f"{{{ns.DELAY}}}delay")
                if message is None or stamp is None or not result.get("id"):
                    continue
                sender = str(JID.parse(message.get("from") or self.domain).bare)
                peer = str(JID.parse(message.get("to") or self.domain).bare) if sender == own else sender
                await self.storage.archive.append(
                    username,
                    with_jid=peer,
                    stanza=_bytes(_as_client(message)),
                    stanza_id=result.get("id") or "",
                    timestamp=_parse_stamp(stamp.get("stamp") or ""),
                )
                self.counts.archived += 1

    async def blocked(self, username: str, user: etree._Element) -> None:
        for blocklist in user.iterchildren(f"{{{BLOCKING}}}blocklist"):
            jids = [
                str(JID.parse(item.get("jid") or ""))
                for item in blocklist.iterchildren(f"{{{BLOCKING}}}item")
            ]
            await self.storage.blocklist.add(username, jids)
            self.counts.blocked += len(jids)


def _elements(path: Path) -> Iterator[tuple[str, etree._Element]]:
    """Start and end events of a file, refusing a DTD (an export never needs entities)."""
    events = etree.iterparse(
        str(path),
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=True,
    )
    for event, node in events:
        if event == "start" and node.getparent() is None and node.getroottree().docinfo.internalDTD:
            raise BadExport(f"{path}: a DOCTYPE is not allowed in an export")
        yield event, node


def _release(node: etree._Element) -> None:
    """Forget a processed user, and what came before it, so memory stays flat."""
    node.clear()
    parent = node.getparent()
    while parent is not None and node.getprevious() is not None:
        del parent[0]


def _included(path: Path, href: str | None) -> Path:
    if not href or Path(href).is_absolute() or ".." in Path(href).parts:
        raise OSError(f"{path}: xi:include href {href!r} is not a file next to it")
    return path.parent / href


def _domain(text: str | None) -> str | None:
    try:
        return JID.parse(text or "").domain
    except InvalidJID:
        return None


def _elements_of(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def _bytes(node: etree._Element) -> bytes:
    return etree.tostring(node, encoding="utf-8", with_tail=False)


def _as_client(message: etree._Element) -> etree._Element:
    """A self-contained copy in jabber:client (Prosody's stanzas sometimes inherit the file's namespace)."""
    copy = etree.fromstring(_bytes(message))
    if copy.tag != f"{{{ns.CLIENT}}}message":
        attributes = {str(key): str(value) for key, value in copy.attrib.items()}
        renamed = etree.Element(f"{{{ns.CLIENT}}}message", attributes, nsmap=ns.default_ns(ns.CLIENT))
        renamed.text = copy.text
        renamed.extend(list(copy))
        return renamed
    return copy


def _node(name: str, configure: etree._Element, node: PepNode, cap: int) -> PepNode:
    """The options Nitro keeps from a node configuration form; empty or unknown values keep defaults."""
    form_node = configure.find(f"{{{ns.DATA_FORMS}}}x")
    if form_node is None:
        return node
    with contextlib.suppress(InvalidForm):
        form = Form.from_element(form_node)
        access = form.value("pubsub#access_model")
        max_items = form.value("pubsub#max_items") or ""
        persist = form.value("pubsub#persist_items")
        return PepNode(
            name,
            access_model=next((m for m in ACCESS_MODELS if m == access), node.access_model),
            max_items=cap
            if max_items == "max"
            else min(int(max_items), cap)
            if max_items.isdigit()
            else node.max_items,
            persist_items=node.persist_items if persist is None else persist in ("1", "true"),
            whitelist=node.whitelist,
        )
    return node


def _stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_stamp(text: str) -> datetime.datetime:
    """XEP-0082 date-time; ValueError if it is none."""
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)
