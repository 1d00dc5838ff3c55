"""What becomes of a stanza another node did not take (RFC 6121 §8): a message goes to the account's other
resources or to offline storage, an IQ get/set is answered service-unavailable, the rest is dropped."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lxml import etree

from nitro.core.router import StanzaEvent
from nitro.modules.message import deliver_to_bare
from nitro.storage.errors import StorageUnavailable
from nitro.xmpp.errors import StanzaError, error_reply
from nitro.xmpp.jid import JID

if TYPE_CHECKING:
    from nitro.core.context import Core

log = logging.getLogger(__name__)


async def undeliverable(core: Core, to: JID, stanza: etree._Element) -> None:
    """`to` (a full JID) is not on the node we sent it to, or that node did not answer."""
    kind = etree.QName(stanza).localname
    error: StanzaError | None = None
    if kind == "message":
        from_ = JID.parse(stanza.get("from") or core.domain)
        event = StanzaEvent(stanza, None, from_, to, "full", core)
        try:
            await deliver_to_bare(event, addressed_to_full=True)  # §8.5.3.2.1
        except StanzaError as exc:
            error = exc
        except StorageUnavailable as exc:
            log.warning("message for %s neither forwarded nor stored: %s", to, exc)
            error = StanzaError("internal-server-error", "offline storage is unavailable", type="wait")
    elif kind == "iq" and stanza.get("type") in ("get", "set"):
        error = StanzaError("service-unavailable")  # §8.5.3.1: no such resource (any more)
    if error is not None and stanza.get("type") != "error" and stanza.get("from"):
        await core.router.route(error_reply(stanza, error))
