"""The event bus without a server: fire (first claim wins), notify (every handler, isolated), verdict filters
under timeouts and failure policies, typed keys checked by mypy."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest
from lxml import etree

from nitro.core.events import (
    STANZA_FILTER,
    Drop,
    EventBus,
    EventKey,
    FailurePolicy,
    Pass,
    Replace,
    RoutedStanza,
    Verdict,
)
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID
from nitro.xmpp.stanza import stanza

PING: EventKey[str] = EventKey("ping")


def routed(to: str = "bob@localhost", body: str = "hi") -> RoutedStanza:
    message = stanza("message", to=to, from_="alice@localhost/phone")
    etree.SubElement(message, "{jabber:client}body").text = body
    return RoutedStanza(message, JID.parse("alice@localhost/phone"), JID.parse(to), None)


def body(element: etree._Element) -> str | None:
    return element.findtext("{jabber:client}body")


# -- fire and notify ---------------------------------------------------------------------------------


async def test_fire_runs_by_priority_until_one_claims() -> None:
    bus, seen = EventBus(), []

    async def low(payload: str) -> bool:
        seen.append(f"low {payload}")
        return True

    async def high(payload: str) -> None:
        seen.append(f"high {payload}")

    async def claims(payload: str) -> bool:
        seen.append(f"claims {payload}")
        return True

    bus.add(PING, low, priority=-10)
    bus.add(PING, high, priority=10)
    bus.add(PING, claims)

    assert await bus.fire(PING, "a") is True
    assert seen == ["high a", "claims a"]  # `low` never ran


async def test_a_typed_key_and_its_string_name_are_one_event() -> None:
    bus, seen = EventBus(), []

    async def legacy(payload: object) -> None:
        seen.append(payload)

    bus.add("ping", legacy)

    await bus.notify(PING, "typed")
    assert await bus.fire("ping", "string") is False
    assert seen == ["typed", "string"]
    assert bus.has(PING)
    assert bus.has("ping")


async def test_notify_runs_every_handler_even_when_one_raises(caplog: pytest.LogCaptureFixture) -> None:
    bus, seen = EventBus(), []

    async def first(payload: str) -> bool:
        seen.append("first")
        return True  # a claim means nothing to notify

    async def broken(payload: str) -> None:
        raise RuntimeError("observer bug")

    async def last(payload: str) -> None:
        seen.append("last")

    bus.add(PING, first, priority=2)
    bus.add(PING, broken, priority=1)
    bus.add(PING, last)

    with caplog.at_level(logging.ERROR, logger="nitro.core.events"):
        await bus.notify(PING, "x")

    assert seen == ["first", "last"]
    assert "observer bug" in caplog.text


async def test_fire_lets_a_handler_error_reach_the_caller() -> None:
    bus = EventBus()

    async def broken(payload: str) -> None:
        raise RuntimeError("handler bug")

    bus.add(PING, broken)
    with pytest.raises(RuntimeError, match="handler bug"):
        await bus.fire(PING, "x")


async def test_removing_a_registration_removes_exactly_it() -> None:
    bus, seen = EventBus(), []

    async def one(payload: str) -> None:
        seen.append("one")

    async def two(payload: str) -> None:
        seen.append("two")

    remove_one = bus.add(PING, one)
    remove_two = bus.add(PING, two)
    remove_one()
    remove_one()  # twice is harmless
    await bus.notify(PING, "x")
    assert seen == ["two"]
    remove_two()
    assert not bus.has(PING)


# -- filters ----------------------------------------------------------------------------------------


async def test_no_filter_is_a_pass() -> None:
    bus = EventBus()
    assert not bus.has_filters(STANZA_FILTER)
    assert await bus.filter(STANZA_FILTER, routed()) == Pass()


async def test_filters_run_in_priority_order_and_see_each_replacement() -> None:
    bus, seen = EventBus(), []

    async def shout(event: RoutedStanza) -> Verdict:
        seen.append(f"shout {body(event.stanza)}")
        replacement = etree.fromstring(etree.tostring(event.stanza))
        replacement.find("{jabber:client}body").text = "HI"  # type: ignore[union-attr]
        return Replace(replacement)

    async def sign(event: RoutedStanza) -> Verdict:
        seen.append(f"sign {body(event.stanza)}")
        replacement = etree.fromstring(etree.tostring(event.stanza))
        replacement.find("{jabber:client}body").text += " -- alice"  # type: ignore[union-attr, operator]
        return Replace(replacement)

    async def look(event: RoutedStanza) -> Verdict:
        seen.append(f"look {body(event.stanza)}")
        return Pass()

    bus.add_filter(STANZA_FILTER, sign, priority=1)
    bus.add_filter(STANZA_FILTER, shout, priority=5)
    bus.add_filter(STANZA_FILTER, look, priority=-5)
    original = routed()

    verdict = await bus.filter(STANZA_FILTER, original)

    assert seen == ["shout hi", "sign HI", "look HI -- alice"]
    assert isinstance(verdict, Replace)
    assert body(verdict.stanza) == "HI -- alice"
    assert body(original.stanza) == "hi"  # the original is untouched


async def test_the_first_drop_ends_the_chain() -> None:
    bus, seen = EventBus(), []
    refusal = StanzaError("policy-violation", "no spam")

    async def refuse(event: RoutedStanza) -> Verdict:
        return Drop(refusal)

    async def later(event: RoutedStanza) -> Verdict:
        seen.append("later")
        return Pass()

    bus.add_filter(STANZA_FILTER, refuse, priority=1)
    bus.add_filter(STANZA_FILTER, later)

    assert await bus.filter(STANZA_FILTER, routed()) == Drop(refusal)
    assert seen == []


async def test_a_replacement_with_a_bad_address_counts_as_a_failure() -> None:
    bus = EventBus()

    async def garble(event: RoutedStanza) -> Verdict:
        return Replace(stanza("message", to="@@bad@@"))

    bus.add_filter(STANZA_FILTER, garble, policy=FailurePolicy.CLOSED)
    verdict = await bus.filter(STANZA_FILTER, routed())
    assert isinstance(verdict, Drop)
    assert verdict.error is not None
    assert verdict.error.condition == "internal-server-error"


async def sleepy(event: RoutedStanza) -> Verdict:
    await asyncio.sleep(10)
    return Drop()


async def broken(event: RoutedStanza) -> Verdict:
    raise RuntimeError("filter bug")


async def nonsense(event: RoutedStanza) -> Verdict:
    return True  # type: ignore[return-value]  # what a sloppy filter might answer


@pytest.mark.parametrize("handler", [sleepy, broken, nonsense])
async def test_a_failing_filter_fails_open_as_a_pass(handler: object) -> None:
    bus = EventBus()
    bus.add_filter(STANZA_FILTER, handler, timeout=0.05, policy=FailurePolicy.OPEN)  # type: ignore[arg-type]

    started = asyncio.get_running_loop().time()
    assert await bus.filter(STANZA_FILTER, routed()) == Pass()
    assert asyncio.get_running_loop().time() - started < 2  # the timeout cut the sleep short


@pytest.mark.parametrize("handler", [sleepy, broken, nonsense])
async def test_a_failing_filter_fails_closed_as_internal_server_error_wait(handler: object) -> None:
    bus = EventBus()
    bus.add_filter(STANZA_FILTER, handler, timeout=0.05, policy=FailurePolicy.CLOSED)  # type: ignore[arg-type]

    verdict = await bus.filter(STANZA_FILTER, routed())

    assert isinstance(verdict, Drop)
    assert verdict.error is not None
    assert (verdict.error.condition, verdict.error.type) == ("internal-server-error", "wait")


async def test_a_failing_filter_does_not_stop_the_ones_after_it_when_open() -> None:
    bus = EventBus()

    async def refuse(event: RoutedStanza) -> Verdict:
        return Drop()

    bus.add_filter(STANZA_FILTER, broken, priority=1)
    bus.add_filter(STANZA_FILTER, refuse)
    assert await bus.filter(STANZA_FILTER, routed()) == Drop()


async def test_removing_a_filter_removes_exactly_it() -> None:
    bus = EventBus()

    async def refuse(event: RoutedStanza) -> Verdict:
        return Drop()

    async def allow(event: RoutedStanza) -> Verdict:
        return Pass()

    remove_refuse = bus.add_filter(STANZA_FILTER, refuse)
    remove_allow = bus.add_filter(STANZA_FILTER, allow)
    remove_refuse()
    assert await bus.filter(STANZA_FILTER, routed()) == Pass()
    remove_allow()
    assert not bus.has_filters(STANZA_FILTER)


def test_a_filter_needs_a_positive_timeout() -> None:
    async def allow(event: RoutedStanza) -> Verdict:
        return Pass()

    with pytest.raises(ValueError, match="positive"):
        EventBus().add_filter(STANZA_FILTER, allow, timeout=0)


# -- typed keys: mypy checks what a handler receives --------------------------------------------------


@pytest.mark.slow
def test_mypy_rejects_a_handler_of_the_wrong_payload_type(tmp_path: Path) -> None:
    from mypy import api

    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            from nitro.core.events import ACCOUNT_DELETED, STANZA_FILTER, AccountEvent, EventBus
            from nitro.core.events import Pass, Verdict

            async def by_name(event: AccountEvent) -> None: ...
            async def by_number(event: int) -> None: ...
            async def a_filter(event: AccountEvent) -> Verdict:
                return Pass()

            async def main(bus: EventBus) -> None:
                bus.add(ACCOUNT_DELETED, by_name)
                bus.add(ACCOUNT_DELETED, by_number)
                await bus.notify(ACCOUNT_DELETED, AccountEvent("alice"))
                await bus.notify(ACCOUNT_DELETED, "alice")
                bus.add_filter(STANZA_FILTER, a_filter)
            """
        )
    )
    root = Path(__file__).resolve().parent.parent
    out, _err, status = api.run(
        [
            "--strict",
            "--config-file",
            str(root / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(sample),
        ]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1
    assert [int(line.split(":")[1]) for line in errors] == [12, 14, 15], out
