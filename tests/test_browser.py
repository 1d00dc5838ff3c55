"""A real browser: Debian's Chromium, driven by Selenium through chromium-driver, opens the Converse.js page,
alice logs in, and she and a slixmpp bot (bob) exchange messages both ways. The transport is a parameter."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import slixmpp
from conftest import DOMAIN, PASSWORD, WEB_CLIENT_DIR, Clients, wait_for
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from nitro.server import Server
from nitro.storage.models import RosterItem

pytestmark = pytest.mark.slow

TRANSPORTS = ["websocket", "bosh"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, and nothing that reaches beyond this machine (the sandbox needs --no-sandbox when run as root).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)
WAIT = 20.0  # seconds for anything the page has to do

T = TypeVar("T")


def require_chromium() -> None:
    """Skip only where the browser cannot be installed; `make test` installs it as root (system-deps)."""
    if all(Path(path).exists() for path in (CHROMIUM, CHROMEDRIVER)):
        return
    if os.geteuid() == 0:
        pytest.fail("chromium and chromium-driver are missing: `make test` installs them (make system-deps)")
    pytest.skip(
        "the browser test needs Debian's chromium and chromium-driver, and installing them needs root"
    )


class Browser:
    """One Chromium; every WebDriver call runs in a thread so that the server on this loop keeps serving."""

    def __init__(self, profile: Path) -> None:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.to_thread(call)

    async def element(self, css: str) -> WebElement:
        """The first element matching `css`, once the page shows it."""
        waiting = WebDriverWait(self.driver, WAIT)
        return await self.run(lambda: waiting.until(lambda d: d.find_element(By.CSS_SELECTOR, css)))

    async def shows(self, text: str) -> None:
        waiting = WebDriverWait(self.driver, WAIT)
        await self.run(lambda: waiting.until(lambda d: text in d.find_element(By.TAG_NAME, "body").text))

    async def type(self, css: str, text: str) -> None:
        field = await self.element(css)
        await self.run(lambda: field.send_keys(text))

    async def click(self, css: str) -> None:
        button = await self.element(css)
        await self.run(button.click)

    async def screenshot(self, path: Path) -> None:
        await self.run(lambda: self.driver.save_screenshot(str(path)))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    require_chromium()
    assert (WEB_CLIENT_DIR / "dist" / "converse.min.js").is_file(), "run `make web-client` (make test does)"
    opened = await asyncio.to_thread(Browser, tmp_path / "chromium-profile")
    try:
        yield opened
    finally:
        await asyncio.to_thread(opened.driver.quit)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_alice_in_the_web_client_and_a_bot_chat_both_ways(
    server: Server, clients: Clients, browser: Browser, transport: str, tmp_path: Path
) -> None:
    alice_jid, bob_jid = await clients.user("alice"), await clients.user("bob")
    await server.storage.rosters.put("alice", RosterItem(bob_jid, name="Bob", subscription="both"))
    await server.storage.rosters.put("bob", RosterItem(alice_jid, name="Alice", subscription="both"))
    bob = await clients.login(bob_jid)
    bob_inbox: list[str] = []
    bob.add_event_handler("message", lambda msg: bob_inbox.append(str(msg["body"])))

    try:
        # Alice opens the page and logs in; the domain is fixed by the page (locked_domain).
        await browser.run(
            lambda: browser.driver.get(f"http://127.0.0.1:{server.config.http.port}/?transport={transport}")
        )
        await browser.type("#converse-login-jid", "alice")
        await browser.type("#converse-login-password", PASSWORD)
        await browser.click("#converse-login button[type=submit]")
        await wait_for(lambda: any(s.username == "alice" and s.available for s in server.sessions), WAIT)
        (alice,) = [session for session in server.sessions if session.username == "alice"]
        assert alice.transport.kind == transport

        # Bob writes; alice sees it in the chat with Bob.
        bob.send_message(mto=slixmpp.JID(alice_jid), mbody="Hello from the bot", mtype="chat")
        await browser.click(f"a.open-chat[data-jid='{bob_jid}']")
        await browser.shows("Hello from the bot")

        # Alice answers from the page; bob receives it from her full JID.
        await browser.type("textarea.chat-textarea", "Hello bot, from the browser" + Keys.ENTER)
        await wait_for(lambda: bob_inbox == ["Hello bot, from the browser"], WAIT)
        assert str(alice.jid).startswith(f"alice@{DOMAIN}/")
    except BaseException:
        await browser.screenshot(tmp_path / "failure.png")  # kept by pytest under its basetemp
        raise
