"""Logs for operators (issue 11 items 7 and 23): a line per connect, bind and disconnect at INFO; at DEBUG a
stanza trace per session, cut short and without credentials; a client cut off for not reading is logged under
its own session."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import slixmpp
from conftest import PASSWORD, Clients, make_config, raw_stream, read_until, started_server, wait_for
from test_c2s import stream_error
from test_connection import BOB, bob_flooded
from test_logs import captured
from test_register import raw_client, register_iq

from nitro.observe.trace import MAX_CHARS, REDACTED, redacted, render
from nitro.server import Server
from nitro.transports import tcp_output
from nitro.xmpp import ns
from nitro.xmpp.sm import parse_stanza

SESSION = r"\[(c2s\d+-[0-9a-f]+)[^]]*\]"


def session_of(lines: list[str], pattern: str) -> str:
    """The session id named by the one line matching `pattern`."""
    found = [line for line in lines if re.search(pattern, line)]
    assert len(found) == 1, (pattern, found)
    match = re.search(SESSION, found[0])
    assert match, found[0]
    return match.group(1)


async def test_connect_bind_and_disconnect_make_one_line_each(server: Server, clients: Clients) -> None:
    with captured("text") as stream:
        alice = await clients.login(await clients.user("alice"))
        resource = alice.boundjid.resource
        alice.disconnect(wait=0.5)
        await wait_for(lambda: not server.connections, 10)
    lines = [line for line in stream.getvalue().splitlines() if " INFO " in line]
    connected = session_of(lines, r"connected from 127\.0\.0\.1 over tcp$")
    assert session_of(lines, rf"\] bound alice@localhost/{re.escape(resource)}$") == connected
    assert session_of(lines, r"disconnected after \d+\.\d s: the client closed the stream$") == connected


async def test_a_disconnect_says_why(tmp_path: Path) -> None:
    config = make_config(tmp_path, limits={"max_connections_per_address": 1})
    async with started_server(config) as server:
        with captured("text") as stream:
            held_reader, held = await raw_stream(server)
            held.write(
                b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client'"
            )
            held.write(b" xmlns:stream='http://etherx.jabber.org/streams'>")
            await read_until(held_reader, b"</stream:features>")
            reader, writer = await raw_stream(server)
            await stream_error(reader, "policy-violation")
            writer.close()
            held.transport.abort()  # the connection dies: no stream close
            await wait_for(lambda: not server.connections, 10)
        lines = stream.getvalue().splitlines()
        assert any(
            re.search(r"disconnected after .*: <policy-violation/> too many connections", line)
            for line in lines
        )
        assert any(
            re.search(r"disconnected after .*: the client closed the connection$", line) for line in lines
        )


async def test_debug_traces_each_element_without_credentials(server: Server, clients: Clients) -> None:
    """PLAIN carries the password in its base64; registration carries it in clear. Neither is logged, while
    the rest of the exchange is, under the session's id, both ways."""
    with captured("text") as stream:
        await clients.user("alice")
        async with raw_client(server) as (client, _features):
            assert await client.login("alice", PASSWORD)
        async with raw_client(server) as (client, _features):
            await client.iq(register_iq("dora", "s3cret-passw0rd"))
        bob = await clients.login(await clients.user("bob"))
        bob.send_message(mto=slixmpp.JID("bob@localhost"), mbody="x" * (MAX_CHARS + 500))
        await bob.wait_until("message", 5)
    text = stream.getvalue()
    assert PASSWORD not in text
    assert "s3cret-passw0rd" not in text
    assert "AGFsaWNl" not in text  # the start of PLAIN's base64 ("\0alice")
    trace = [line for line in text.splitlines() if "nitro.trace" in line]
    assert any(
        re.search(rf"{SESSION} << <auth .*mechanism=\"PLAIN\">{re.escape(REDACTED)}</auth>", line)
        for line in trace
    )
    assert any(f"<password>{REDACTED}</password>" in line for line in trace)
    assert any(re.search(rf"{SESSION} >> <success ", line) for line in trace)
    assert any(re.search(r"<< <message .*characters\)$", line) for line in trace)  # cut short
    assert any(re.search(r">> <message .*characters\)$", line) for line in trace)


def test_passwords_in_registration_forms_are_redacted_and_the_original_is_untouched() -> None:
    form = parse_stanza(
        f"<iq type='set' id='r'><query xmlns='{ns.REGISTER}'><x xmlns='{ns.DATA_FORMS}' type='submit'>"
        f"<field var='username'><value>dora</value></field><field var='password'><value>hunter2</value>"
        f"</field></x></query></iq>".encode()
    )
    assert "hunter2" not in render(form)
    assert "dora" in render(form)
    assert redacted(form) is not form
    values = [value.text for value in form.iter(f"{{{ns.DATA_FORMS}}}value")]
    assert values == ["dora", "hunter2"]  # what the module reads is unchanged
    message = parse_stanza(b"<message to='a@localhost'><body>hello</body></message>")
    assert redacted(message) is message  # nothing to hide: no copy


# -- item 7: the cut-off of a client that does not read ------------------------------------------------


async def test_a_slow_reader_is_logged_under_its_own_session(tmp_path: Path) -> None:
    with captured("text") as stream:
        async with bob_flooded(tmp_path, write_timeout=1.0) as flooded:
            await wait_for(lambda: flooded.server.sessions.get(BOB) is None, 15)
    lines = stream.getvalue().splitlines()
    bob = session_of(lines, rf"\] bound {re.escape(str(BOB))}$")
    alice = session_of(lines, r"\] bound alice@localhost/raw$")
    cut = [line for line in lines if "is not reading" in line]
    assert len(cut) == 1, cut
    assert f"[{bob} {BOB}]" in cut[0]
    assert alice not in cut[0]
    assert re.search(
        rf"\[{bob} [^]]*\] disconnected after .* not reading: nothing read for 1\.0 s", "\n".join(lines)
    )


async def test_a_reader_past_the_write_buffer_is_logged_under_its_own_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        tcp_output, "MAX_WRITE_BUFFER", 256 * 1024
    )  # the flood passes it long before write_timeout
    with captured("text") as stream:
        async with bob_flooded(tmp_path, write_timeout=60.0) as flooded:
            await wait_for(lambda: flooded.server.sessions.get(BOB) is None, 15)
    lines = stream.getvalue().splitlines()
    bob = session_of(lines, rf"\] bound {re.escape(str(BOB))}$")
    (cut,) = [line for line in lines if "is not reading" in line]
    assert f"[{bob} {BOB}]" in cut
    assert "262144 bytes unread" in cut
