"""The stream features a negotiation sends (nitro/c2s/negotiation_xml.py), sans-IO: each stream gets a tree of
its own, which modules then add to, whatever the streams before it got."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.c2s.negotiation_xml import binding_features, negotiation_features
from nitro.xmpp.stanza import child

STREAM = "xmlns:stream='http://etherx.jabber.org/streams'"
TLS = "xmlns='urn:ietf:params:xml:ns:xmpp-tls'"
SASL = "xmlns='urn:ietf:params:xml:ns:xmpp-sasl'"
MECHANISMS = (
    f"<mechanisms {SASL}><mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>"
)


def canonical(xml: str | etree._Element) -> bytes:
    element = etree.fromstring(xml) if isinstance(xml, str) else xml
    return etree.tostring(element, method="c14n")


@pytest.mark.parametrize(
    ("starttls", "required", "expected"),
    [
        (True, True, f"<stream:features {STREAM}><starttls {TLS}><required/></starttls></stream:features>"),
        (True, False, f"<stream:features {STREAM}><starttls {TLS}/>{MECHANISMS}</stream:features>"),
        (False, False, f"<stream:features {STREAM}>{MECHANISMS}</stream:features>"),
    ],
)
def test_features_before_authentication(starttls: bool, required: bool, expected: str) -> None:
    mechanisms = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
    first = negotiation_features(starttls=starttls, tls_required=required, mechanisms=mechanisms)
    assert canonical(first) == canonical(expected)
    child(first, "urn:xmpp:sm:3", "sm")  # a module adds to this stream's features
    first.remove(first[0])
    again = negotiation_features(starttls=starttls, tls_required=required, mechanisms=list(mechanisms))
    assert canonical(again) == canonical(expected)  # the next stream's are untouched
    assert again is not first


def test_the_mechanisms_offered_are_the_ones_asked_for() -> None:
    plain = negotiation_features(starttls=False, tls_required=False, mechanisms=["SCRAM-SHA-1", "PLAIN"])
    names = [mechanism.text for mechanism in plain.iter("{urn:ietf:params:xml:ns:xmpp-sasl}mechanism")]
    assert names == ["SCRAM-SHA-1", "PLAIN"]


def test_features_after_authentication_are_a_tree_of_each_streams_own() -> None:
    expected = (
        f"<stream:features {STREAM}><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
        "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>"
    )
    first = binding_features()
    assert canonical(first) == canonical(expected)
    child(first, "urn:xmpp:sm:3", "sm")
    first[1].clear()
    assert canonical(binding_features()) == canonical(expected)
