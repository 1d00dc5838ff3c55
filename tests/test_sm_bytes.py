"""Stream Management queues bounded in bytes (issue 11 item 4): per session and for the whole process; at the
bound the session is closed (XEP-0198 §4 leaves the bound to the server) and what it never acknowledged goes
where §4 sends it: offline storage for messages."""

from __future__ import annotations

from pathlib import Path

import slixmpp
from conftest import Clients, make_config, started_server, wait_for
from lxml import etree
from test_c2s import stream_error
from test_stream_management import bodies, body, login_collecting, managed, ping, stored_offline

from nitro.server import Server
from nitro.xmpp.sm import QueueBudget, SmState, parse_stanza

TEXT = "x" * 8000  # a message of some 8.2 kB as queued


def message(n: int) -> etree._Element:
    return parse_stanza(f"<message to='bob@localhost/phone' id='m{n}'><body>{TEXT}</body></message>".encode())


def test_the_queue_counts_the_serialised_size_of_what_it_holds() -> None:
    state = SmState.start(resume=True, resume_timeout=60)
    for n in range(3):
        state.sent(message(n), delay_from="localhost")
    size = len(etree.tostring(state.unacked[0]))
    assert size > 8000
    assert state.unacked_bytes == 3 * size
    state.acknowledge(2)
    assert state.unacked_bytes == size
    assert SmState.from_dict(state.to_dict()).unacked_bytes == size  # measured again in a successor
    state.take_unacked()
    assert state.unacked_bytes == 0


def test_past_the_total_the_largest_queue_is_cut_once() -> None:
    cut: list[str] = []
    budget = QueueBudget(lambda: 30_000)
    small, large = (
        SmState.start(resume=True, resume_timeout=60),
        SmState.start(resume=True, resume_timeout=60),
    )
    budget.join(small, lambda: cut.append("small"))
    budget.join(large, lambda: cut.append("large"))
    for n in (1, 2, 3):
        large.sent(message(n))
    assert cut == []
    small.sent(message(4))  # over the total: large holds the most
    assert cut == ["large"]
    small.sent(message(5))  # large's close will bring it back under: nobody else is cut
    assert cut == ["large"]
    large.take_unacked()  # large's session ended
    assert budget.total == small.unacked_bytes
    assert large.budget is None


async def test_a_client_that_never_acks_large_stanzas_is_cut_off_at_the_byte_bound(tmp_path: Path) -> None:
    """Bob never acknowledges; Alice sends him six messages of 8 kB while his bound is 30 kB: the fourth puts
    his queue past it and his stream ends with `<policy-violation/>`; all six reach offline storage and come
    to his next login. (Not necessarily in order: messages routed while his unacknowledged ones are being
    stored can be stored between them, as before this bound.)"""
    limits = {"max_unacked_bytes": 30_000, "ack_request_every": 100}
    config = make_config(tmp_path, stream_management=limits)
    async with started_server(config) as server:
        pool = Clients(server)
        try:
            alice_jid, bob_jid = await pool.user("alice"), await pool.user("bob")
            bob, _previd = await managed(server, "bob", "phone")
            alice = await pool.login(alice_jid)
            for n in range(1, 7):
                alice.send_message(mto=slixmpp.JID(f"{bob_jid}/phone"), mbody=f"{n} {TEXT}")
            data = await stream_error(bob.reader, "policy-violation")
            assert b"30000 bytes unacknowledged" in data
            assert len(bodies(data)) == 4  # written, never acknowledged
            bob.writer.close()
            await stored_offline(server, "bob", 6)
            received = await login_collecting(pool, bob_jid)
            await wait_for(lambda: len(received) == 6)
            assert sorted(text.split()[0] for text in received) == ["1", "2", "3", "4", "5", "6"]
        finally:
            await pool.close_all()


async def test_past_the_total_the_session_holding_the_most_is_closed(tmp_path: Path) -> None:
    """Bob and Carol never acknowledge; together they may hold 40 kB. Bob holds three messages of 8 kB,
    Carol gets a second one: Bob's stream ends with `<resource-constraint/>`, his messages go offline, and
    Carol's session carries on."""
    limits = {"max_unacked_bytes_total": 40_000, "ack_request_every": 100}
    config = make_config(tmp_path, stream_management=limits)
    async with started_server(config) as server:
        pool = Clients(server)
        try:
            alice_jid = await pool.user("alice")
            await pool.user("bob")
            await pool.user("carol")
            bob, _ = await managed(server, "bob", "phone")
            carol, _ = await managed(server, "carol", "phone")
            alice = await pool.login(alice_jid)
            for n in (1, 2, 3):
                alice.send_message(mto=slixmpp.JID("bob@localhost/phone"), mbody=f"{n} {TEXT}")
            await bob.expect(body(f"3 {TEXT}"))
            for n in (4, 5):
                alice.send_message(mto=slixmpp.JID("carol@localhost/phone"), mbody=f"{n} {TEXT}")
            await stream_error(bob.reader, "resource-constraint")
            bob.writer.close()
            await stored_offline(server, "bob", 3)
            await carol.expect(body(f"5 {TEXT}"))
            carol.send(ping(1))
            await carol.expect(b'id="p1"')  # still served
            assert_total(server)
        finally:
            await pool.close_all()


def assert_total(server: Server) -> None:
    """The process-wide total is the sum of the queues of the sessions that remain."""
    (carol,) = [session for session in server.sessions if str(session.jid.bare) == "carol@localhost"]
    assert carol.sm is not None
    assert carol.sm.budget is not None
    assert carol.sm.budget.total == carol.sm.unacked_bytes
