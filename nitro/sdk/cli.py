"""The command line every plugin shares: `python -m plugins.NAME --config FILE [--name NAME] [--core H:P]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from nitro.config import ConfigError
from nitro.sdk.settings import PluginSettings, load_settings

Main = Callable[[PluginSettings], Coroutine[Any, Any, None]]


def parse(argv: list[str] | None, default_name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m plugins.{default_name}",
        description="Run a Nitro plugin: connect to the server's plugin listener (XEP-0114) and serve.",
    )
    parser.add_argument("--config", required=True, help="the Nitro config file with [plugins.NAME]")
    parser.add_argument(
        "--name", default=default_name, help=f"the [plugins.NAME] table (default {default_name})"
    )
    parser.add_argument("--core", default=None, help="HOST:PORT of the plugin listener, overriding [plugins]")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser.parse_args(argv)


def run(main: Main, default_name: str, argv: list[str] | None = None) -> None:
    """Load the settings, log to stderr, run `main` until SIGTERM/SIGINT; exit 2 on a config problem."""
    args = parse(argv, default_name)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(args.config, args.name, args.core)
    except ConfigError as exc:
        print(f"plugin {args.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc

    async def until_signal() -> None:
        task = asyncio.create_task(main(settings))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(until_signal())
