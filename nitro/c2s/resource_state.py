"""The part of a bound session other users see: JID, presence, priority, directed presence, the flags
modules set, and the modules' typed slots — kept as one `Resource` value that is rebuilt when they change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from lxml import etree

from nitro.c2s.ack_gate import HeldAcks
from nitro.core.sessions import INTERESTED, LOCAL_NODE, Resource
from nitro.core.slots import SlotRegistry, SlotValues
from nitro.interned import Interned
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import parse_stanza
from nitro.xmpp.stanza import parse_kept
from nitro.xmpp.xmlwrite import self_contained

# Shared empty values: CPython makes a new 216-byte object for every `frozenset()`, two per session.
_NO_FLAGS: Final[frozenset[str]] = frozenset()
# Flag sets, shared: most sessions have the same few flags, and each frozenset is 216 bytes (idle memory).
_FLAG_SETS_KEPT = 1024
_FLAG_SETS: Interned[frozenset[str], frozenset[str]] = Interned(lambda flags: flags, kept=_FLAG_SETS_KEPT)
_NO_ONE: Final[frozenset[JID]] = frozenset()


class ResourceState(HeldAcks):
    """RFC 6121 state of one bound resource, and the modules' per-session slots. It extends HeldAcks (and
    through it Keepalive) only so that the session's attributes are one chain of __slots__ (two slotted
    bases cannot be combined); it neither uses nor initialises their parts (ClientSession does)."""

    __slots__ = (
        "_directed_to",
        "_flags",
        "_jid",
        "_on_flags",
        "_presence",
        "_priority",
        "_resource",
        "jid_text",
        "slots",
    )

    def __init__(self, jid: JID) -> None:
        self._jid = jid
        self.jid_text = str(jid)  # str(self.jid), computed once per change: every stanza is stamped
        self._priority = 0
        # The last available presence broadcast (`self_contained` bytes: an element costs ~10 times more
        # memory per idle session), None if not.
        self._presence: bytes | None = None
        self._flags = _NO_FLAGS  # what modules decided about it ("carbons", "interested")
        self._resource: Resource | None = None  # the value other modules see, rebuilt after a change
        self._directed_to = _NO_ONE  # entities that got directed presence (§4.6)
        self.slots = SlotValues(self)  # typed per-module state (nitro/core/slots.py)
        self._on_flags: Callable[[], None] | None = (
            None  # told when a flag changes (the cluster announces it)
        )

    @property
    def jid(self) -> JID:
        """The full JID."""
        return self._jid

    @jid.setter
    def jid(self, jid: JID) -> None:
        self._jid = jid
        self.jid_text = str(jid)
        self._resource = None

    @property
    def resource(self) -> Resource:
        """This session as other modules see it: an immutable value (nitro/core/sessions.py)."""
        if self._resource is None:
            self._resource = Resource(
                self._jid,
                LOCAL_NODE,
                self._presence is not None,
                self._priority,
                self._flags,
                self._presence,
                self._directed_to,
            )
        return self._resource

    @property
    def priority(self) -> int:
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        self._priority = value
        self._resource = None

    @property
    def presence(self) -> etree._Element | None:
        """The last available presence as a new element, parsed at each call (None when unavailable)."""
        return None if self._presence is None else parse_kept(self._presence)

    @presence.setter
    def presence(self, value: etree._Element | None) -> None:
        self.presence_xml = None if value is None else self_contained(value)

    @property
    def presence_xml(self) -> bytes | None:
        """The last available presence as `xmlwrite.self_contained` bytes, None when unavailable."""
        return self._presence

    @presence_xml.setter
    def presence_xml(self, value: bytes | None) -> None:
        self._presence = value
        self._resource = None

    @property
    def directed_to(self) -> frozenset[JID]:
        return self._directed_to

    @directed_to.setter
    def directed_to(self, value: frozenset[JID]) -> None:
        self._directed_to = value
        self._resource = None

    def has_flag(self, flag: str) -> bool:
        return flag in self._flags

    def set_flag(self, flag: str, on: bool = True) -> None:
        """Record a module's decision about this resource, visible in its `Resource` value."""
        flags = self._flags | {flag} if on else self._flags - {flag}
        if flags != self._flags:
            self._flags = _shared_flags(frozenset(flags))
            self._resource = None
            if self._on_flags is not None:
                self._on_flags()

    def watch_flags(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` after each flag change (one watcher: the cluster's announcements)."""
        self._on_flags = callback

    @property
    def interested(self) -> bool:
        """Requested the roster (RFC 6121 §2.1.6): gets roster pushes."""
        return INTERESTED in self._flags

    @interested.setter
    def interested(self, value: bool) -> None:
        self.set_flag(INTERESTED, value)

    @property
    def available(self) -> bool:
        return self._presence is not None

    # -- as data ----------------------------------------------------------------------------------------

    def export_resource(self) -> dict[str, Any]:
        presence = self._presence
        return {
            "jid": self.jid_text,
            "priority": self._priority,
            "presence": None if presence is None else presence.decode(),
            "flags": sorted(self._flags),
            "directed_to": sorted(str(jid) for jid in self._directed_to),
            "slots": self.slots.export(),
        }

    def restore_resource(self, data: dict[str, Any], registry: SlotRegistry) -> list[str]:
        """Load what `export_resource` wrote; returns the slot names no loaded module declares."""
        self._priority = int(data.get("priority", 0))
        presence = data.get("presence")
        # parsed, so that what is kept is well-formed and written as this process writes it
        self._presence = None if presence is None else self_contained(parse_stanza(str(presence).encode()))
        self._flags = _shared_flags(frozenset(str(flag) for flag in data.get("flags", ())))
        self._directed_to = frozenset(JID.parse(str(jid)) for jid in data.get("directed_to", ()))
        self._resource = None
        return self.slots.restore(dict(data.get("slots", {})), registry)


def _shared_flags(flags: frozenset[str]) -> frozenset[str]:
    """The one frozenset kept for these flags (see _FLAG_SETS)."""
    return _FLAG_SETS.get(flags) if flags else _NO_FLAGS
