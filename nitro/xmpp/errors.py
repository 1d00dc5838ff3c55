"""Protocol errors that carry their wire form: stream errors (RFC 6120 §4.9) and stanza errors (§8.3); and
the stream error for what libxml2 only logged while parsing (`logged_error`)."""

from __future__ import annotations

from typing import Literal, get_args

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.ns import default_ns

StreamCondition = Literal[
    "bad-format",
    "bad-namespace-prefix",
    "conflict",
    "connection-timeout",
    "host-gone",
    "host-unknown",
    "improper-addressing",
    "internal-server-error",
    "invalid-from",
    "invalid-namespace",
    "invalid-xml",
    "not-authorized",
    "not-well-formed",
    "policy-violation",
    "remote-connection-failed",
    "reset",
    "resource-constraint",
    "restricted-xml",
    "see-other-host",
    "system-shutdown",
    "undefined-condition",
    "unsupported-encoding",
    "unsupported-feature",
    "unsupported-stanza-type",
    "unsupported-version",
]

StanzaCondition = Literal[
    "bad-request",
    "conflict",
    "feature-not-implemented",
    "forbidden",
    "gone",
    "internal-server-error",
    "item-not-found",
    "jid-malformed",
    "not-acceptable",
    "not-allowed",
    "not-authorized",
    "policy-violation",
    "recipient-unavailable",
    "redirect",
    "registration-required",
    "remote-server-not-found",
    "remote-server-timeout",
    "resource-constraint",
    "service-unavailable",
    "subscription-required",
    "undefined-condition",
    "unexpected-request",
]

ErrorType = Literal["auth", "cancel", "continue", "modify", "wait"]

# RFC 6120 §8.3.3: the error type each defined condition usually carries.
_DEFAULT_TYPE: dict[str, ErrorType] = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}
assert set(_DEFAULT_TYPE) == set(get_args(StanzaCondition))


def default_type(condition: StanzaCondition) -> ErrorType:
    """RFC 6120 §8.3.3: the error type `condition` usually carries."""
    return _DEFAULT_TYPE[condition]


class StreamError(Exception):
    """A fatal stream-level error: the peer gets `<stream:error>` and the stream is closed."""

    def __init__(self, condition: StreamCondition, text: str | None = None) -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition: StreamCondition = condition
        self.text = text

    @property
    def described(self) -> str:
        """The condition and text, as logs show them."""
        return f"<{self.condition}/> {self.text}" if self.text else f"<{self.condition}/>"

    def to_element(self) -> etree._Element:
        error = etree.Element(f"{{{ns.STREAM}}}error", nsmap={"stream": ns.STREAM})
        etree.SubElement(error, f"{{{ns.STREAM_ERRORS}}}{self.condition}", nsmap=default_ns(ns.STREAM_ERRORS))
        if self.text:
            text = etree.SubElement(error, f"{{{ns.STREAM_ERRORS}}}text")
            text.text = self.text
        return error


class StanzaError(Exception):
    """An error for one stanza: the sender gets an error reply; the stream goes on."""

    def __init__(
        self,
        condition: StanzaCondition,
        text: str | None = None,
        *,
        type: ErrorType | None = None,  # the RFC names the attribute "type"
        app_condition: etree._Element | None = None,
    ) -> None:
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition: StanzaCondition = condition
        self.text = text
        self.type: ErrorType = type or _DEFAULT_TYPE[condition]
        self.app_condition = app_condition

    def to_element(self, content_ns: str = ns.CLIENT) -> etree._Element:
        """The `<error/>` child (RFC 6120 §8.3.2) for a stanza in `content_ns`."""
        error = etree.Element(f"{{{content_ns}}}error", type=self.type)
        etree.SubElement(error, f"{{{ns.STANZA_ERRORS}}}{self.condition}", nsmap=default_ns(ns.STANZA_ERRORS))
        if self.text:
            text = etree.SubElement(error, f"{{{ns.STANZA_ERRORS}}}text")
            text.text = self.text
        if self.app_condition is not None:
            error.append(self.app_condition)
        return error


def error_reply(stanza: etree._Element, error: StanzaError) -> etree._Element:
    """The error reply to `stanza` (RFC 6120 §8.3.1): swapped addresses, same id, type='error'.

    The original payload is not echoed back, which the RFC allows and which keeps replies small.
    """
    namespace = etree.QName(stanza).namespace or ns.CLIENT
    reply = etree.Element(etree.QName(stanza).text)
    if (sender := stanza.get("from")) is not None:
        reply.set("to", sender)
    if (recipient := stanza.get("to")) is not None:
        reply.set("from", recipient)
    if (stanza_id := stanza.get("id")) is not None:
        reply.set("id", stanza_id)
    reply.set("type", "error")
    reply.append(error.to_element(namespace))
    return reply


def logged_error(error_log: etree._ListErrorLog) -> StreamError | None:
    """The stream error for what libxml2 logged while parsing (some errors are only logged, not raised)."""
    for entry in error_log:
        if "UNDECLARED_ENTITY" in entry.type_name:  # RFC 6120 §11.1: only the five predefined entities
            return StreamError("restricted-xml", f"entity reference: {entry.message}")
        if entry.type_name == "NS_ERR_UNDEFINED_NAMESPACE":  # RFC 6120 §4.9.3.2
            return StreamError("bad-namespace-prefix", entry.message)
        if entry.type_name == "ERR_RESOURCE_LIMIT":  # libxml2's own depth and length limits
            return StreamError("policy-violation", entry.message)
        if entry.level > etree.ErrorLevels.WARNING:  # warnings include relative URIs like vcard-temp
            return StreamError(
                "not-well-formed", f"{entry.message} (line {entry.line}, column {entry.column})"
            )
    return None
