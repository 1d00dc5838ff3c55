"""Who is on the other end of an HTTP request, and is the path to them encrypted: the socket's own facts, or
what a trusted reverse proxy says in X-Forwarded-For and X-Forwarded-Proto; and the URLs of the web transports
as that client reached us."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

WEBSOCKET_PATH: Final = "/xmpp-websocket"  # RFC 7395, nitro/transports/websocket.py
BOSH_PATH: Final = "/http-bind"  # XEP-0206, nitro/transports/bosh.py


@dataclass(frozen=True, slots=True)
class Peer:
    """The client of one request: its address (for logs and login throttling), whether the way to it is
    encrypted end to end as far as we can tell, and the scheme it used ("http" or "https")."""

    host: str
    encrypted: bool
    scheme: str


def trusted_networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """The `[http] trusted_proxies` entries as networks (a single address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(text: str, networks: tuple[Network, ...]) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in networks)


def resolve_peer(peer: str, tls: bool, headers: Mapping[str, str], networks: tuple[Network, ...]) -> Peer:
    """The client behind `peer` (the socket's address; `tls`: the socket is TLS).

    Without a trusted proxy the socket decides: TLS, or a loopback peer (the traffic never left the machine),
    counts as encrypted. A trusted proxy's X-Forwarded-Proto decides instead when it sends one, and the client
    is the right-most X-Forwarded-For entry that is not itself a trusted proxy.
    """
    address = _address(peer)
    local = address is not None and address.is_loopback
    scheme = "https" if tls else "http"
    if not _trusted(peer, networks):
        return Peer(peer, tls or local, scheme)
    host = peer
    chain = [entry.strip() for entry in headers.get("X-Forwarded-For", "").split(",") if entry.strip()]
    for entry in reversed(chain):
        host = entry
        if not _trusted(entry, networks):
            break
    forwarded_proto = headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if forwarded_proto in ("http", "https"):
        return Peer(host, forwarded_proto == "https", forwarded_proto)
    return Peer(host, tls or local, scheme)


def peer_of(request: web.BaseRequest, networks: tuple[Network, ...]) -> Peer:
    """`resolve_peer` for an aiohttp request."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    peer = str(peername[0]) if isinstance(peername, tuple) else "local"
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    return resolve_peer(peer, tls, request.headers, networks)


def connection_urls(request: web.Request, networks: tuple[Network, ...]) -> dict[str, str]:
    """The absolute URLs of the web transports this app serves ("websocket", "bosh"), with the scheme the
    client used (as a trusted proxy reports it) and the Host it asked for."""
    secure = peer_of(request, networks).scheme == "https"
    paths = {resource.canonical for resource in request.app.router.resources()}
    urls = {}
    if WEBSOCKET_PATH in paths:
        urls["websocket"] = f"{'wss' if secure else 'ws'}://{request.host}{WEBSOCKET_PATH}"
    if BOSH_PATH in paths:
        urls["bosh"] = f"{'https' if secure else 'http'}://{request.host}{BOSH_PATH}"
    return urls
