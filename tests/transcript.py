"""Negotiation transcripts without sockets (issue 10): a `Transport` that records what a client stream does,
a `Transcript` that reads like "the client sends X, the server answers Y", and a real `Server` without
listeners to run them against. Elements in, elements out: no sockets, no slixmpp, no clocks.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from conftest import DOMAIN, PASSWORD, make_config
from lxml import etree

from nitro.accounts import create_account
from nitro.c2s.driver import ClientStream
from nitro.c2s.session import ClientSession
from nitro.c2s.transport import StreamHeader
from nitro.config import Config
from nitro.core.module import BUILTIN_MODULES
from nitro.server import Server
from nitro.storage.layered import open_storage
from nitro.transports.tls import make_tls_context
from nitro.xmpp import ns
from nitro.xmpp.errors import StreamCondition, StreamError
from nitro.xmpp.jid import JID
from nitro.xmpp.xmlstream import StreamEvent, XMLStreamParser

SM = "urn:xmpp:sm:3"
PEER = "192.0.2.7"  # TEST-NET-1 (RFC 5737): the client's address, for throttles keyed on it

# What the stream did through its transport, in order (nitro/c2s/transport.py names each call).
Entry = (
    tuple[Literal["open"], StreamHeader]  # our stream header
    | tuple[Literal["element"], etree._Element]  # one top-level element (stanza or nonza)
    | tuple[Literal["keepalive"]]
    | tuple[Literal["restart"]]  # the next input is a new stream header (after SASL success or STARTTLS)
    | tuple[Literal["starttls"]]  # the TLS handshake (only recorded: the transport is marked encrypted)
    | tuple[
        Literal["close"], str | None
    ]  # our last words: a stream error's condition, or None, then the close
    | tuple[Literal["disconnect"]]  # the connection closed without more output
)


class RecordingTransport:
    """A `Transport` that sends nothing anywhere and records every call as an `Entry`.

    Like the TCP transport it owns the parser of what the client writes (`restart` resets it); `start_tls`
    only marks the stream encrypted: the negotiation logic is under test, not TLS.
    """

    def __init__(
        self,
        *,
        encrypted: bool,
        tls_available: bool,
        peer_host: str = PEER,
        max_stanza_bytes: int = 262144,
    ) -> None:
        self.kind = "tls" if encrypted else "tcp"
        self.peer_host = peer_host
        self.encrypted = encrypted
        self.tls_available = tls_available  # the server could do TLS on this connection
        self.parser = XMLStreamParser(max_stanza_bytes=max_stanza_bytes)
        self.entries: list[Entry] = []
        self.stream_error: StreamError | None = None  # the error of the last ("close", condition)
        self.closed = False
        self.restarted = False  # since the client's last input

    @property
    def can_starttls(self) -> bool:
        return self.tls_available and not self.encrypted

    def open_stream(self, header: StreamHeader) -> None:
        self.entries.append(("open", header))

    def send(self, element: etree._Element) -> None:
        self.entries.append(("element", element))

    def send_keepalive(self) -> None:
        self.entries.append(("keepalive",))

    def restart(self) -> None:
        self.parser.reset()
        self.restarted = True
        self.entries.append(("restart",))

    async def start_tls(self) -> None:
        assert self.can_starttls, "start_tls on a transport that cannot"
        self.encrypted = True
        self.entries.append(("starttls",))

    def close_stream(self, error: StreamError | None) -> None:
        self.stream_error = error
        self.closed = True
        self.entries.append(("close", None if error is None else error.condition))

    def close(self) -> None:
        if not self.closed:  # as over TCP, a close after `close_stream` adds nothing
            self.closed = True
            self.entries.append(("disconnect",))


def render(entry: Entry) -> str:
    """One entry as a line of the transcript."""
    match entry:
        case ("open", StreamHeader() as header):
            return f"open <stream:stream from={header.from_!r} to={header.to!r} id={header.id!r}>"
        case ("element", etree._Element() as element):
            return "element " + etree.tostring(element, encoding="unicode")
        case ("close", condition):
            return f"close {condition or '(no error)'}"
        case _:
            return entry[0]


def _condition_of(element: etree._Element) -> str | None:
    """The defined condition an error element carries: a SASL `<failure/>` (RFC 6120 §6.4.5), an XEP-0198
    `<failed/>`, or a stanza of type 'error' (§8.3)."""
    name = etree.QName(element)
    if name.namespace == ns.SASL and name.localname == "failure":
        scope, holder = ns.SASL, element
    elif name.namespace == SM and name.localname == "failed":
        scope, holder = ns.STANZA_ERRORS, element
    elif element.get("type") == "error":
        found = next((node for node in element if etree.QName(node).localname == "error"), None)
        if found is None:
            return None
        scope, holder = ns.STANZA_ERRORS, found
    else:
        return None
    for node in holder:
        node_name = etree.QName(node)
        if node_name.namespace == scope and node_name.localname != "text":
            return node_name.localname
    return None


class Transcript:
    """One client connection, driven by hand: `client(...)` is what the client writes, `expect...` reads what
    the server did next. Failures print the whole transcript with a marker where reading stopped."""

    def __init__(self, server: Server, transport: RecordingTransport) -> None:
        self.server = server
        self.transport = transport
        self.stream = ClientStream(server, transport)
        self._read = 0  # entries consumed by the expect calls
        self.lost = False

    def __str__(self) -> str:
        lines = [
            ("  > " if index == self._read else "    ") + render(entry)
            for index, entry in enumerate(self.transport.entries)
        ]
        if self._read == len(self.transport.entries):
            lines.append("  > (nothing more)")
        return "\n".join(lines)

    @property
    def session(self) -> ClientSession | None:
        return self.stream.session

    # -- the client's side ------------------------------------------------------------------------------

    async def client(self, xml: str | bytes) -> None:
        """The client writes `xml`, fed through the transport's parser as the TCP transport feeds its bytes
        (nitro/transports/tcp.py `feed`): a parser error closes the stream with it, and events after a
        restart or the stream's end are dropped."""
        if self.lost or not self.stream.open:
            raise AssertionError(f"the client writes to a stream that is over\n{self}")
        data = xml.encode() if isinstance(xml, str) else xml
        self.transport.restarted = False
        self.stream.activity()
        try:
            events = self.transport.parser.feed(data)
        except StreamError as error:
            await self.stream.close(error)
            return
        for event in events:
            if not await self.stream.receive(event) or self.transport.restarted or self.transport.closed:
                return

    async def header(
        self,
        to: str | None = DOMAIN,
        *,
        version: str | None = "1.0",
        lang: str | None = None,
        from_: str | None = None,
        stream_ns: str = ns.STREAM,
    ) -> None:
        """The client's stream header (RFC 6120 §4.7); a None attribute is left out."""
        attributes = {"to": to, "from": from_, "version": version, "xml:lang": lang}
        rendered = "".join(f" {name}='{value}'" for name, value in attributes.items() if value is not None)
        await self.client(
            f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='{stream_ns}'{rendered}>"
        )

    async def event(self, event: StreamEvent) -> bool:
        """An event no byte stream can carry here (e.g. a second header, as a WebSocket `<open/>` could)."""
        return await self.stream.receive(event)

    async def client_closes(self) -> None:
        """`</stream:stream>` (RFC 6120 §4.4)."""
        await self.client("</stream:stream>")

    async def lose_connection(self) -> None:
        """The connection dies without a close (EOF, reset): what every transport reports."""
        self.lost = True
        await self.stream.connection_lost()

    async def tick(self) -> bool:
        """The transport's timer fired: the stream runs its timeouts, pings and keepalives."""
        return await self.stream.tick()

    # -- what the server did -------------------------------------------------------------------------------

    def next(self) -> Entry:
        entries = self.transport.entries
        if self._read >= len(entries):
            raise AssertionError(f"the server did nothing more\n{self}")
        self._read += 1
        return entries[self._read - 1]

    def _fail(self, wanted: str) -> AssertionError:
        self._read -= 1
        return AssertionError(f"expected {wanted}\n{self}")

    def expect_open(self) -> StreamHeader:
        match self.next():
            case ("open", StreamHeader() as header):
                return header
        raise self._fail("our stream header")

    def expect(self, name: str, namespace: str | None = None) -> etree._Element:
        """The next entry is a top-level element named `name` (in `namespace`, if given; an unqualified
        stanza counts as jabber:client, the stream's default)."""
        match self.next():
            case ("element", etree._Element() as element):
                qname = etree.QName(element)
                if qname.localname == name and namespace in (None, qname.namespace or ns.CLIENT):
                    return element
        raise self._fail(f"<{name}/>" + (f" in {namespace}" if namespace else ""))

    def expect_error(self, condition: str) -> etree._Element:
        """The next entry is a SASL failure, a stream management `<failed/>` or an error stanza carrying
        `condition`."""
        match self.next():
            case ("element", etree._Element() as element) if _condition_of(element) == condition:
                return element
        raise self._fail(f"an error element with <{condition}/>")

    def expect_stream_error(self, condition: StreamCondition) -> StreamError:
        """The next entry closes the stream with a stream error (RFC 6120 §4.9)."""
        match self.next():
            case ("close", found) if found == condition:
                assert self.transport.stream_error is not None
                return self.transport.stream_error
        raise self._fail(f"a <{condition}/> stream error")

    def expect_close(self) -> None:
        """The next entry closes the stream without an error (RFC 6120 §4.4)."""
        match self.next():
            case ("close", None):
                return
        raise self._fail("the stream closed without an error")

    def expect_plain(self, kind: Literal["restart", "starttls", "keepalive", "disconnect"]) -> None:
        match self.next():
            case (found,) if found == kind:
                return
        raise self._fail(kind)

    def drain(self) -> list[etree._Element]:
        """Consume everything not read yet and return its elements (fan-out whose order is not under test:
        presence broadcasts, offline delivery)."""
        entries = self.transport.entries[self._read :]
        self._read = len(self.transport.entries)
        return [entry[1] for entry in entries if entry[0] == "element"]

    def expect_nothing(self) -> None:
        if self._read != len(self.transport.entries):
            raise AssertionError(f"expected nothing more\n{self}")

    # -- whole steps -------------------------------------------------------------------------------------

    async def open(self, to: str = DOMAIN) -> etree._Element:
        """Header in; our header and the stream features out (RFC 6120 §4.3.2). Returns the features."""
        await self.header(to)
        header = self.expect_open()
        assert header.from_ == DOMAIN
        assert header.id
        return self.expect("features", ns.STREAM)

    async def auth_plain(self, username: str, password: str = PASSWORD) -> None:
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        await self.client(f"<auth xmlns='{ns.SASL}' mechanism='PLAIN'>{token}</auth>")

    async def login(self, username: str, password: str = PASSWORD) -> etree._Element:
        """Features, SASL PLAIN, success, the restart and the new stream's features (which it returns)."""
        await self.open()
        await self.auth_plain(username, password)
        self.expect("success", ns.SASL)
        self.expect_plain("restart")
        return await self.open()

    async def bind(self, resource: str | None = None, iq_id: str = "bind1") -> JID:
        """Resource binding (RFC 6120 §7); returns the full JID the server bound."""
        payload = "" if resource is None else f"<resource>{resource}</resource>"
        await self.client(f"<iq type='set' id='{iq_id}'><bind xmlns='{ns.BIND}'>{payload}</bind></iq>")
        result = self.expect("iq")
        assert result.get("type") == "result", str(self)
        jid = result.findtext(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}jid")
        assert jid is not None, str(self)
        return JID.parse(jid)

    async def enable(self) -> str:
        """Resumable stream management (XEP-0198 §3); returns the resumption id."""
        await self.client(f"<enable xmlns='{SM}' resume='true'/>")
        enabled = self.expect("enabled", SM)
        previd = enabled.get("id")
        assert previd, str(self)
        return previd


@dataclass
class Harness:
    """A real Server (storage, modules) without listeners, and the transcripts connected to it."""

    server: Server
    transcripts: list[Transcript] = field(default_factory=list)
    shut_down: bool = False

    async def user(self, name: str, password: str = PASSWORD) -> JID:
        """An account, as `nitro user add` makes it; returns its bare JID."""
        await create_account(self.server.storage, name, password)
        return JID.make(name, DOMAIN)

    def connect(
        self, *, encrypted: bool = True, tls_available: bool | None = None, peer_host: str = PEER
    ) -> Transcript:
        """A new connection: Direct TLS by default (encrypted from the start), `encrypted=False` for a plain
        TCP stream where STARTTLS is possible if the server has a TLS context."""
        available = self.server.tls_context is not None if tls_available is None else tls_available
        transport = RecordingTransport(
            encrypted=encrypted,
            tls_available=available,
            peer_host=peer_host,
            max_stanza_bytes=self.server.config.c2s.max_stanza_bytes,
        )
        transcript = Transcript(self.server, transport)
        self.transcripts.append(transcript)
        return transcript

    async def shutdown(self, *, clients_leave_first: bool = True) -> None:
        """The server's own shutdown (once); before it, by default, every connection ends as a transport
        ends it. Connections still there after it end then, as their transports would after the close."""
        if self.shut_down:
            return
        self.shut_down = True
        if clients_leave_first:
            await self._lose_connections()
        await self.server.shutdown()
        await self._lose_connections()

    async def _lose_connections(self) -> None:
        for transcript in self.transcripts:
            if not transcript.lost:
                await transcript.lose_connection()


def transcript_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    """`make_config` (tests/conftest.py) without its free ports: nothing listens here (port 0, as no two
    free ports picked one after the other can then turn out to be the same)."""
    c2s = {"port": 0, "direct_tls_port": 0, **sections.pop("c2s", {})}
    return make_config(tmp_path, c2s=c2s, **sections)


@contextlib.asynccontextmanager
async def transcript_server(config: Config, *, tls: bool = True) -> AsyncIterator[Harness]:
    """Storage and modules as `running_server` starts them, with no listener (and no TLS context if `tls` is
    False); shut down on exit."""
    tls_context = make_tls_context(config) if tls else None
    async with open_storage(config) as storage:
        server = Server(config, storage, tls_context)
        server.tiers = storage.tiers
        server.load_modules(tuple(m for m in BUILTIN_MODULES if m not in config.modules.disabled))
        harness = Harness(server)
        try:
            yield harness
        finally:
            await harness.shutdown()
