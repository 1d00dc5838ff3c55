"""The core client scenarios again, with real slixmpp clients against a Nitro whose storage is MariaDB.

The scenarios are the existing tests themselves, imported here: pytest collects them a second time in
this module, where `config` points the server at the MariaDB test database (emptied for each test).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import slixmpp
import test_c2s
import test_mam
import test_message
import test_offline
import test_pep
import test_presence
import test_private
import test_roster
import test_vcard
from conftest import Clients, make_config, next_event, result_of, wait_for
from sqlbackends import SqlBackend

from nitro.config import Config
from nitro.server import Server

SCENARIOS = {
    test_c2s: (
        "test_each_mechanism_logs_in_over_starttls",
        "test_unknown_user_fails_like_a_wrong_password",
        "test_wrong_password_is_not_authorized_and_stream_survives",
    ),
    test_roster: (
        "test_roster_set_then_get_returns_the_item_with_a_version",
        "test_roster_push_reaches_every_interested_resource",
        "test_unchanged_roster_version_gives_an_empty_result",
        "test_a_stale_client_gets_the_whole_roster_after_reconnecting",
        "test_roster_remove_deletes_the_item_and_pushes_removal",
    ),
    test_presence: (
        "test_alice_and_bob_subscribe_to_each_other_and_see_each_other_come_and_go",
        "test_a_subscription_request_to_an_offline_user_is_delivered_when_they_log_in",
    ),
    test_message: (
        "test_alice_sends_bob_a_chat",
        "test_message_to_a_user_who_does_not_exist_is_service_unavailable",
    ),
    test_offline: (
        "test_three_messages_wait_for_bob_and_arrive_in_order",
        "test_a_chat_with_body_and_chat_state_is_stored",
    ),
    test_mam: (
        "test_alice_and_bob_chat_and_both_archives_keep_it",
        "test_slixmpp_retrieves_and_iterates_the_archive",
        "test_after_id_before_id_and_ids",
        "test_pages_carry_first_last_count_and_index",
    ),
    test_pep: (
        "settled",  # the PEP module's autouse fixture, which its scenario needs
        "test_alice_publishes_an_avatar_and_her_subscribed_contact_is_notified_and_fetches_it",
    ),
    test_private: ("test_slixmpp_bookmarks_round_trip_through_private_storage",),
    test_vcard: ("test_alice_stores_her_vcard_and_bob_reads_it",),
}
for _module, _names in SCENARIOS.items():
    for _name in _names:
        globals()[_name] = getattr(_module, _name)  # collected here, with this module's `config`


@pytest.fixture
def config(tmp_path: Path, mariadb_backend: SqlBackend) -> Config:
    return make_config(tmp_path, storage={"dsn": mariadb_backend.dsn, "pool_size": 4})


async def test_the_server_really_stores_in_mariadb(
    server: Server, clients: Clients, mariadb_backend: SqlBackend
) -> None:
    """Alice and Bob chat with emoji in roster names and bodies; the rows are in MariaDB, intact."""
    alice = await clients.login(await clients.user("alice"))
    bob_jid = await clients.user("bob")
    await result_of(alice.update_roster(slixmpp.JID(bob_jid), name="Bob 🎸", groups=["Ami·e·s 😀"]))
    alice.send_message(mto=slixmpp.JID(bob_jid), mbody="hors ligne 𝄞🚀", mtype="chat")
    bob = await clients.login(bob_jid)
    message = await next_event(bob, "message")
    assert message["body"] == "hors ligne 𝄞🚀"

    mariadb = mariadb_backend.mariadb
    assert mariadb is not None
    assert sorted(row[0] for row in mariadb.rows("SELECT username FROM accounts")) == [b"alice", b"bob"]
    assert mariadb.rows("SELECT contact, name, `groups` FROM roster_items") == [
        (b"bob@localhost", "Bob 🎸", '["Ami·e·s 😀"]')
    ]
    # The archive is written off the delivery path, in batches (nitro/modules/archive_writer.py): its rows
    # may land a batch delay after the message was delivered.
    await wait_for(lambda: bool(mariadb.rows("SELECT stanza FROM archive_messages")))
    stanzas = [row[0] for row in mariadb.rows("SELECT stanza FROM archive_messages")]
    assert stanzas
    assert all("hors ligne 𝄞🚀".encode() in stanza for stanza in stanzas)
