"""systemd's notify protocol (sd_notify(3)) for `Type=notify`: READY=1, RELOADING=1, MAINPID=… as one
datagram to $NOTIFY_SOCKET; nothing at all when systemd did not start us."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> bool:
    """Send `assignments` (e.g. "READY=1") to systemd; False when there is no socket or sending failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True
