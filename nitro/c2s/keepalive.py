"""Whether a bound client is still there: an idle client is pinged (XEP-0199 §4.2) and a quiet connection
gets a keepalive (RFC 6120 §4.6.1). No I/O and no clock of its own: the session passes the time and acts.
"""

from __future__ import annotations

import secrets
import time
from typing import Literal

from lxml import etree

from nitro.config import C2SSection
from nitro.xmpp import ns

Due = Literal["ping-timeout", "ping", "keepalive"]

_IQ = f"{{{ns.CLIENT}}}iq"


class Keepalive:
    """The times of the last read and write on a session's connection, and the ping it awaits an answer to."""

    __slots__ = ("_ping_id", "_timing", "last_read", "last_write", "ping_deadline")

    def __init__(self, settings: C2SSection) -> None:
        self._timing = settings
        self.last_read = self.last_write = time.monotonic()
        self.ping_deadline: float | None = None
        self._ping_id: str | None = None

    def activity(self) -> None:
        """The peer showed it is alive (any input, a WebSocket pong, a BOSH request)."""
        self.last_read = time.monotonic()
        self.ping_deadline = None

    def reset_timers(self) -> None:
        """A new connection (a resumed session): nothing read or written is overdue, no ping is awaited."""
        self.last_read = self.last_write = time.monotonic()
        self.ping_deadline = None
        self._ping_id = None

    def next_deadline(self) -> float:
        """The monotonic time at which `on_timer` must run next."""
        if self.ping_deadline is not None:
            return self.ping_deadline
        return min(
            self.last_read + self._timing.idle_ping_after, self.last_write + self._timing.keepalive_interval
        )

    def due(self, now: float) -> Due | None:
        """What is due at `now`: the awaited ping went unanswered, a ping, a keepalive, or nothing."""
        if self.ping_deadline is not None and now >= self.ping_deadline:
            return "ping-timeout"
        if self.ping_deadline is None and now >= self.last_read + self._timing.idle_ping_after:
            return "ping"
        if now >= self.last_write + self._timing.keepalive_interval:
            return "keepalive"
        return None

    def start_ping(self, now: float) -> str:
        """The id of a new ping, whose answer is due `ping_timeout` after `now`."""
        self._ping_id = f"ping-{secrets.token_hex(4)}"
        self.ping_deadline = now + self._timing.ping_timeout
        return self._ping_id

    def is_ping_reply(self, stanza: etree._Element) -> bool:
        """The client's answer to our ping (result or error); it is taken, not routed."""
        if self._ping_id is None or stanza.get("id") != self._ping_id or stanza.tag != _IQ:
            return False
        if stanza.get("type") not in ("result", "error"):
            return False
        self._ping_id = None
        return True
