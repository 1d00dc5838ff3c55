"""The XML of a stream's negotiation (nitro/c2s/negotiation.py): the stream features it sends (RFC 6120
§4.3.2) before and after authentication, SASL's `<challenge/>`, `<success/>` and `<failure/>` (§6.4), and
what it reads from a header's 'to', an IQ's payload and a bind request (§7).
"""

from __future__ import annotations

import copy
import functools
import secrets
from collections.abc import Sequence

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.jid import JID, InvalidJID


def negotiation_features(*, starttls: bool, tls_required: bool, mechanisms: Sequence[str]) -> etree._Element:
    """Before authentication: STARTTLS if offered — alone while TLS is required (§5.3.1) — and SASL's
    mechanisms. A copy of its own each time (modules add to it): copying a tree built once costs a tenth of
    building it."""
    return copy.copy(_negotiation_features(starttls, tls_required, tuple(mechanisms)))


@functools.lru_cache(maxsize=16)
def _negotiation_features(starttls: bool, tls_required: bool, mechanisms: tuple[str, ...]) -> etree._Element:
    features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
    if starttls:
        offer = etree.SubElement(features, f"{{{ns.TLS}}}starttls", nsmap=ns.default_ns(ns.TLS))
        if tls_required:
            etree.SubElement(offer, f"{{{ns.TLS}}}required")
            return features
    mechs = etree.SubElement(features, f"{{{ns.SASL}}}mechanisms", nsmap=ns.default_ns(ns.SASL))
    for name in mechanisms:
        etree.SubElement(mechs, f"{{{ns.SASL}}}mechanism").text = name
    return features


def binding_features() -> etree._Element:
    """After authentication: resource binding (§7) and RFC 3921's session, optional (a no-op here); a copy of
    its own each time, as above."""
    return copy.copy(_BINDING_FEATURES)


def _binding_features() -> etree._Element:
    features = etree.Element(f"{{{ns.STREAM}}}features", nsmap={"stream": ns.STREAM})
    etree.SubElement(features, f"{{{ns.BIND}}}bind", nsmap=ns.default_ns(ns.BIND))
    session = etree.SubElement(features, f"{{{ns.SESSION}}}session", nsmap=ns.default_ns(ns.SESSION))
    etree.SubElement(session, f"{{{ns.SESSION}}}optional")
    return features


_BINDING_FEATURES = _binding_features()


def sasl_element(
    name: str, text: str | None = None, *, condition: str = "", reason: str | None = None
) -> etree._Element:
    """`<NAME xmlns=SASL>`: with base64 `text` (challenge, success), or a failure's `condition` and its
    human-readable `reason`."""
    element = etree.Element(f"{{{ns.SASL}}}{name}", nsmap=ns.default_ns(ns.SASL))
    if condition:
        etree.SubElement(element, f"{{{ns.SASL}}}{condition}")
        if reason:
            etree.SubElement(element, f"{{{ns.SASL}}}text").text = reason
    elif text is not None:
        element.text = text
    return element


def iq_payload(element: etree._Element) -> etree.QName | None:
    """The name of an IQ's one child element (None if it has none or several)."""
    children = [child for child in element if isinstance(child.tag, str)]
    return etree.QName(children[0]) if len(children) == 1 else None


def domain_of(text: str) -> str | None:
    """The domain of a stream header's 'to' (None if it is no JID)."""
    try:
        return JID.parse(text).domain
    except InvalidJID:
        return None


def bound_jid(username: str, domain: str, iq: etree._Element) -> JID:
    """The full JID a bind request asks for (§7.6): its resource, or one the server picks when it names
    none (§7.6.2.1). Raises InvalidJID for a resource that is not allowed."""
    requested = (iq.findtext(f"{{{ns.BIND}}}bind/{{{ns.BIND}}}resource") or "").strip()
    jid = JID.make(username, domain, requested or None)
    return jid if jid.resource is not None else jid.with_resource(f"nitro-{secrets.token_hex(6)}")
