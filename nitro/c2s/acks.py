"""Stream Management nonzas on a bound session (XEP-0198 §3, §4): enable, `<r/>`, `<a/>`, and a resume
on a stream that already has a session. The transition table of nitro/c2s/session.py names these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from lxml import etree

from nitro.core.context import Session
from nitro.core.module import SessionEvent
from nitro.xmpp.errors import StreamError
from nitro.xmpp.sm import SmState, enabled, failed, parse_h

if TYPE_CHECKING:
    from nitro.core.context import Core


class ManagedSession(Session, Protocol):
    """The bound session (nitro/c2s/session.py) as these handlers use it: its XEP-0198 state is settable."""

    sm: SmState | None  # read-only for modules, set here by <enable/>

    @property
    def server(self) -> Core: ...

    def answer_ack_request(self) -> None: ...


async def enable(session: ManagedSession, element: etree._Element) -> bool:
    """§3: counting starts with `<enabled/>`; resume='true' lets the session outlive its connection."""
    if session.sm is not None:
        session.write_element(failed("unexpected-request", "stream management is already enabled"))
        return False
    if not session.server.bus.has("sm-enabled"):  # the stream_management module is not loaded
        session.write_element(failed("service-unavailable", "stream management is not offered"))
        return False
    timeout = session.server.config.stream_management.resume_timeout
    requested = element.get("max") or ""
    if requested.isascii() and requested.isdigit() and int(requested) > 0:
        timeout = min(timeout, float(requested))  # §3: the client's preferred maximum
    session.sm = SmState.start(resume=element.get("resume") in ("true", "1"), resume_timeout=timeout)
    session.write_element(enabled(session.sm))  # nothing awaited in between: no stanza slips in uncounted
    session.log.debug("stream management enabled%s", " (resumable)" if session.sm.resumable else "")
    await session.server.bus.fire("sm-enabled", SessionEvent(session))
    return False


async def request(session: ManagedSession, _element: etree._Element) -> bool:
    """§4: `<r/>` is answered with the count of stanzas handled so far (once what they stored is durable)."""
    _managed(session)
    session.answer_ack_request()
    return False


async def acknowledge(session: ManagedSession, element: etree._Element) -> bool:
    """§4: `<a h/>` releases the stanzas it covers; an impossible 'h' ends the stream."""
    _managed(session).acknowledge(parse_h(element.get("h")))
    return False


def _managed(session: ManagedSession) -> SmState:
    if session.sm is None:
        raise StreamError("unsupported-stanza-type", "stream management is not enabled (XEP-0198 §3)")
    return session.sm


async def resume_bound(session: ManagedSession, _element: etree._Element) -> bool:
    session.write_element(failed("unexpected-request", "this stream already has a session"))
    return False
