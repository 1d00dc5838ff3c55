"""XEP-0114 §3 (the component handshake) and who may open a link: pure functions, no sockets."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from nitro.config_checks import is_loopback


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114 §3: hex SHA-1 of the stream id the server sent concatenated with the shared secret."""
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()  # noqa: S324 (the XEP's algorithm)


def handshake_valid(stream_id: str, secret: str, offered: str | None) -> bool:
    """Whether `offered` (the <handshake/> text) proves the secret; compared in constant time."""
    if not offered or not secret:
        return False
    expected = handshake_digest(stream_id, secret).encode()
    return hmac.compare_digest(expected, offered.strip().lower().encode("utf-8", "replace"))


def peer_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    """Loopback peers always; others only when an entry of `[plugins].allowed_peers` contains them."""
    if is_loopback(address):
        return True
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return any(peer in ipaddress.ip_network(network, strict=False) for network in allowed)
