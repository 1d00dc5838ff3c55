"""Compliance recording: every routed message (an observe hook) appended to an SQL table with sender,
recipients, times, id and body; a policy filter refusing messages that match configured regular
expressions with <policy-violation/>; retention by policy. Events missed while the plugin is down are
caught up from the core's spool (`spool = DIR` in its table), and a resend is recorded once.

Options in `[plugins.compliance]`: `dsn` (default: the server's [storage] dsn), `block_patterns`
(a list of regular expressions), `retention_days` (0: keep forever; else purged hourly)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from xml.etree import ElementTree as ET

from sqlalchemy.ext.asyncio import AsyncEngine

from nitro.sdk import Drop, Observed, Pass, Plugin, PluginSettings, Verdict
from plugins.compliance.store import Batcher, Record, open_store, purge, recipients_of

log = logging.getLogger(__name__)
plugin = Plugin("compliance")
_state: dict[str, object] = {}  # the running instance's engine and patterns
CLIENT = "{jabber:client}"


def dsn_of(settings: PluginSettings) -> str:
    dsn = settings.option("dsn")
    if dsn:
        return str(dsn)
    if settings.config is None:
        raise ValueError("no dsn option and no server config to take [storage].dsn from")
    return settings.config.storage.dsn


@plugin.filter("message")
async def policy(stanza: ET.Element) -> Verdict:
    body = stanza.findtext(f"{CLIENT}body")
    patterns = _state.get("patterns")
    if body and isinstance(patterns, list):
        for pattern in patterns:
            if pattern.search(body):
                return Drop("policy-violation", "this message breaks the compliance policy")
    return Pass()


@plugin.observe("message")
async def archive(event: Observed) -> None:
    stanza = event.stanza
    batcher = _state.get("batcher")
    if stanza is None or not isinstance(batcher, Batcher):
        return
    sender = (stanza.get("from") or "").split("/", 1)[0]
    if stanza.get("type") == "groupchat" and sender.partition("@")[2] != _state.get("domain"):
        return  # a room's copy to each occupant: the user's message to the room is the record
    body = stanza.findtext(f"{CLIENT}body")
    origin = stanza.find("{urn:xmpp:sid:0}origin-id")
    item = Record(
        spool=event.spool,
        seq=event.seq,
        sent_at=event.at or time.time(),
        sender=sender,
        recipients=recipients_of(stanza.get("to")),
        message_type=stanza.get("type") or "normal",
        stanza_id=origin.get("id") if origin is not None else stanza.get("id"),
        body=body,
    )
    try:
        await batcher.add(item)
    except Exception:
        # Acknowledgements are cumulative: acknowledging a later event would cover this one. Drop the
        # link instead; the core resends everything unacknowledged once the SDK has reconnected.
        log.exception("compliance: recording failed; reconnecting so that the core sends it again")
        if plugin.xmpp is not None:
            plugin.xmpp.abort()
        raise


async def _retention(engine: AsyncEngine, days: float) -> None:
    while True:
        removed = await purge(engine, time.time() - days * 86400)
        if removed:
            log.info("compliance retention: %s records older than %s days purged", removed, days)
        await asyncio.sleep(3600)


async def main(settings: PluginSettings) -> None:
    engine = await open_store(dsn_of(settings))
    _state["batcher"] = Batcher(engine)
    _state["domain"] = settings.server_domain
    _state["patterns"] = [re.compile(p) for p in settings.option("block_patterns", [])]
    days = float(settings.option("retention_days", 0))
    retention = asyncio.create_task(_retention(engine, days)) if days > 0 else None
    try:
        await plugin.main(settings)
    finally:
        if retention is not None:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
        await engine.dispose()
