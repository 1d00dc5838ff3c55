"""XML namespace names used across Nitro, in one place so a typo is a NameError, not a silent bug."""

from typing import Any

STREAM = "http://etherx.jabber.org/streams"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"  # RFC 7395 <open/> and <close/> over WebSocket
CLIENT = "jabber:client"
SERVER = "jabber:server"
COMPONENT = "jabber:component:accept"
XML = "http://www.w3.org/XML/1998/namespace"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
ROSTER = "jabber:iq:roster"
ROSTER_VER = "urn:xmpp:features:rosterver"
PRE_APPROVAL = "urn:xmpp:features:pre-approval"
REGISTER = "jabber:iq:register"
REGISTER_FEATURE = "http://jabber.org/features/iq-register"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
CAPS = "http://jabber.org/protocol/caps"
PING = "urn:xmpp:ping"
VERSION = "jabber:iq:version"
TIME = "urn:xmpp:time"
DELAY = "urn:xmpp:delay"
OFFLINE = "msgoffline"
COMMANDS = "http://jabber.org/protocol/commands"
ADMIN = "http://jabber.org/protocol/admin"
DATA_FORMS = "jabber:x:data"


def default_ns(uri: str) -> Any:
    """An lxml `nsmap` that makes `uri` the default namespace (lxml-stubs cannot type the None key)."""
    return {None: uri}
