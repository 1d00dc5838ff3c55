"""vcard-temp (XEP-0054 v1.2): each account stores one vCard, which anyone may read.

`[vcard].max_bytes` bounds what is stored; the stream's stanza limit already stops anything much larger.
"""

from __future__ import annotations

from lxml import etree

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.storage.errors import NoSuchAccount
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.stanza import element, iq_result

VCARD = "vcard-temp"

# Stored vCards are our own serialization; still, parsing never reaches the network or expands entities.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def load(module: Module) -> None:
    server = module.server
    store = server.storage.vcards
    module.add_feature(VCARD)  # XEP-0054 §4

    async def on_get(event: StanzaEvent) -> bool:
        """§3.1 (one's own: an empty <vCard/> when none is stored) and §3.3 (another user's: an error,
        service-unavailable whether the vCard or the account is missing, which reveals neither)."""
        owner = event.to.bare if event.to is not None else event.from_.bare
        assert owner.local is not None
        stored = await store.get(owner.local)
        if stored is not None:
            vcard = etree.fromstring(stored, _PARSER)
        elif owner == event.from_.bare:
            vcard = element(VCARD, "vCard")
        else:
            raise StanzaError("service-unavailable", "no vCard")
        await event.reply(iq_result(event.stanza, vcard))
        return True

    async def on_set(event: StanzaEvent) -> bool:
        """§3.2: the user replaces the whole vCard. XEP-0054 has no delete: an empty vCard is stored as set,
        and others then read that empty vCard rather than an error (as Prosody and ejabberd do)."""
        owner = event.to.bare if event.to is not None else event.from_.bare
        if owner != event.from_.bare:
            raise StanzaError("forbidden", "a vCard is set by its owner only")  # §3.2
        assert owner.local is not None
        vcard = next(node for node in event.stanza if isinstance(node.tag, str))
        data = etree.tostring(vcard, encoding="utf-8", with_tail=False)
        limit = server.config.vcard.max_bytes
        if len(data) > limit:
            raise StanzaError("not-acceptable", f"the vCard is {len(data)} bytes, at most {limit} are stored")
        try:
            await store.set(owner.local, data)
        except NoSuchAccount as exc:
            raise StanzaError("item-not-found", "no such account") from exc
        await event.reply(iq_result(event.stanza))
        return True

    for to_type in ("self", "bare"):
        module.hook(f"iq-get/{to_type}/{VCARD}:vCard", on_get)
        module.hook(f"iq-set/{to_type}/{VCARD}:vCard", on_set)
