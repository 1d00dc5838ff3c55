"""A BOSH session's binding state as plain data and back (an upgrade moves it to the successor process): the
sid, the rid window and the responses kept for a resend (XEP-0124 §14.3), wait/hold/inactivity/polling, the
acknowledgements (§9) and the stream's negotiated state. No I/O; held requests are answered before export.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from nitro.xmpp import ns
from nitro.xmpp.bosh_session import BoshSession, Settings, _Acks
from nitro.xmpp.xmlstream import StreamOpened


def movable(core: BoshSession) -> bool:
    """Nothing half done: no request waits for a gap in the rids (its payloads would be lost), none is
    being handled."""
    return not core.terminated and not core._pending and not core.processing


def export_state(core: BoshSession) -> dict[str, Any]:
    """`core` as JSON-able data, when `movable` and its held requests were answered (`release`); what is
    queued for the client goes along. Times are per process (monotonic clocks): the successor restarts
    them."""
    assert movable(core)
    assert not core._held
    opened = core.opened
    return {
        "sid": core.sid,
        "legacy": core.legacy,
        "version": list(core.version),
        "wait": core.wait,
        "hold": core.hold,
        "requests": core.requests,
        "opened": {"to": opened.to, "from": opened.from_, "version": opened.version, "lang": opened.lang},
        "next_rid": core._next_rid,
        "outbox": [data.decode() for data in core._outbox],
        "cache": [[rid, data.decode()] for rid, data in core._cache.items()],
        "creation_attrs": core._creation_attrs,
        "authid": core._authid,
        "restart_expected": core._restart_expected,
        "acks": {
            "enabled": core._acks.enabled,
            "report": None if core._acks.report is None else list(core._acks.report),
            "sent_at": [[rid, at] for rid, at in core._acks.sent_at.items()],
        },
        "inactivity": core._inactivity,
    }


def restore_state(data: dict[str, Any], settings: Settings, domain: str, now: float) -> BoshSession:
    """A `BoshSession` equal to the exported one, its clocks restarted at `now` (monotonic clocks do not
    cross processes); raises KeyError, TypeError or ValueError when `data` is no exported session."""
    core = BoshSession.__new__(BoshSession)
    opened = data["opened"]
    core.sid = _text(data["sid"])
    core.legacy = bool(data["legacy"])
    major, minor = (int(part) for part in data["version"])
    core.version = (major, minor)
    core.wait = int(data["wait"])
    core.hold = int(data["hold"])
    core.requests = int(data["requests"])
    core.settings = settings
    core.domain = domain
    core.opened = StreamOpened(
        to=_optional(opened["to"]),
        from_=_optional(opened["from"]),
        version=_optional(opened["version"]),
        lang=_optional(opened["lang"]),
        id=None,
        content_ns=ns.CLIENT,
    )
    core._next_rid = int(data["next_rid"])
    core._pending = {}
    core._held = []
    core._outbox = [_text(item).encode() for item in data["outbox"]]
    core._cache = OrderedDict((int(rid), _text(item).encode()) for rid, item in data["cache"])
    core._replies = []
    core._terminal = None
    attrs = data["creation_attrs"]
    core._creation_attrs = None if attrs is None else [(_text(name), _text(value)) for name, value in attrs]
    core._authid = _text(data["authid"])
    core._restart_expected = bool(data["restart_expected"])
    acks = data["acks"]
    report = acks["report"]
    core._acks = _Acks(
        enabled=bool(acks["enabled"]),
        report=None if report is None else (int(report[0]), float(report[1])),
        sent_at={int(rid): now for rid, _at in acks["sent_at"]},
    )
    core._last_response = now
    core._inactivity = float(data["inactivity"])
    core._idle_poll = None
    core.processing = False
    core.rids_unknown = bool(data.get("rids_unknown", False))  # set by an old process taking it back
    if core.wait < 0 or core.hold < 0 or core.requests < 1 or core._next_rid < 1:
        raise ValueError(f"BOSH session {core.sid}: impossible numbers")
    return core


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional(value: Any) -> str | None:
    return None if value is None else _text(value)
