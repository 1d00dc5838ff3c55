"""A BOSH session in an upgrade: the old process exports its binding state with the bound ClientSession and
stops serving its sid; the successor restores it under the same sid, bound to the restored session, so the
client's next request (on a new HTTP connection) goes on where it left off, with or without XEP-0198.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nitro.core.events import EventKey
from nitro.transports.bosh_connection import BoshConnection

if TYPE_CHECKING:
    from nitro.c2s.session import ClientSession


@dataclass(slots=True)
class BoshArrival:
    """A session restored from another process with its BOSH state (`state`, from `hand_over`): the BOSH
    service takes it (`taken`), bound to `session` under its sid."""

    session: ClientSession
    state: dict[str, Any]
    taken: bool = False


@dataclass(frozen=True, slots=True)
class BoshWanted:
    """A request names `sid`, unknown here: an upgrade's predecessor may still hold it."""

    sid: str


# fired by nitro/ops/adopt.py, handled by the BOSH service (nitro/transports/bosh.py)
BOSH_ARRIVAL: EventKey[BoshArrival] = EventKey("upgrade-bosh-arrival")
# fired by the BOSH service; nitro/ops/successor.py claims it (True) while its predecessor may send the sid
BOSH_WANTED: EventKey[BoshWanted] = EventKey("upgrade-bosh-wanted")


def carried_by_bosh(session: ClientSession) -> bool:
    """The session's stream is a BOSH session (it moves in an upgrade even without stream management)."""
    return isinstance(session.transport, BoshConnection)


def settling(session: ClientSession) -> bool:
    """Its BOSH session is half way through a request: exporting it now would lose that request."""
    transport = session.transport
    return isinstance(transport, BoshConnection) and not transport.movable


def named(session: ClientSession, name: str) -> bool:
    """`name` (in a successor's `want`) names `session`: its XEP-0198 id, or the sid of its BOSH session."""
    transport = session.transport
    if isinstance(transport, BoshConnection) and transport.core.sid == name:
        return True
    return session.sm is not None and session.sm.id == name


def hand_over(session: ClientSession) -> dict[str, Any] | None:
    """The BOSH state to export with `session` (its held requests answered empty now, its sid served no
    more here); None when the session is not carried by BOSH. Call right before `session.hand_off`."""
    transport = session.transport
    return transport.hand_over() if isinstance(transport, BoshConnection) else None
