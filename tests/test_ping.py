"""XMPP Ping (XEP-0199): the server answers for itself and for the user's own account (RFC 6120 §10.3.3)."""

from __future__ import annotations

import pytest
import slixmpp
from conftest import DOMAIN, Clients
from slixmpp.exceptions import IqError


def _ping(client: slixmpp.ClientXMPP, to: str | None) -> slixmpp.Iq:
    iq = client.make_iq_get(queryxmlns=None, ito=to)
    iq.enable("ping")
    return iq


async def test_ping_to_the_server_is_answered(clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"))
    result = await _ping(alice, DOMAIN).send(timeout=5)
    assert result["type"] == "result"


@pytest.mark.parametrize("to", [None, "alice@localhost"], ids=["no-to", "own-bare-jid"])
async def test_ping_to_the_own_account_is_answered_by_the_server(clients: Clients, to: str | None) -> None:
    """Issue 11 item 12: it was service-unavailable, and profanity then turned its autoping off."""
    alice = await clients.login(await clients.user("alice"))
    result = await _ping(alice, to).send(timeout=5)
    assert result["type"] == "result"
    assert result["from"].bare in ("", "alice@localhost")  # RFC 6120 §8.1.2.1: the account, or no 'from'


async def test_ping_to_another_account_is_answered_if_it_exists(clients: Clients) -> None:
    """RFC 6121 §8.5.1: an IQ to an account's bare JID is the server's to handle (Prosody and ejabberd answer
    pings); for no such account it is service-unavailable."""
    alice = await clients.login(await clients.user("alice"))
    await clients.user("bob")  # offline: the server answers for the account, not a resource
    result = await _ping(alice, "bob@localhost").send(timeout=5)
    assert result["type"] == "result"
    with pytest.raises(IqError) as caught:
        await _ping(alice, "nobody@localhost").send(timeout=5)
    assert caught.value.iq["error"]["condition"] == "service-unavailable"
