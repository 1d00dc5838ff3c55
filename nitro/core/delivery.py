"""The one way to reach another entity's session: `deliver(full JID, stanza)`.

A session on this node gets the stanza now; another node's resource through the cluster (a NATS request);
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


class RemoteDelivery(Protocol):
    """The cluster link (nitro/cluster/): takes a stanza for a resource another node holds."""

    def forward(self, to: JID, stanza: etree._Element) -> bool:
        """Queue it for the holding node (in order); False if no other node holds `to`."""
        ...


class Delivery:
    """Delivers stanzas to bound resources by full JID."""

    def __init__(self, sessions: _Registry) -> None:
        self._sessions = sessions
        self.remote: RemoteDelivery | None = None  # set while this node is a cluster member

    def deliver(self, to: JID, stanza: etree._Element) -> bool:
        """Hand `stanza` to the resource bound to the full JID `to`; False if no node holds it.

        For another node's resource True means "on its way": if that node does not confirm, the cluster
        stores the message offline or bounces it (RFC 6121 §8) itself.
        """
        session = self._sessions.get(to)
        if session is not None:
            session.send(stanza)
            return True
        return self.remote is not None and self.remote.forward(to, stanza)

    def deliver_local(self, to: JID, stanza: etree._Element) -> bool:
        """Only a session of this node (what another node's forwarded stanza is for)."""
        session = self._sessions.get(to)
        if session is None:
            return False
        session.send(stanza)
        return True
