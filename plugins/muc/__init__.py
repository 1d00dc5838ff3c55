"""Chatrooms (XEP-0045 Multi-User Chat) as a Nitro plugin: a XEP-0114 component serving conference.DOMAIN,
with persistent rooms and their archive (XEP-0313) in the server's SQL store."""

from __future__ import annotations

import asyncio

from nitro.sdk import PluginSettings
from nitro.storage.sql import create_engine
from plugins.muc.component import MucPlugin
from plugins.muc.service import Service
from plugins.muc.settings import rules_and_limits
from plugins.muc.store import MucStore


async def main(settings: PluginSettings) -> None:
    """The entry the supervisor awaits (inprocess) and `python -m plugins.muc` runs: load the persistent
    rooms, then serve until cancelled, reconnecting to the core when the link drops."""
    muc = MucPlugin(settings.name)
    options, rules, limits = rules_and_limits(settings)
    store = None
    engine = None
    if options.persistence and settings.config is not None:
        engine = create_engine(settings.config.storage.dsn, pool=settings.config.storage)
        store = MucStore(engine)
        await store.create_tables()
    muc.service = Service(rules, limits, store, muc.sink)
    await muc.service.load()
    tasks = [asyncio.create_task(job) for job in (muc.work(), muc.write(), muc.main(settings))]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a worker that failed ends the plugin (the supervisor starts it again)
    finally:
        # §15.6 status 332, written while the link is still up (before the SDK's task closes it)
        muc.service.shutdown()
        muc.write_now()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if engine is not None:
            await engine.dispose()
