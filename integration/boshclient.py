"""A small BOSH client for tests and the benchmark (XEP-0124, XEP-0206) on aiohttp's client.

Like Strophe.js it keeps one empty request held by the server while logged in, never has more than
'requests' open, and reads payloads in rid order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import secrets
from collections.abc import Callable, Iterable
from typing import Final

import aiohttp
from lxml import etree

HTTPBIND: Final = "http://jabber.org/protocol/httpbind"
XBOSH: Final = "urn:xmpp:xbosh"
CLIENT: Final = "jabber:client"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND: Final = "urn:ietf:params:xml:ns:xmpp-bind"
SM: Final = "urn:xmpp:sm:3"
STREAM: Final = "http://etherx.jabber.org/streams"

Payload = str | bytes | etree._Element
_ids = itertools.count(1)
RESENDS = 20  # times one request is sent again (XEP-0124 §14.3) before the client gives up


class Terminated(AssertionError):
    """The server ended the session (a terminal body) while the test waited for something else."""

    def __init__(self, terminal: etree._Element) -> None:
        super().__init__(f"session terminated: {etree.tostring(terminal).decode()}")
        self.terminal = terminal


def local(element: etree._Element) -> str:
    return etree.QName(element).localname


class BoshClient:
    """One BOSH session against `url`; `login` authenticates (SASL PLAIN), restarts and binds."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        domain: str = "localhost",
        *,
        wait: int = 10,
        resend: bool = False,
    ) -> None:
        self.http = http
        self.url = url
        self.domain = domain
        self.wait = wait
        # XEP-0124 §14.3: a request without a response (connection closed, HTTP 503) is sent again with its
        # rid, as Strophe.js does; off by default so tests see the first failure
        self.resend = resend
        self.resent = 0
        self.sid: str | None = None
        self.jid = ""
        self.creation: etree._Element | None = None
        self.requests = 2
        self.terminal: etree._Element | None = None
        self._rid = secrets.randbelow(2**40) + 1
        self._slots = asyncio.Semaphore(1)
        self._incoming: asyncio.Queue[etree._Element] = asyncio.Queue()
        self._responses: dict[int, etree._Element] = {}
        self._next_to_read = 0
        self._poller: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outgoing: list[Payload] = []

    # -- raw requests --------------------------------------------------------------------------------

    def next_rid(self) -> int:
        self._rid += 1
        return self._rid

    async def post_raw(
        self, data: bytes, *, content_type: str | None = "text/xml; charset=utf-8"
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": content_type} if content_type else {}
        async with asyncio.timeout(self.wait + 15):
            skip = () if content_type else ("Content-Type",)  # aiohttp would say application/octet-stream
            response = await self.http.post(self.url, data=data, headers=headers, skip_auto_headers=skip)
            await response.read()
        return response

    def body(self, rid: int, payloads: Iterable[Payload] = (), **attrs: str) -> bytes:
        merged = {"rid": str(rid), **({"sid": self.sid} if self.sid else {}), **attrs}
        rendered = "".join(f" {name.replace('__', ':')}='{value}'" for name, value in merged.items())
        content = b"".join(_bytes(item) for item in payloads)
        return f"<body xmlns='{HTTPBIND}' xmlns:xmpp='{XBOSH}'{rendered}>".encode() + content + b"</body>"

    async def post(self, rid: int, payloads: Iterable[Payload] = (), **attrs: str) -> etree._Element:
        """One request and its response body (read in rid order by the caller)."""
        data = self.body(rid, payloads, **attrs)
        for attempt in range(RESENDS + 1):
            last = not self.resend or attempt == RESENDS
            try:
                response = await self.post_raw(data)
            except aiohttp.ClientConnectionError:
                if last:
                    raise
                self.resent += 1
                continue
            if response.status != 503 or last:
                break
            self.resent += 1
            await asyncio.sleep(0.05)
        assert response.status == 200, f"HTTP {response.status}"
        return etree.fromstring(await response.read())

    # -- a session -----------------------------------------------------------------------------------

    async def create(self, **attrs: str) -> etree._Element:
        """The session creation request (XEP-0124 §7.1, XEP-0206 §4); returns its response."""
        rid = self.next_rid()
        self._next_to_read = rid
        defaults = {"to": self.domain, "ver": "1.11", "wait": str(self.wait), "hold": "1"}
        creation = await self.post(rid, **{**defaults, "xmpp__version": "1.0", "xml__lang": "en", **attrs})
        self._check(creation)
        self.creation = creation
        self.sid = creation.get("sid")
        self.requests = int(creation.get("requests") or 2)
        self._slots = asyncio.Semaphore(self.requests)
        self._next_to_read = rid + 1
        return creation

    async def step(self, payloads: Iterable[Payload] = (), **attrs: str) -> list[etree._Element]:
        """One request while nothing else is open (login): the payloads of its response."""
        rid = self.next_rid()
        response = await self.post(rid, payloads, **attrs)
        self._check(response)
        self._next_to_read = rid + 1
        return list(response)

    async def login(
        self, user: str, password: str, resource: str | None = None, *, bind: bool = True, poll: bool = True
    ) -> str:
        creation = await self.create()
        features = creation.find(f"{{{STREAM}}}features")
        assert features is not None, "no stream features in the session creation response"
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        (outcome,) = await self.step([f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>"])
        assert local(outcome) == "success", etree.tostring(outcome)
        (features,) = await self.step(xmpp__restart="true", to=self.domain)
        assert local(features) == "features"
        if bind:
            resource_xml = f"<resource>{resource}</resource>" if resource else ""
            iq = f"<iq xmlns='{CLIENT}' type='set' id='bind1'><bind xmlns='{BIND}'>{resource_xml}</bind></iq>"
            (result,) = await self.step([iq])
            self.jid = result.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or ""
            assert self.jid, etree.tostring(result)
        if poll:
            self.start_polling()
        return self.jid

    def start_polling(self) -> None:
        """Keep one empty request held by the server, as browser clients do."""
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while self.terminal is None:
            await self.request([])

    async def request(
        self, payloads: list[Payload] | tuple[()] = (), *, take: bool = False, **attrs: str
    ) -> None:
        """Send payloads in a new request (waiting for a free slot); response payloads go to `recv`.
        With `take`, the request carries (and empties) the list as it is once a slot is free."""
        async with self._slots:
            rid = self.next_rid()
            batch = list(payloads)
            if take:
                assert isinstance(payloads, list)
                payloads.clear()
            response = await self.post(rid, batch, **attrs)
        self._responses[rid] = response
        while self._next_to_read in self._responses:  # the client reads responses in rid order (§14.2)
            body = self._responses.pop(self._next_to_read)
            self._next_to_read += 1
            for element in body:
                self._incoming.put_nowait(element)
            if body.get("type") == "terminate":
                self.terminal = body
                self._incoming.put_nowait(body)

    async def send(self, *payloads: Payload) -> None:
        """Queue payloads; like Strophe.js, whatever is queued when a request slot is free goes in one
        request. Its response arrives in `recv`."""
        self._outgoing.extend(payloads)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())
        await asyncio.sleep(0)

    async def _send_queued(self) -> None:
        while self._outgoing and self.terminal is None:
            await self.request(self._outgoing, take=True)

    async def recv(
        self, match: Callable[[etree._Element], bool] = lambda _element: True, timeout: float = 10.0
    ) -> etree._Element:
        """The next payload `match` accepts (others are dropped); Terminated if the session ends first."""
        async with asyncio.timeout(timeout):
            while True:
                element = await self._incoming.get()
                if element.tag == f"{{{HTTPBIND}}}body":
                    raise Terminated(element)
                if match(element):
                    return element

    async def iq(self, xml: str, timeout: float = 10.0) -> etree._Element:
        """Send an IQ (its id is added) and return the answer."""
        ident = f"iq{next(_ids)}"
        await self.send(xml.replace("<iq ", f"<iq id='{ident}' ", 1))
        return await self.recv(lambda e: local(e) == "iq" and e.get("id") == ident, timeout)

    async def terminate(self, *payloads: Payload) -> None:
        """End the session (XEP-0124 §13)."""
        await self.stop()
        if self.terminal is None and self.sid is not None:
            response = await self.post(self.next_rid(), payloads, type="terminate")
            self.terminal = response

    async def stop(self) -> None:
        """Stop polling and sending without a word (the session then ends after 'inactivity')."""
        for task in (self._poller, self._sender):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _check(self, response: etree._Element) -> None:
        if response.get("type") == "terminate":
            self.terminal = response
            raise Terminated(response)


def _bytes(item: Payload) -> bytes:
    if isinstance(item, etree._Element):
        return etree.tostring(item)
    return item.encode() if isinstance(item, str) else item
