"""The hook protocol's elements (urn:nitro:plugin:hooks:0, plugins/PROTOCOL.md), sans-IO: the filter
request and observe event the core writes, and the verdict it reads back (ValueError for garbage)."""

from __future__ import annotations

import copy
import itertools
from typing import Final, cast, get_args

from lxml import etree

from nitro.core.events import PASS, Drop, Replace, Verdict
from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_internal
from nitro.xmpp.errors import ErrorType, StanzaCondition, StanzaError

HOOKS: Final = "urn:nitro:plugin:hooks:0"
STANZA_EVENTS: Final = ("message", "presence", "iq")  # routed stanzas: filter or observe
SESSION_EVENTS: Final = ("login", "logout", "roster")  # observe only
KINDS: Final = ("filter", "observe")
_CONDITIONS: Final = frozenset(get_args(StanzaCondition))
_TYPES: Final = frozenset(get_args(ErrorType))
_ids = itertools.count(1)


def _component(tag: str, **attributes: str) -> etree._Element:
    return etree.Element(f"{{{ns.COMPONENT}}}{tag}", attributes, nsmap=ns.default_ns(ns.COMPONENT))


def filter_request(server: str, plugin: str, event: str, stanza: etree._Element) -> etree._Element:
    """`<iq type='set'><filter event=…>stanza</filter></iq>` to the plugin; the stanza in jabber:client."""
    iq = _component("iq", type="set", id=f"hook-{next(_ids)}", to=plugin)
    iq.set("from", server)
    request = etree.SubElement(iq, f"{{{HOOKS}}}filter", event=event, nsmap=ns.default_ns(HOOKS))
    request.append(copy.deepcopy(stanza))
    return iq


def observe_event(
    server: str, plugin: str, event: str, payload: etree._Element | None = None, **attributes: str
) -> etree._Element:
    """`<message><event name=… …>payload</event></message>`: a copy for an observer, answered by nothing."""
    message = _component("message", to=plugin)
    message.set("from", server)
    element = etree.SubElement(message, f"{{{HOOKS}}}event", name=event, nsmap=ns.default_ns(HOOKS))
    for key, value in attributes.items():
        element.set(key, value)
    if payload is not None:
        element.append(copy.deepcopy(payload))
    return message


def parse_verdict(answer: etree._Element, original: etree._Element) -> Verdict:
    """The verdict in the plugin's answer to a filter request; ValueError when it is not one."""
    if answer.get("type") != "result":
        raise ValueError(f"the plugin answered type={answer.get('type')!r}")
    verdict = answer.find(f"{{{HOOKS}}}verdict")
    if verdict is None:
        raise ValueError("no <verdict/> in the answer")
    action = verdict.get("action")
    if action == "pass":
        return PASS
    if action == "drop":
        error = next((child for child in verdict if etree.QName(child).localname == "error"), None)
        return Drop(None if error is None else _stanza_error(error))
    if action == "replace":
        stanzas = [child for child in verdict if isinstance(child.tag, str)]
        if len(stanzas) != 1 or etree.QName(stanzas[0]).localname not in STANZA_EVENTS:
            raise ValueError("a replace verdict carries exactly one stanza")
        replacement = to_internal(copy.deepcopy(stanzas[0]), ns.COMPONENT)
        if replacement.tag != original.tag or replacement.get("from") != original.get("from"):
            raise ValueError("a replacement keeps the stanza's kind and its 'from'")
        return Replace(replacement)
    raise ValueError(f"unknown verdict action {action!r}")


def _stanza_error(error: etree._Element) -> StanzaError:
    kind = error.get("type")
    conditions = [etree.QName(c).localname for c in error if etree.QName(c).namespace == ns.STANZA_ERRORS]
    condition = next((c for c in conditions if c != "text"), None)
    if condition not in _CONDITIONS or (kind is not None and kind not in _TYPES):
        raise ValueError(f"not a stanza error: condition {condition!r}, type {kind!r}")
    text = error.find(f"{{{ns.STANZA_ERRORS}}}text")
    return StanzaError(
        cast(StanzaCondition, condition),
        None if text is None else text.text,
        type=cast(ErrorType, kind) if kind else None,
    )
