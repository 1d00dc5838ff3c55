"""PubSub (XEP-0060) pieces PEP needs, free of I/O: requests, access checks, item and event elements, and
the XEP-0115 verification string that lets a client's caps be trusted (and cached) for its `+notify`
interests. Node configuration forms are in pubsub_config.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lxml import etree

from nitro.storage.models import PepItem, PepNode, RosterItem
from nitro.xmpp import ns
from nitro.xmpp.errors import ErrorType, StanzaCondition, StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.stanza import child, element, stanza

PUBSUB = "http://jabber.org/protocol/pubsub"
OWNER = f"{PUBSUB}#owner"
EVENT = f"{PUBSUB}#event"
ERRORS = f"{PUBSUB}#errors"
PUBLISH_OPTIONS = f"{PUBSUB}#publish-options"
NODE_CONFIG = f"{PUBSUB}#node_config"

# XEP-0163 §6.1: what an account's disco#info shows next to the pubsub/pep identity (XEP-0060 §10).
FEATURES = tuple(
    f"{PUBSUB}#{name}"
    for name in (
        "access-open",
        "access-presence",
        "access-whitelist",
        "auto-create",
        "auto-subscribe",
        "config-node",
        "create-and-configure",
        "create-nodes",
        "delete-nodes",
        "filtered-notifications",
        "last-published",
        "modify-affiliations",
        "persistent-items",
        "publish",
        "publish-options",
        "retract-items",
        "retrieve-affiliations",
        "retrieve-default",
        "retrieve-items",
    )
)
MAX_NAME_BYTES = 1023  # node names and item ids, as long as a JID part may be (RFC 7622 §3)
SHARES_PRESENCE = frozenset({"from", "both"})  # RFC 6121 §3: the contact sees the owner's presence

# The payload was serialized by us from a parsed stanza; still, parsing never reaches the network.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def pubsub_error(
    condition: StanzaCondition,
    app_condition: str | None,
    text: str | None = None,
    *,
    feature: str | None = None,
    type: ErrorType | None = None,  # the RFC's name for the attribute
) -> StanzaError:
    """A stanza error with a pubsub-specific condition (XEP-0060 §7.1.3 and friends)."""
    app = None
    if app_condition is not None:
        app = element(ERRORS, app_condition)
        if feature is not None:
            app.set("feature", feature)
    return StanzaError(condition, text, type=type, app_condition=app)


def unsupported(feature: str, text: str | None = None) -> StanzaError:
    """XEP-0060 §6.1.3.9 and the like: `<feature-not-implemented/>` + `<unsupported feature='…'/>`."""
    return pubsub_error("feature-not-implemented", "unsupported", text, feature=feature)


# -- requests (XEP-0060 §6.5, §7.1, §7.2, §8) ------------------------------------------------------------


def elements(parent: etree._Element) -> list[etree._Element]:
    return [node for node in parent if isinstance(node.tag, str)]


def checked_name(value: str | None, what: str, missing: StanzaError) -> str:
    if not value:
        raise missing
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise StanzaError("not-acceptable", f"the {what} is longer than {MAX_NAME_BYTES} bytes")
    return value


def node_name(request: etree._Element) -> str:
    """The node a request is about: §6.5.9, §7.1.3.3, §7.2.3.3 (nodeid-required when missing)."""
    missing = pubsub_error("bad-request", "nodeid-required", "the request names no node")
    return checked_name(request.get("node"), "node name", missing)


@dataclass(frozen=True, slots=True)
class Publication:
    """A checked `<publish/>`: one item with one payload (§7.1.1)."""

    node: str
    item_id: str
    payload: bytes


def parse_publish(publish: etree._Element, max_bytes: int) -> Publication:
    """§7.1.3.4 to §7.1.3.6: one item, one payload of at most `max_bytes`; an id made up if none is given."""
    name = node_name(publish)
    items = list(publish.iterchildren(f"{{{PUBSUB}}}item"))
    if len(items) != 1:  # §7.1.3.6; batches were removed from XEP-0060
        raise pubsub_error("bad-request", "item-required", "publish exactly one <item/>")
    payloads = elements(items[0])
    if not payloads:
        raise pubsub_error("bad-request", "payload-required", "the item has no payload")
    if len(payloads) > 1:
        raise pubsub_error("bad-request", "invalid-payload", "one payload element per item")
    payload = serialize_payload(payloads[0])
    if len(payload) > max_bytes:
        raise pubsub_error(
            "not-acceptable", "payload-too-big", f"the payload is {len(payload)} bytes, at most {max_bytes}"
        )
    item_id = items[0].get("id")
    if item_id is None:
        return Publication(name, new_item_id(), payload)
    return Publication(
        name, checked_name(item_id, "item id", StanzaError("bad-request", "empty id")), payload
    )


def denial(owner: JID, node: PepNode, reader: JID, item: RosterItem | None) -> StanzaError | None:
    """§6.5.9 (and §4.5): why `reader` may not read `node`, given the owner's roster item for it."""
    if reader.bare == owner or node.access_model == "open":
        return None
    if node.access_model == "presence":
        if item is not None and item.subscription in SHARES_PRESENCE:
            return None
        return pubsub_error("not-authorized", "presence-subscription-required", type="auth")
    if node.access_model == "whitelist":
        if str(reader.bare) in node.whitelist:
            return None
        return pubsub_error("not-allowed", "closed-node", type="cancel")
    return pubsub_error("not-authorized", "not-in-roster-group", type="auth")  # never configured here


def with_affiliations(node: PepNode, owner: JID, request: etree._Element) -> PepNode:
    """§8.9.2: 'member' puts a JID on the whitelist, 'none' takes it off; the owner stays owner."""
    whitelist = set(node.whitelist)
    for affiliation in request.iterchildren(f"{{{OWNER}}}affiliation"):
        try:
            jid = JID.parse(affiliation.get("jid") or "").bare
        except InvalidJID as exc:
            raise StanzaError("jid-malformed", str(exc)) from exc
        value = affiliation.get("affiliation")
        if jid == owner:
            if value != "owner":
                raise StanzaError("not-acceptable", "the owner of a PEP node stays its owner")
        elif value == "member":
            whitelist.add(str(jid))
        elif value == "none":
            whitelist.discard(str(jid))
        else:
            raise StanzaError("not-acceptable", f"affiliation {value!r} is not supported (member or none)")
    return dataclasses.replace(node, whitelist=tuple(sorted(whitelist)))


# -- items and notifications (XEP-0060 §4.3, §7.1.2, §7.2.2.1, §8.4.2) ----------------------------------


def new_item_id() -> str:
    """XEP-0060 §7.1.2: the service generates an ItemID when the publisher gives none."""
    return secrets.token_hex(8)


def serialize_payload(payload: etree._Element) -> bytes:
    """One payload element as self-contained XML, as PepItem stores it."""
    return etree.tostring(payload, encoding="utf-8", with_tail=False)


def item_element(namespace: str, item: PepItem) -> etree._Element:
    """`<item id='…'>payload</item>` in `namespace` (pubsub for results, pubsub#event for notifications)."""
    node = element(namespace, "item", id=item.id)
    node.append(etree.fromstring(item.payload, _PARSER))
    return node


def items_element(namespace: str, node: str, items: Iterable[PepItem]) -> etree._Element:
    wrapper = element(namespace, "items", node=node)
    for item in items:
        wrapper.append(item_element(namespace, item))
    return wrapper


def retract_event(node: str, item_ids: Sequence[str]) -> etree._Element:
    """XEP-0060 §7.2.2.1: `<items node='…'><retract id='…'/></items>` in pubsub#event."""
    wrapper = element(EVENT, "items", node=node)
    for item_id in item_ids:
        child(wrapper, EVENT, "retract", id=item_id)
    return wrapper


def delete_event(node: str) -> etree._Element:
    """XEP-0060 §8.4.2: `<delete node='…'/>` in pubsub#event."""
    return element(EVENT, "delete", node=node)


def event_message(owner: str, to: str, content: etree._Element) -> etree._Element:
    """A notification (XEP-0163 §4.3.1): from the owner's bare JID, type headline, one `<event/>`."""
    message = stanza("message", from_=owner, to=to, type="headline", id=f"pep-{secrets.token_hex(6)}")
    event = child(message, EVENT, "event")
    event.append(content)
    return message


# -- XEP-0115 §5: which caps answers may be cached under their verification string ----------------------

_HASHES = {
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}
_DISCO_INFO = f"{{{ns.DISCO_INFO}}}"
_X = f"{{{ns.DATA_FORMS}}}"
_LANG = f"{{{ns.XML}}}lang"


def supported_hash(name: str | None) -> bool:
    return name in _HASHES


def notify_interests(query: etree._Element) -> frozenset[str]:
    """XEP-0163 §4.2: the nodes a disco#info answer asks notifications for (features `<node>+notify`)."""
    return frozenset(
        var[: -len("+notify")]
        for feature in query.iterchildren(f"{_DISCO_INFO}feature")
        if (var := feature.get("var") or "").endswith("+notify") and len(var) > len("+notify")
    )


def verification_string(query: etree._Element, hash_name: str) -> str | None:
    """XEP-0115 §5.1/§5.4 ver of a disco#info `<query/>`; None if the answer breaks the §5.4 rules."""
    algorithm = _HASHES.get(hash_name)
    if algorithm is None:
        return None
    # §5.1 step 2: sorted by category, then type, then xml:lang (the name breaks remaining ties)
    identities = sorted(
        (i.get("category") or "", i.get("type") or "", i.get(_LANG) or "", i.get("name") or "")
        for i in query.iterchildren(f"{_DISCO_INFO}identity")
    )
    features = [f.get("var") or "" for f in query.iterchildren(f"{_DISCO_INFO}feature")]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        return None  # §5.4 step 3.3, 3.4: duplicates make the answer unverifiable
    forms: dict[str, str] = {}
    for x in query.iterchildren(f"{_X}x"):
        fields = {
            f.get("var") or "": [v.text or "" for v in f.iterchildren(f"{_X}value")]
            for f in x.iterchildren(f"{_X}field")
        }
        form_type = next((f for f in x.iterchildren(f"{_X}field") if f.get("var") == "FORM_TYPE"), None)
        if form_type is None or form_type.get("type") != "hidden":
            continue  # §5.4 step 3.6: forms without a hidden FORM_TYPE are ignored
        types = fields.pop("FORM_TYPE")
        if len(types) != 1 or types[0] in forms:
            return None  # §5.4 step 3.5: one FORM_TYPE value, each FORM_TYPE once
        text = f"{types[0]}<"
        for var in sorted(fields):
            text += f"{var}<" + "".join(f"{value}<" for value in sorted(fields[var]))
        forms[types[0]] = text
    text = "".join("/".join(identity) + "<" for identity in identities)
    text += "".join(f"{feature}<" for feature in sorted(features))
    text += "".join(forms[form_type] for form_type in sorted(forms))
    digest = hashlib.new(algorithm, text.encode("utf-8"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")
