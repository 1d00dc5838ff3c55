"""The DEBUG trace of a client stream: each element read (`<<`) and written (`>>`), under its session, cut at
MAX_CHARS, with credentials redacted (SASL payloads, XEP-0077 passwords). Logger `nitro.trace`, so that it can
be turned on alone: `logging.getLogger("nitro.trace").setLevel(logging.DEBUG)`.

Every transport traces what it writes with `written`; `nitro.c2s.driver` traces what every stream reads.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Final

from lxml import etree

from nitro.observe.logs import SessionLog
from nitro.xmpp import ns
from nitro.xmpp.xmlstream import StanzaReceived, StreamClosed, StreamEvent, StreamOpened

TRACE: Final = logging.getLogger("nitro.trace")
MAX_CHARS: Final = 2000
REDACTED: Final = "[redacted]"

_SASL_WITH_DATA: Final = frozenset(
    f"{{{ns.SASL}}}{name}" for name in ("auth", "response", "challenge", "success")
)
_REGISTER_PASSWORD: Final = f"{{{ns.REGISTER}}}password"
_FORM_FIELD: Final = f"{{{ns.DATA_FORMS}}}field"
_FORM_VALUE: Final = f"{{{ns.DATA_FORMS}}}value"


def enabled() -> bool:
    return TRACE.isEnabledFor(logging.DEBUG)


def read(extra: Mapping[str, object] | None, event: StreamEvent) -> None:
    """Trace one event read from the client (call only when `enabled()`)."""
    match event:
        case StanzaReceived(element):
            text = render(element)
        case StreamOpened():
            text = f"<stream:stream to={event.to!r} version={event.version!r} xml:lang={event.lang!r}>"
        case StreamClosed():
            text = "</stream:stream>"
    SessionLog(TRACE, extra).debug("<< %s", text)


def written(extra: Mapping[str, object] | None, element: etree._Element) -> None:
    """Trace one element written to the client (call only when `enabled()`)."""
    SessionLog(TRACE, extra).debug(">> %s", render(element))


def render(element: etree._Element) -> str:
    text = etree.tostring(redacted(element), encoding="unicode", with_tail=False)
    if len(text) > MAX_CHARS:
        return f"{text[:MAX_CHARS]}… ({len(text)} characters)"
    return text


def redacted(element: etree._Element) -> etree._Element:
    """`element`, or a copy without the credentials it carries: the base64 of SASL exchanges (RFC 6120 §6.4;
    PLAIN's is the password), and passwords of in-band registration or password change (XEP-0077 §3, §3.3,
    as a `<password/>` or as a data form field)."""
    if element.tag in _SASL_WITH_DATA:
        if not (element.text or "").strip():
            return element
        scrubbed = copy.copy(element)
        scrubbed.text = REDACTED
        return scrubbed
    if next(element.iter(_REGISTER_PASSWORD), None) is None and not _has_password_field(element):
        return element
    scrubbed = copy.copy(element)
    for password in scrubbed.iter(_REGISTER_PASSWORD):
        password.text = REDACTED
    for field in scrubbed.iter(_FORM_FIELD):
        if field.get("var") == "password":
            for value in field.iter(_FORM_VALUE):
                value.text = REDACTED
    return scrubbed


def _has_password_field(element: etree._Element) -> bool:
    return any(field.get("var") == "password" for field in element.iter(_FORM_FIELD))
