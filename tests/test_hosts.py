"""The hosts table as transcripts: alice talks to a component on echo.localhost (in-process, shaped like a
XEP-0114 link); unknown, removed and disconnected domains get the RFC 6120 errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, Clients, wait_for
from lxml import etree
from slixmpp.exceptions import IqError

from nitro.core.hosts import HostTable, InProcessComponent, LocalHost, check_component_from
from nitro.core.module import Module
from nitro.server import Server
from nitro.xmpp import ns
from nitro.xmpp.errors import StreamError

ECHO = f"echo.{DOMAIN}"
ACCEPT = f"{{{ns.COMPONENT}}}"


class Echo:
    """A component: it keeps what it receives and answers messages and IQ gets, like a tiny bot."""

    def __init__(self, server: Server) -> None:
        self.received: list[etree._Element] = []
        self.link = InProcessComponent(ECHO, self.receive, server.router.route)
        self.remove = server.hosts.add(ECHO, self.link)

    async def receive(self, stanza: etree._Element) -> None:
        self.received.append(stanza)
        sender, kind = stanza.get("from"), etree.QName(stanza).localname
        if kind == "message" and stanza.get("type") != "error":
            answer = etree.fromstring(
                f"<message xmlns='{ns.COMPONENT}' from='{stanza.get('to')}' to='{sender}' type='chat'>"
                f"<body>echo: {stanza.findtext(f'{ACCEPT}body')}</body></message>"
            )
            await self.link.send(answer)
        elif kind == "iq" and stanza.get("type") == "get":
            result = f"<iq xmlns='{ns.COMPONENT}' type='result' from='{ECHO}' to='{sender}'/>"
            answer = etree.fromstring(result)
            answer.set("id", stanza.get("id") or "")
            await self.link.send(answer)

    def kinds(self) -> list[str]:
        return [etree.QName(stanza).text for stanza in self.received]


@pytest.fixture
def echo(server: Server) -> Iterator[Echo]:
    component = Echo(server)
    yield component
    component.remove()


def errors_of(client: slixmpp.ClientXMPP) -> list[Any]:
    errors: list[Any] = []
    client.add_event_handler("message_error", errors.append)
    return errors


def condition(stanza: Any) -> tuple[str | None, str | None]:
    """(type, condition) of a stanza error received by slixmpp."""
    return stanza["error"]["type"], stanza["error"]["condition"]


async def alice(clients: Clients, inbox: list[Any] | None = None) -> slixmpp.ClientXMPP:
    setup = None if inbox is None else (lambda c: c.add_event_handler("message", inbox.append))
    return await clients.login(await clients.user("alice"), plugins=["xep_0191"], setup=setup)


async def test_alice_writes_to_a_component_and_gets_its_answer(clients: Clients, echo: Echo) -> None:
    inbox: list[Any] = []
    client = await alice(clients, inbox)

    client.send_message(mto=slixmpp.JID(f"room@{ECHO}"), mbody="hello", mtype="chat")

    await wait_for(lambda: len(inbox) == 1)
    sent = echo.received[0]
    assert sent.tag == f"{ACCEPT}message"  # the component's own content namespace (XEP-0114)
    assert sent.get("from") == str(client.boundjid)  # stamped by the server
    assert sent.findtext(f"{ACCEPT}body") == "hello"
    assert inbox[0]["from"] == f"room@{ECHO}"
    assert inbox[0]["body"] == "echo: hello"


async def test_an_iq_to_a_component_gets_the_components_result(clients: Clients, echo: Echo) -> None:
    client = await alice(clients)

    result = await client.plugin["xep_0199"].send_ping(slixmpp.JID(ECHO), timeout=5)

    assert result["type"] == "result"
    assert str(result["from"]) == ECHO
    assert echo.kinds() == [f"{ACCEPT}iq"]


async def test_presence_to_a_component_reaches_it(clients: Clients, echo: Echo) -> None:
    client = await alice(clients)

    client.send_presence(pto=f"room@{ECHO}/alice")  # e.g. joining a chatroom
    client.send_presence(pto=ECHO)  # presence to the component's domain itself

    await wait_for(lambda: len(echo.received) == 2)
    assert [stanza.get("to") for stanza in echo.received] == [f"room@{ECHO}/alice", ECHO]


async def test_the_senders_side_runs_first_blocking_the_component_stops_the_message(
    clients: Clients, echo: Echo
) -> None:
    client = await alice(clients)
    errors = errors_of(client)
    await client.plugin["xep_0191"].block(slixmpp.JID(ECHO), timeout=5)

    client.send_message(mto=slixmpp.JID(f"room@{ECHO}"), mbody="hello", mtype="chat")

    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == ("cancel", "not-acceptable")  # XEP-0191 §3.3
    assert echo.received == []


async def test_an_unknown_subdomain_is_remote_server_not_found(clients: Clients) -> None:
    client = await alice(clients)

    with pytest.raises(IqError) as failure:
        await client.plugin["xep_0199"].send_ping(slixmpp.JID(f"nothing.{DOMAIN}"), timeout=5)

    assert condition(failure.value.iq) == ("cancel", "remote-server-not-found")  # RFC 6120 §10.4.3


async def test_a_removed_component_is_remote_server_not_found(clients: Clients, echo: Echo) -> None:
    client = await alice(clients)
    errors = errors_of(client)
    await client.plugin["xep_0199"].send_ping(slixmpp.JID(ECHO), timeout=5)

    echo.remove()  # e.g. its module unloaded
    client.send_message(mto=slixmpp.JID(f"room@{ECHO}"), mbody="anyone?", mtype="chat")

    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == ("cancel", "remote-server-not-found")
    assert str(errors[0]["from"]) == f"room@{ECHO}"


async def test_a_disconnected_component_is_service_unavailable_wait(clients: Clients, echo: Echo) -> None:
    client = await alice(clients)
    errors = errors_of(client)
    echo.link.disconnect()

    message = client.make_message(mto=slixmpp.JID(f"room@{ECHO}"), mbody="anyone?", mtype="chat")
    message["id"] = "m1"
    message.send()
    with pytest.raises(IqError) as failure:
        await client.plugin["xep_0199"].send_ping(slixmpp.JID(ECHO), timeout=5)

    # RFC 6120 §8.3.3.19, type wait as Prosody answers for a component that is not connected
    assert condition(failure.value.iq) == ("wait", "service-unavailable")
    await wait_for(lambda: len(errors) == 1)
    assert condition(errors[0]) == ("wait", "service-unavailable")
    assert errors[0]["id"] == "m1"
    assert echo.received == []


async def test_a_component_stanza_for_nobody_bounces_back_to_the_component(echo: Echo) -> None:
    message = (
        f"<message xmlns='{ns.COMPONENT}' from='bot@{ECHO}' to='nobody@{DOMAIN}' id='b1'><body/></message>"
    )
    await echo.link.send(etree.fromstring(message))

    await wait_for(lambda: len(echo.received) == 1)
    bounce = echo.received[0]
    assert bounce.tag == f"{ACCEPT}message"
    assert (bounce.get("type"), bounce.get("id"), bounce.get("to")) == ("error", "b1", f"bot@{ECHO}")
    error = bounce.find(f"{ACCEPT}error")
    assert error is not None
    assert error.find(f"{{{ns.STANZA_ERRORS}}}service-unavailable") is not None  # RFC 6121 §8.5.2.2.1


async def test_a_component_sends_only_from_its_own_domain(clients: Clients, echo: Echo) -> None:
    inbox: list[Any] = []
    client = await alice(clients, inbox)
    forged = f"<message xmlns='{ns.COMPONENT}' from='admin@{DOMAIN}' to='{client.boundjid}'><body/></message>"

    with pytest.raises(StreamError) as failure:
        await echo.link.send(etree.fromstring(forged))

    assert failure.value.condition == "invalid-from"  # XEP-0114 §3.1, RFC 6120 §4.9.3.9
    await client.plugin["xep_0199"].send_ping(slixmpp.JID(DOMAIN), timeout=5)
    assert inbox == []


async def test_a_component_iq_without_to_is_for_the_component_not_a_local_account(
    clients: Clients, server: Server, echo: Echo
) -> None:
    await clients.user("bot")  # a local account with the component user's localpart
    await server.storage.vcards.set("bot", b"<vCard xmlns='vcard-temp'><FN>Local Bot</FN></vCard>")

    query = (
        f"<iq xmlns='{ns.COMPONENT}' type='get' from='bot@{ECHO}' id='v1'><vCard xmlns='vcard-temp'/></iq>"
    )
    await echo.link.send(etree.fromstring(query))

    await wait_for(lambda: len(echo.received) >= 1)  # RFC 6120 §10.3: handled by its own server
    iq = echo.received[0]
    assert (iq.get("type"), iq.get("id"), iq.get("to")) == ("get", "v1", ECHO)
    assert b"Local Bot" not in etree.tostring(iq)


def test_from_checks() -> None:
    check_component_from(ECHO, etree.fromstring(f"<message from='a@{ECHO}/r'/>"))
    for sender in (None, DOMAIN, f"a@sub.{ECHO}", "@@"):
        attributes = "" if sender is None else f" from='{sender}'"
        with pytest.raises(StreamError):
            check_component_from(ECHO, etree.fromstring(f"<message{attributes}/>"))


# -- the table and its owners --------------------------------------------------------------------------


async def noop(stanza: etree._Element) -> None:
    return None


def test_the_table_serves_the_local_domain_and_added_ones() -> None:
    table = HostTable(DOMAIN)
    component = InProcessComponent(ECHO, noop, noop)
    assert table.get(DOMAIN) == LocalHost(DOMAIN)
    assert table.get(ECHO) is None

    remove = table.add("Echo.LocalHost", component)  # a domainpart is prepared (RFC 7622 §3.2)

    assert table.get(ECHO) is component
    assert sorted(table) == [ECHO, DOMAIN]
    with pytest.raises(ValueError, match="already served"):
        table.add(ECHO, InProcessComponent(ECHO, noop, noop))
    remove()
    assert table.get(ECHO) is None
    remove()  # twice is harmless


@pytest.mark.parametrize("domain", ["user@echo.localhost", "echo.localhost/r", "", "a..b"])
def test_a_host_needs_a_plain_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="not a domain"):
        HostTable(DOMAIN).add(domain, InProcessComponent(ECHO, noop, noop))


async def test_a_modules_hosts_go_when_it_unloads(server: Server) -> None:
    module = Module(server, "echo")
    module.add_host(ECHO, InProcessComponent(ECHO, noop, server.router.route))
    assert server.hosts.get(ECHO) is not None

    module.unload()

    assert server.hosts.get(ECHO) is None
