"""What one client connection may cost, for every transport: traffic shaping (token buckets in bytes and in
stanza costs, paid by pausing reads) and the count of connections per address. Pure: no sockets, no tasks.

How a transport uses them (TCP in nitro/transports/tcp.py; WebSocket and BOSH the same way):
- at accept, `AddressCounter.acquire(peer_host)`; None: close the stream at once with the
  `<policy-violation/>` of `too_many_connections()`; else `release()` the slot when the connection ends;
- per connection, a `Shaper`: `take_bytes(len(data))` for what it reads (at most `allowance()` bytes at a
  time where the transport can split its input), `take(event)` for each stream event it hands to the
  stream, and before reading or handing on more, `delay()` seconds of not reading from the peer (pause
  the socket, hold back the next WebSocket message or BOSH request body) while it is positive.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from lxml import etree

from nitro.config import Config, LimitsSection
from nitro.transports.isolation import PreauthParsing
from nitro.xmpp import ns
from nitro.xmpp.errors import StreamError
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamEvent

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_IQ: Final = f"{{{ns.CLIENT}}}iq"
_PRESENCE: Final = f"{{{ns.CLIENT}}}presence"
_SUBSCRIPTIONS: Final = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})
_SASL_STEPS: Final = frozenset({f"{{{ns.SASL}}}auth", f"{{{ns.SASL}}}response"})
MAM: Final = "urn:xmpp:mam:2"

# What a stanza costs, in units of an ordinary one: requests that make the server work or write much more
# than they weigh. An IQ is priced by its type and the namespace of its payload.
IQ_COSTS: Final[dict[tuple[str, str], int]] = {
    ("set", ns.ROSTER): 5,  # a roster write, and a push to every resource of the account
    ("set", ns.REGISTER): 20,  # an account created (PBKDF2 for its SCRAM keys) or its password changed
    ("set", MAM): 10,  # an archive query: a page read from SQL
}
SUBSCRIPTION_COST: Final = 5  # a roster write for both users, pushes, probes (RFC 6121 §3)
SASL_COST: Final = 10  # PLAIN derives SCRAM keys (PBKDF2) from the password to check it
MIN_READ: Final = 1024  # bytes a shaped connection may always read once out of debt


def cost(event: StreamEvent) -> int:
    """The shaping cost of one stream event: 1, more for the requests named above, 0 for the stream's end."""
    if isinstance(event, StreamClosed):
        return 0
    if not isinstance(event, StanzaReceived):
        return 1
    element = event.element
    tag = element.tag
    if tag == _IQ:
        kind = element.get("type") or ""
        if kind == "set" and len(element):
            payload = element[0]
            if isinstance(payload.tag, str):
                return IQ_COSTS.get((kind, etree.QName(payload).namespace or ""), 1)
        return 1
    if tag == _PRESENCE:
        return SUBSCRIPTION_COST if element.get("type") in _SUBSCRIPTIONS else 1
    if tag in _SASL_STEPS:
        return SASL_COST
    return 1


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second, at most `capacity` saved up. Taking more than there are leaves a debt, paid off
    before `wait` says zero again: what was taken is never refused, the next one waits."""

    rate: float  # 0: unlimited
    capacity: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst_seconds: float, now: float) -> TokenBucket:
        capacity = rate * burst_seconds
        return cls(rate, capacity, capacity, now)

    def take(self, amount: float, now: float) -> None:
        if self.rate:
            self._refill(now)
            self.tokens -= amount

    def wait(self, now: float) -> float:
        """Seconds until the debt is paid (0 when there is none)."""
        if not self.rate:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def saved_up(self, now: float) -> bool:
        """No debt and all the credit saved up (always, when unlimited)."""
        if not self.rate:
            return True
        self._refill(now)
        return self.tokens >= self.capacity

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now


class Shaper:
    """Traffic shaping of one connection (Prosody's mod_limits, ejabberd's shapers): what it reads in bytes,
    and what it hands to the stream in stanza costs. A transport stops reading while `delay()` is positive,
    so a client sending faster than its rate is slowed down by TCP itself; nothing is dropped."""

    __slots__ = ("_bytes", "_clock", "_stanzas")

    def __init__(self, limits: LimitsSection, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._bytes = TokenBucket.full(limits.bytes_per_second, limits.burst_seconds, now)
        self._stanzas = TokenBucket.full(limits.stanzas_per_second, limits.burst_seconds, now)

    @property
    def unlimited(self) -> bool:
        return not (self._bytes.rate or self._stanzas.rate)

    def rested(self) -> bool:
        """At full credit, as a new shaper is: one made again later behaves the same."""
        now = self._clock()
        return self._bytes.saved_up(now) and self._stanzas.saved_up(now)

    def take_bytes(self, count: int) -> None:
        self._bytes.take(count, self._clock())

    def take(self, event: StreamEvent) -> None:
        if self._stanzas.rate:
            self._stanzas.take(cost(event), self._clock())

    def allowance(self) -> int | None:
        """Bytes that may be read now without going into debt (at least MIN_READ, so that a connection
        always moves on), None without a byte rate. Reading only that much keeps the pace even: what was
        read is charged at once, and a whole socket buffer read at once would be a debt of seconds."""
        bucket = self._bytes
        if not bucket.rate:
            return None
        bucket.take(0, self._clock())
        return max(MIN_READ, int(bucket.tokens))

    def delay(self) -> float:
        """Seconds to read nothing more from this connection (0: go on)."""
        now = self._clock()
        return max(self._bytes.wait(now), self._stanzas.wait(now))


_UNLIMITED = Shaper(LimitsSection(bytes_per_second=0, stanzas_per_second=0))  # keeps no state: shared


def new_shaper(limits: LimitsSection) -> Shaper:
    """A connection's shaper at full credit (one shared by all when `limits` set no rate)."""
    if not (limits.bytes_per_second or limits.stanzas_per_second):
        return _UNLIMITED
    return Shaper(limits)


def address_key(host: str) -> str:
    """What connections are counted by: the IPv4 address (also when mapped into IPv6 by a dual-stack
    socket), or the /64 of an IPv6 address (a host or customer gets a whole /64, RFC 6177); else `host`."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def is_exempt(host: str, exempt: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in exempt)


def too_many_connections(limit: int) -> StreamError:
    """RFC 6120 §4.9.3.14: a local service policy, violated by opening one connection too many."""
    return StreamError("policy-violation", f"too many connections from your address (at most {limit})")


class AddressSlot:
    """One connection counted against its address; `release` (idempotent) when the connection ends."""

    __slots__ = ("_counter", "_key")

    def __init__(self, counter: AddressCounter | None, key: str) -> None:
        self._counter = counter  # None: not counted (no cap, or an exempt address)
        self._key = key

    def release(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.forget(self._key)


class AddressCounter:
    """Open client connections per address (every transport counts here), against
    `[limits].max_connections_per_address`, read at each accept (a reload applies to new connections)."""

    def __init__(self, limits: Callable[[], LimitsSection]) -> None:
        self._limits = limits
        self._counts: dict[str, int] = {}
        self._exempt_source: tuple[str, ...] = ()
        self._exempt: tuple[Network, ...] = ()

    def acquire(self, host: str) -> AddressSlot | None:
        """Count one more connection from `host`; None (and nothing counted) past the cap."""
        limits = self._limits()
        cap = limits.max_connections_per_address
        key = address_key(host)
        if not cap or is_exempt(host, self._exempt_networks(limits)):
            return AddressSlot(None, key)
        count = self._counts.get(key, 0)
        if count >= cap:
            return None
        self._counts[key] = count + 1
        return AddressSlot(self, key)

    def forget(self, key: str) -> None:
        count = self._counts.get(key, 0)
        if count > 1:
            self._counts[key] = count - 1
        else:
            self._counts.pop(key, None)

    def count(self, host: str) -> int:
        """Connections counted for `host`'s address now."""
        return self._counts.get(address_key(host), 0)

    def _exempt_networks(self, limits: LimitsSection) -> tuple[Network, ...]:
        if limits.exempt_addresses != self._exempt_source:
            self._exempt_source = limits.exempt_addresses
            self._exempt = networks(limits.exempt_addresses)
        return self._exempt


@dataclass(frozen=True, slots=True)
class SharedLimits:
    """The limit state all client connections of a server share: made once by the server (nitro/server.py),
    handed to every transport. Settings are read from `config()` when used, so a reload applies to them."""

    addresses: AddressCounter
    preauth: PreauthParsing

    @classmethod
    def of(cls, config: Callable[[], Config]) -> SharedLimits:
        return cls(
            AddressCounter(lambda: config().limits),
            PreauthParsing(lambda: config().limits.preauth_streams_per_thread),
        )
