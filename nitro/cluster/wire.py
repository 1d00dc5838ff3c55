"""What nodes say to each other over NATS: JSON envelopes carrying serialized stanzas (no I/O here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lxml import etree

from nitro.core.sessions import Resource
from nitro.xmpp.jid import JID
from nitro.xmpp.sm import parse_stanza
from nitro.xmpp.xmlwrite import self_contained


class WireError(ValueError):
    """A NATS message that is not one of ours (logged and dropped, or answered with an error)."""


def subject_of(cluster: str, node: str) -> str:
    """The subject a node listens on for requests addressed to it."""
    return f"nitro.{cluster}.node.{node}"


def sessions_subject(cluster: str) -> str:
    """The subject every node listens on for session announcements (bind, change, unbind, snapshots)."""
    return f"nitro.{cluster}.sessions"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise WireError("not an envelope")
    return message


def stanza_text(stanza: etree._Element) -> str:
    return etree.tostring(stanza, encoding="unicode")


def parse(text: str) -> etree._Element:
    try:
        return parse_stanza(text.encode())
    except Exception as exc:
        raise WireError(f"bad stanza: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Announced:
    """A resource as its node announces it: what other nodes need to answer `resources(bare)`."""

    jid: str
    priority: int
    flags: tuple[str, ...]
    presence: str | None

    @classmethod
    def of(cls, resource: Resource) -> Announced:
        presence = None if resource.presence_xml is None else resource.presence_xml.decode()
        return cls(str(resource.jid), resource.priority, tuple(sorted(resource.flags)), presence)

    def to_json(self) -> list[Any]:
        return [self.jid, self.priority, list(self.flags), self.presence]

    @classmethod
    def from_json(cls, data: Any) -> Announced:
        try:
            jid, priority, flags, presence = data
            return cls(
                str(jid),
                int(priority),
                tuple(str(f) for f in flags),
                None if presence is None else str(presence),
            )
        except (TypeError, ValueError) as exc:
            raise WireError(f"bad resource record: {exc}") from exc

    def resource(self, node: str) -> Resource:
        # parsed: what is kept is well-formed and written as this process writes it
        presence = None if self.presence is None else self_contained(parse(self.presence))
        return Resource(
            JID.parse(self.jid), node, presence is not None, self.priority, frozenset(self.flags), presence
        )
