"""What a client stream can receive, named for the transition tables, and the states it goes through.

Pure: no I/O. The negotiation table (nitro/c2s/negotiation.py) and the bound session's table
(nitro/c2s/session.py) are keyed on `(State, input name)`.
"""

from __future__ import annotations

import enum

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.sm import SM


class State(enum.Enum):
    WAIT_HEADER = "wait-header"  # a (new) stream header is due
    NEGOTIATING = "negotiating"  # features sent; STARTTLS, SASL or in-band registration next
    SASL = "sasl"  # a SASL exchange is under way
    BINDING = "binding"  # authenticated; resource binding (or resumption) next
    ESTABLISHED = "established"  # bound: stanzas flow
    DETACHED = "detached"  # bound and resumable, connection lost: stanzas queue until resumed (XEP-0198 §5)
    CLOSED = "closed"


_STANZA_TAGS = frozenset({f"{{{ns.CLIENT}}}message", f"{{{ns.CLIENT}}}presence", f"{{{ns.CLIENT}}}iq"})
_NAMED = {
    f"{{{ns.TLS}}}starttls": "starttls",
    f"{{{ns.SASL}}}auth": "auth",
    f"{{{ns.SASL}}}response": "response",
    f"{{{ns.SASL}}}abort": "abort",
    f"{{{SM}}}enable": "sm-enable",
    f"{{{SM}}}resume": "sm-resume",
    f"{{{SM}}}r": "sm-request",
    f"{{{SM}}}a": "sm-ack",
}


def input_name(element: etree._Element) -> str:
    """The table's name for a top-level element: a protocol step, "bind", "stanza" or "nonza"."""
    named = _NAMED.get(element.tag)
    if named is not None:
        return named
    if element.tag in _STANZA_TAGS:
        return "bind" if _is_bind(element) else "stanza"
    return "nonza"


def counted(name: str) -> bool:
    """XEP-0198 §4 counts stanzas (a bind IQ is one)."""
    return name in ("stanza", "bind")


def _is_bind(element: etree._Element) -> bool:
    return element.get("type") == "set" and element.find(f"{{{ns.BIND}}}bind") is not None
