"""The one way to reach another entity's session: `deliver(full JID, stanza)`.

A session on this node gets the stanza now; the cluster issue adds the node that holds it (a NATS request);
what nobody holds is the caller's to treat per RFC 6121 §8 (offline storage or bounce), told by False.
"""

from __future__ import annotations

import logging
from typing import Protocol

from lxml import etree

from nitro.core.sessions import BoundSession
from nitro.xmpp.jid import JID

log = logging.getLogger(__name__)


class _Registry(Protocol):
    def get(self, full: JID) -> BoundSession | None: ...


class Delivery:
    """Delivers stanzas to bound resources by full JID."""

    def __init__(self, sessions: _Registry) -> None:
        self._sessions = sessions

    def deliver(self, to: JID, stanza: etree._Element) -> bool:
        """Hand `stanza` to the resource bound to the full JID `to`; False if no node holds it."""
        session = self._sessions.get(to)
        if session is None:
            return False
        session.send(stanza)
        return True
