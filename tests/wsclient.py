"""A small XMPP client over WebSocket (RFC 7395) for tests, on aiohttp: raw messages when a test needs them,
and login (SASL SCRAM or PLAIN, bind), IQs and stanzas as lxml elements otherwise."""

from __future__ import annotations

import asyncio
import base64
import itertools
import ssl
from collections.abc import Callable, Sequence

import aiohttp
from lxml import etree

from integration.loadgen.scram import Mechanism, ScramClient, plain_message
from nitro.xmpp import ns

FRAMING = ns.FRAMING
_ids = itertools.count(1)
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


class StreamEnded(AssertionError):
    """The server closed the stream or the WebSocket while the test expected more."""


def q(name: str, namespace: str = ns.CLIENT) -> str:
    """A Clark name: q("message") is '{jabber:client}message'."""
    return f"{{{namespace}}}{name}"


def stanza(name: str, **attributes: str) -> etree._Element:
    """A top-level element in jabber:client that declares it, as RFC 7395 §3.3.1 asks of every message."""
    return etree.Element(q(name), attributes, nsmap=ns.default_ns(ns.CLIENT))


class WsClient:
    """One WebSocket to the server's /xmpp-websocket; what it receives is kept in order in `received`."""

    def __init__(
        self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, domain: str
    ) -> None:
        self.session = session
        self.ws = ws
        self.domain = domain
        self.jid = ""
        self.stream_id: str | None = None
        self.features: etree._Element | None = None
        self.pings: list[bytes] = []  # WebSocket pings seen (with autoping=False)
        self.seen: list[etree._Element] = []  # every element received, in order

    @classmethod
    async def connect(
        cls,
        url: str,
        domain: str = "localhost",
        *,
        protocols: Sequence[str] = ("xmpp",),
        autoping: bool = True,
        headers: dict[str, str] | None = None,
        ssl: ssl.SSLContext | bool = True,
        server_hostname: str | None = None,
    ) -> WsClient:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                url,
                protocols=protocols,
                autoping=autoping,
                headers=headers,
                ssl=ssl,
                server_hostname=server_hostname,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, domain)

    # -- messages ----------------------------------------------------------------------------------

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send_str(text.decode() if isinstance(text, bytes) else text)

    async def send(self, element: etree._Element) -> None:
        await self.send_raw(etree.tostring(element))

    async def receive_raw(self, timeout: float = 5.0) -> str:
        """The next text message; StreamEnded if the WebSocket closes first."""
        while True:
            message = await self.ws.receive(timeout)
            if message.type is aiohttp.WSMsgType.TEXT:
                return str(message.data)
            if message.type is aiohttp.WSMsgType.PING:
                self.pings.append(bytes(message.data))
                continue
            raise StreamEnded(f"WebSocket ended: {message.type.name} {message.data!r} {message.extra!r}")

    async def receive(self, timeout: float = 5.0) -> etree._Element:
        """The next element (each message parses alone, RFC 7395 §3.3.1)."""
        element = etree.fromstring((await self.receive_raw(timeout)).encode(), _PARSER)
        self.seen.append(element)
        return element

    async def until(self, match: Callable[[etree._Element], bool], timeout: float = 5.0) -> etree._Element:
        """The first element that `match`es, skipping others (presence pushes, acks) for up to `timeout`."""
        async with asyncio.timeout(timeout):
            while True:
                element = await self.receive(timeout)
                if match(element):
                    return element

    async def saw(self, match: Callable[[etree._Element], bool], timeout: float = 5.0) -> etree._Element:
        """The first element ever received that `match`es, waiting for it if it has not come yet."""
        for element in self.seen:
            if match(element):
                return element
        return await self.until(match, timeout)

    async def closed(self, timeout: float = 5.0) -> aiohttp.WSMessage:
        """Read until the WebSocket closes; the closing message (its data is the close code)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.receive()
                if message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return message

    async def stream_error(self, timeout: float = 5.0) -> tuple[str, list[str]]:
        """Expect a `<stream:error/>`, then `<close/>`, then the WebSocket's end (RFC 7395 §3.6): the
        condition and the texts of the elements seen before the error."""
        seen: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                element = await self.receive(timeout)
                if element.tag == q("error", ns.STREAM):
                    condition = next(
                        etree.QName(child).localname
                        for child in element
                        if child.tag != q("text", ns.STREAM_ERRORS)
                    )
                    closing = await self.receive(timeout)
                    assert closing.tag == q("close", FRAMING), etree.tostring(closing)
                    await self.closed(timeout)
                    return condition, seen
                seen.append(etree.tostring(element).decode())

    # -- stream ---------------------------------------------------------------------------------

    async def open(self, to: str | None = None, **attributes: str) -> etree._Element:
        """Send `<open/>`; return the stream features after the server's `<open/>` (RFC 7395 §3.4)."""
        opening = etree.Element(
            q("open", FRAMING), nsmap=ns.default_ns(FRAMING), version="1.0", to=to or self.domain
        )
        for name, value in attributes.items():
            opening.set(name, value)
        await self.send(opening)
        answer = await self.receive()
        assert answer.tag == q("open", FRAMING), etree.tostring(answer)
        self.stream_id = answer.get("id")
        self.features = await self.receive()
        assert self.features.tag == q("features", ns.STREAM), etree.tostring(self.features)
        return self.features

    def mechanisms(self) -> list[str]:
        assert self.features is not None
        return [m.text or "" for m in self.features.iter(q("mechanism", ns.SASL))]

    async def authenticate(self, username: str, password: str, mechanism: Mechanism = "SCRAM-SHA-1") -> None:
        """SASL (RFC 6120 §6) and the stream restart after success."""
        if mechanism == "PLAIN":
            await self.send_raw(self._auth(mechanism, plain_message(username, password)))
            outcome = await self.receive()
        else:
            scram = ScramClient("SHA-1" if mechanism == "SCRAM-SHA-1" else "SHA-256", username, password)
            await self.send_raw(self._auth(mechanism, scram.client_first()))
            challenge = await self.receive()
            assert challenge.tag == q("challenge", ns.SASL), etree.tostring(challenge)
            final = scram.client_final(base64.b64decode(challenge.text or ""))
            response = f"<response xmlns='{ns.SASL}'>{base64.b64encode(final).decode()}</response>"
            await self.send_raw(response)
            outcome = await self.receive()
            if outcome.tag == q("success", ns.SASL):
                scram.verify(base64.b64decode(outcome.text or ""))
        assert outcome.tag == q("success", ns.SASL), etree.tostring(outcome)
        await self.open()

    @staticmethod
    def _auth(mechanism: str, initial: bytes) -> str:
        return f"<auth xmlns='{ns.SASL}' mechanism='{mechanism}'>{base64.b64encode(initial).decode()}</auth>"

    async def bind(self, resource: str | None = None) -> str:
        iq = stanza("iq", type="set", id=f"bind{next(_ids)}")
        bind = etree.SubElement(iq, q("bind", ns.BIND))
        if resource:
            etree.SubElement(bind, q("resource", ns.BIND)).text = resource
        result = await self.iq(iq)
        self.jid = result.findtext(f"{q('bind', ns.BIND)}/{q('jid', ns.BIND)}") or ""
        return self.jid

    async def login(
        self, username: str, password: str, mechanism: Mechanism = "SCRAM-SHA-1", resource: str | None = "ws"
    ) -> str:
        """Open, authenticate and bind; the full JID."""
        await self.open()
        await self.authenticate(username, password, mechanism)
        return await self.bind(resource)

    async def iq(self, iq: etree._Element, timeout: float = 5.0) -> etree._Element:
        """Send an IQ (an id is added if missing) and return its result; AssertionError on an error reply."""
        if iq.get("id") is None:
            iq.set("id", f"iq{next(_ids)}")
        await self.send(iq)
        reply = await self.until(lambda e: e.tag == q("iq") and e.get("id") == iq.get("id"), timeout)
        assert reply.get("type") == "result", etree.tostring(reply)
        return reply

    async def close(self) -> None:
        """`<close/>` (RFC 7395 §3.6), then the WebSocket; quietly if it is already gone."""
        try:
            if not self.ws.closed:
                await self.send_raw(f"<close xmlns='{FRAMING}'/>")
                await self.ws.close()
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass
        finally:
            await self.session.close()


def message(to: str, body: str, **attributes: str) -> etree._Element:
    element = stanza("message", to=to, type="chat", **attributes)
    etree.SubElement(element, q("body")).text = body
    return element


def iq(type: str, payload: str, to: str | None = None) -> etree._Element:
    """An IQ with one payload given as XML text: iq("get", "<query xmlns='jabber:iq:roster'/>")."""
    element = stanza("iq", type=type)
    if to is not None:
        element.set("to", to)
    element.append(etree.fromstring(payload, _PARSER))
    return element
