"""Hooks in the SDK (plugins/PROTOCOL.md, urn:nitro:plugin:hooks:0): the verdicts a filter returns, the
events an observer receives, and the elements that carry them over the link."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

HOOKS = "urn:nitro:plugin:hooks:0"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@dataclass(frozen=True, slots=True)
class Pass:
    """Let the stanza go on."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Stop the stanza; the sender gets this stanza error (RFC 6120 §8.3), or nothing if condition is None."""

    condition: str | None = "policy-violation"
    text: str | None = None
    type: str = "modify"


@dataclass(frozen=True, slots=True)
class Replace:
    """Route `stanza` instead (same kind and same 'from' as the original, else the core refuses it)."""

    stanza: ET.Element


Verdict = Pass | Drop | Replace


@dataclass(frozen=True, slots=True)
class Observed:
    """An observe event: `name` (message, presence, iq, login, logout, roster), its attributes (`jid`;
    for roster `user`, `jid`, `subscription`) and, for stanza events, a copy of the routed stanza."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    stanza: ET.Element | None = None
    seq: int = 0  # the core's number for it (with `spool`, what the SDK acknowledges)
    spool: str = ""
    at: float = 0.0  # when the core saw it (seconds since the epoch)


FilterHandler = Callable[[ET.Element], Awaitable[Verdict]]
ObserveHandler = Callable[[Observed], Awaitable[None]]


def register_element(hooks: Iterable[tuple[str, str]]) -> ET.Element:
    """`<register>` with one `<hook event= kind=/>` per (event, kind)."""
    register = ET.Element(f"{{{HOOKS}}}register", ack="true")
    for event, kind in hooks:
        ET.SubElement(register, f"{{{HOOKS}}}hook", event=event, kind=kind)
    return register


def verdict_element(verdict: Verdict) -> ET.Element:
    if isinstance(verdict, Pass):
        return ET.Element(f"{{{HOOKS}}}verdict", action="pass")
    if isinstance(verdict, Replace):
        element = ET.Element(f"{{{HOOKS}}}verdict", action="replace")
        element.append(verdict.stanza)
        return element
    element = ET.Element(f"{{{HOOKS}}}verdict", action="drop")
    if verdict.condition is not None:
        error = ET.SubElement(element, "{jabber:client}error", type=verdict.type)
        ET.SubElement(error, f"{{{STANZA_ERRORS}}}{verdict.condition}")
        if verdict.text:
            ET.SubElement(error, f"{{{STANZA_ERRORS}}}text").text = verdict.text
    return element


def observed(event: ET.Element) -> Observed:
    attributes = {
        key: value for key, value in event.attrib.items() if key not in ("name", "seq", "spool", "at")
    }
    stanza = next(iter(event), None)
    seq = event.get("seq", "0")
    return Observed(
        event.get("name", ""), attributes, stanza, int(seq) if seq.isdigit() else 0, event.get("spool", "")
    )


def ack_element(event: Observed) -> ET.Element:
    """`<ack seq= spool=/>`: every event up to this one is handled (the core may forget them)."""
    return ET.Element(f"{{{HOOKS}}}ack", seq=str(event.seq), spool=event.spool)


async def run_filters(handlers: list[FilterHandler], stanza: ET.Element) -> Verdict:
    """Several filters of one plugin for one event: the first Drop wins, a Replace feeds the next."""
    replaced: ET.Element | None = None
    for handler in handlers:
        verdict = await handler(stanza if replaced is None else replaced)
        if isinstance(verdict, Drop):
            return verdict
        if isinstance(verdict, Replace):
            replaced = verdict.stanza
    return Pass() if replaced is None else Replace(replaced)
