"""The XEP-0114 side of the MUC plugin: a slixmpp component that hands every stanza, in order, to the
Service and writes its answers, serialising each broadcast once."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from xml.etree.ElementTree import Element

from slixmpp.componentxmpp import ComponentXMPP
from slixmpp.xmlstream import tostring
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from slixmpp.xmlstream.stanzabase import StanzaBase
from slixmpp.xmlstream.xmlstream import NotConnectedError

from nitro.sdk import Plugin, PluginSettings
from plugins.muc.room import Out
from plugins.muc.service import Service
from plugins.muc.xml import STANZA

log = logging.getLogger(__name__)

YIELD_EVERY = 100  # recipients written between two yields to the event loop during a broadcast
RECONNECT_WAIT = 30.0  # seconds what the rooms send waits for a dropped link to come back
BATCH = 200  # stanzas handled together at most (their archived messages share one transaction)
QUEUE_HIGH = 5_000  # stanzas waiting for the service: past it the link stops reading (TCP slows the core)
QUEUE_LOW = 1_000  # … and reads again below this
# Bytes unsent to the core past which the writer waits for the core to read: small, because the answer to
# the core's health ping travels behind them on the same stream.
WRITE_HIGH = 256 * 1024
_PING = "{urn:xmpp:ping}ping"


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


class MucPlugin(Plugin):
    """The SDK's Plugin (connect, reconnect with backoff) with a component whose stanzas all go to the
    service in arrival order, through one queue and one worker."""

    def __init__(self, name: str = "muc") -> None:
        super().__init__(name)
        self.service: Service | None = None
        self.queue: asyncio.Queue[Element] = asyncio.Queue()
        self.outbox: asyncio.Queue[Out] = asyncio.Queue()
        self.paused = False

    def component(self, settings: PluginSettings) -> ComponentXMPP:
        xmpp = ComponentXMPP(settings.subdomain, settings.secret, settings.core_host, settings.core_port)
        for name in ("IM", "IMError", "Presence"):  # slixmpp's client-side handling: the rooms do it all
            xmpp.remove_handler(name)
        xmpp.del_event_handler("presence_probe", xmpp._handle_probe)
        xmpp.add_event_handler("session_start", lambda _event: _small_send_buffer(xmpp))
        for kind in ("message", "presence", "iq"):
            xmpp.register_handler(Callback(f"muc-{kind}", MatchXPath(f"{{{STANZA}}}{kind}"), self._received))
        return xmpp

    def _received(self, stanza: StanzaBase) -> None:
        xml = stanza.xml
        xmpp = self.xmpp
        if xmpp is not None and _is_health_ping(xml, xmpp.boundjid.bare):
            # the core's health ping (XEP-0199 §4.3) is answered at once, not behind a room's backlog
            reply = (
                f'<iq type="result" to="{_escape(xml.get("from", ""))}" from="{_escape(xmpp.boundjid.bare)}"'
            )
            xmpp.send_raw(f'{reply} id="{_escape(xml.get("id", ""))}"/>')
            return
        self.queue.put_nowait(xml)
        if self.queue.qsize() >= QUEUE_HIGH and xmpp is not None and xmpp.transport is not None:
            xmpp.transport.pause_reading()
            self.paused = True
            log.warning("muc: %d stanzas waiting: the link stops reading until %d", QUEUE_HIGH, QUEUE_LOW)

    def sink(self, out: Out) -> None:
        self.outbox.put_nowait(out)

    async def work(self) -> None:
        """The service's worker: the stanzas waiting (up to BATCH), in order, so a room sees them in the
        order they came and a burst of messages is archived in one transaction."""
        assert self.service is not None
        while True:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            if self.paused and self.queue.qsize() <= QUEUE_LOW:
                self._resume()
            try:
                await self.service.handle_many(batch)
            except Exception:
                log.exception("muc: failed on a batch of %d stanzas", len(batch))

    async def _connected(self) -> ComponentXMPP | None:
        """The link, waiting up to RECONNECT_WAIT seconds for the SDK to reconnect it when it is down."""
        for _ in range(int(RECONNECT_WAIT * 10)):
            if self.xmpp is not None and self.xmpp.transport is not None:
                return self.xmpp
            await asyncio.sleep(0.1)
        return None

    def _resume(self) -> None:
        self.paused = False
        log.info("muc: reading the link again")
        xmpp = self.xmpp
        if xmpp is not None and xmpp.transport is not None:
            xmpp.transport.resume_reading()

    def write_now(self) -> None:
        """What is waiting in the outbox, written at once (at shutdown: no yield, no waiting)."""
        xmpp = self.xmpp
        while not self.outbox.empty():
            out = self.outbox.get_nowait()
            if xmpp is None or xmpp.transport is None or xmpp.transport.is_closing():
                continue
            for text in _serialised(out, xmpp):
                xmpp.send_raw(text)

    async def write(self) -> None:
        """Writes what the service sends: each stanza serialised once, 'to' spliced in per recipient, with a
        yield to the loop every YIELD_EVERY recipients so a large room never holds it for long."""
        while True:
            out = await self.outbox.get()
            xmpp = await self._connected()
            if xmpp is None:
                dropped = 1 + self.outbox.qsize()
                while not self.outbox.empty():
                    self.outbox.get_nowait()
                log.warning("muc: no link for %ss: %d stanzas dropped", RECONNECT_WAIT, dropped)
                continue
            try:
                for index, text in enumerate(_serialised(out, xmpp)):
                    xmpp.send_raw(text)
                    if index % YIELD_EVERY == YIELD_EVERY - 1:
                        await asyncio.sleep(0)
                        await _drained(xmpp)
            except NotConnectedError:
                # the link dropped mid-broadcast: the rest of this one is lost, the next waits for the link
                log.warning("muc: the link dropped during a broadcast to %d recipients", len(out.recipients))


def _serialised(out: Out, xmpp: ComponentXMPP) -> Iterator[str]:
    """The stanza once serialised, with each recipient's 'to' spliced in."""
    out.stanza.attrib.pop("to", None)
    text = tostring(out.stanza, xmlns=STANZA, stream=xmpp, top_level=True)
    head, rest = text.split(" ", 1) if " " in text.split(">", 1)[0] else (text[:-2], text[-2:])
    for recipient in out.recipients:
        yield f'{head} to="{_escape(recipient)}" {rest}'


def _small_send_buffer(xmpp: ComponentXMPP) -> None:
    """Keep the kernel's share of unsent bytes small too (its autotuned buffer can hold megabytes)."""
    transport = xmpp.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WRITE_HIGH)


async def _drained(xmpp: ComponentXMPP) -> None:
    """Wait while more than WRITE_HIGH bytes wait for the core to read them (a slow core slows the rooms,
    the plugin's memory stays bounded); returns at once when the link is gone."""
    for _ in range(6000):  # at most a minute; the core's own timeouts end a link stuck longer
        transport = xmpp.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() <= WRITE_HIGH:
            return
        await asyncio.sleep(0.01)


def _is_health_ping(xml: Element, domain: str) -> bool:
    return (
        xml.tag == f"{{{STANZA}}}iq"
        and xml.get("type") == "get"
        and xml.get("to") == domain
        and len(xml) == 1
        and xml[0].tag == _PING
    )
