"""Private XML Storage (XEP-0049 v1.2): a user keeps XML fragments on the server, one per element name and
namespace, that only the user may read or write; `[pep].max_item_bytes` bounds each fragment and
`[private].max_namespaces` how many an account keeps.
"""

from __future__ import annotations

import copy

from lxml import etree

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.storage.errors import NoSuchAccount, QuotaExceeded
from nitro.xmpp import ns
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.stanza import element, iq_result

PRIVATE = "jabber:iq:private"

# §2.3: a fragment is "scoped by its own namespace"; the stanza namespaces and this protocol's are not one.
_RESERVED = frozenset({"", ns.CLIENT, ns.SERVER, PRIVATE})

# Stored fragments are our own serialization; still, parsing never reaches the network or expands entities.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _fragments(query: etree._Element) -> list[etree._Element]:
    """§2.3: at least one child, each with a proper namespace (else not-acceptable), all the same one."""
    fragments = [node for node in query if isinstance(node.tag, str)]
    if not fragments:
        raise StanzaError("not-acceptable", "name the element to store or retrieve (XEP-0049 §2.3)")
    namespaces = {etree.QName(node).namespace or "" for node in fragments}
    if namespaces & _RESERVED:
        raise StanzaError("not-acceptable", "private XML needs a namespace of its own (XEP-0049 §2.3)")
    if len(namespaces) > 1:
        raise StanzaError("not-acceptable", "one namespace per request (XEP-0049 §2.3)")
    return fragments


def load(module: Module) -> None:
    server = module.server
    store = server.storage.private
    module.add_feature(PRIVATE)

    def username_of(event: StanzaEvent) -> str:
        owner = event.to.bare if event.to is not None else event.from_.bare
        if owner != event.from_.bare:  # §2.3: forbidden (preferred to service-unavailable)
            raise StanzaError("forbidden", "private XML belongs to its owner alone")
        assert owner.local is not None
        return owner.local

    async def on_get(event: StanzaEvent) -> bool:
        """§2.3: the stored fragment, or the empty element asked for when nothing is stored."""
        username = username_of(event)
        fragments = _fragments(event.stanza[0])
        if len(fragments) != 1:
            raise StanzaError("bad-request", "ask for one element per get (XEP-0049 §2.3)")
        asked = fragments[0]
        stored = await store.get(username, asked.tag)
        query = element(PRIVATE, "query")
        if stored is not None:
            query.append(etree.fromstring(stored, _PARSER))
        else:
            empty = copy.deepcopy(asked)
            empty.clear()
            empty.tail = None
            query.append(empty)
        await event.reply(iq_result(event.stanza, query))
        return True

    async def on_set(event: StanzaEvent) -> bool:
        username = username_of(event)
        fragments = _fragments(event.stanza[0])
        limit = server.config.pep.max_item_bytes
        stored = [(node.tag, etree.tostring(node, encoding="utf-8", with_tail=False)) for node in fragments]
        for key, data in stored:
            if len(data) > limit:
                raise StanzaError("not-acceptable", f"{key} is {len(data)} bytes, at most {limit} are stored")
        quota = server.config.private.max_namespaces or None
        try:
            for key, data in stored:
                await store.set(username, key, data, max_keys=quota)
        except QuotaExceeded as exc:  # a local policy (RFC 6120 §8.3.3.12); the elements before it are kept
            raise StanzaError(
                "policy-violation", f"an account stores at most {quota} private elements"
            ) from exc
        except NoSuchAccount as exc:
            raise StanzaError("item-not-found", "no such account") from exc
        await event.reply(iq_result(event.stanza))
        return True

    for to_type in ("self", "bare"):
        module.hook(f"iq-get/{to_type}/{PRIVATE}:query", on_get)
        module.hook(f"iq-set/{to_type}/{PRIVATE}:query", on_set)
