"""Pure functions of the archive (nitro/modules/mam_archive.py): which messages XEP-0313 §6.1.1 and the
XEP-0334 hints let into an archive, the ids it makes, and its XEP-0359 stanza-ids on a message."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.modules.mam_archive import archivable, new_archive_id, stamp_stanza_id, strip_stanza_ids
from nitro.xmpp.jid import JID

CHAT_STATE = "<active xmlns='http://jabber.org/protocol/chatstates'/>"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("<message type='chat'><body>hi</body></message>", True),
        ("<message><body>hi</body></message>", True),  # no type: normal
        ("<message type='normal'><!-- a comment --><body>hi</body></message>", True),
        ("<message type='headline'><body>hi</body></message>", False),
        ("<message type='groupchat'><body>hi</body></message>", False),
        ("<message type='error'><body>hi</body></message>", False),
        (f"<message type='chat'>{CHAT_STATE}</message>", False),  # no body
        ("<message type='chat'><x xmlns='jabber:x:oob'><body>hi</body></x></message>", False),  # not a child
        (f"<message type='chat'>{CHAT_STATE}<store xmlns='urn:xmpp:hints'/></message>", True),
        ("<message type='chat'><body>hi</body><no-store xmlns='urn:xmpp:hints'/></message>", False),
        ("<message type='chat'><no-permanent-store xmlns='urn:xmpp:hints'/><body>hi</body></message>", False),
        (
            "<message type='chat'><body>hi</body><store xmlns='urn:xmpp:hints'/>"
            "<no-store xmlns='urn:xmpp:hints'/></message>",
            False,  # no-store wins
        ),
        (f"<message type='chat'>{CHAT_STATE}<store xmlns='urn:xmpp:hintsX'/></message>", False),
        ("<message type='chat'><body>hi</body><no-store xmlns='urn:xmpp:hints:other'/></message>", True),
        (f"<message type='chat'>{CHAT_STATE}<body xmlns='urn:example'>hi</body></message>", False),
    ],
)
def test_which_messages_are_archived(message: str, kept: bool) -> None:
    element = etree.fromstring(message.replace("<message", "<message xmlns='jabber:client'", 1))
    assert archivable(element) is kept


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.mark.parametrize("ms", [0, 1, 31, 32, 1023, 1024, 1_733_450_000_123, (1 << 48) - 1, 1 << 48])
def test_an_id_begins_with_its_millisecond(ms: int) -> None:
    archive_id = new_archive_id(ms)
    assert len(archive_id) == 26
    assert set(archive_id) <= set(CROCKFORD)
    # 48 bits of milliseconds (beyond them wrapping) after two zero bits: ten base32 digits
    expected = "".join(CROCKFORD[((ms % (1 << 48)) >> shift) & 31] for shift in range(45, -1, -5))
    assert archive_id[:10] == expected


def test_ids_sort_by_time_and_their_random_digits_take_every_value() -> None:
    times = [0, 1, 999, 1000, 1_733_450_000_000, 1_733_450_000_001, (1 << 48) - 1]
    ids = [new_archive_id(ms) for ms in times]
    assert ids == sorted(ids)
    assert len({archive_id[:10] for archive_id in ids}) == len(times)
    randoms = [new_archive_id(7)[10:] for _ in range(2000)]
    assert len(set(randoms)) == 2000
    for position in range(16):  # each digit of the 80 random bits takes all 32 values
        assert {r[position] for r in randoms} == set(CROCKFORD)


ALICE, BOB = JID.parse("alice@example.org"), JID.parse("bob@example.org")


def test_stanza_ids_of_the_given_archives_are_stripped_and_others_kept() -> None:
    message = etree.fromstring(
        "<message xmlns='jabber:client'><body>hi</body>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='alice@example.org'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='ours' by='bob@example.org'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='theirs' by='room@muc.example.net'/>"
        "<stanza-id xmlns='urn:xmpp:sid:0' id='bad' by='@@'/>"
        "<stanza-id xmlns='urn:example' id='other' by='alice@example.org'/>"
        "</message>"
    )
    strip_stanza_ids(message, ALICE)
    assert [node.get("id") for node in list(message)[1:]] == ["ours", "theirs", "bad", "other"]
    strip_stanza_ids(message, ALICE, BOB)
    assert [node.get("id") for node in list(message)[1:]] == ["theirs", "bad", "other"]


def test_a_stamped_stanza_id_declares_its_namespace() -> None:
    message = etree.fromstring("<message xmlns='jabber:client'><body>hi</body></message>")
    stamp_stanza_id(message, "01ABC", ALICE)
    assert etree.tostring(message) == (
        b'<message xmlns="jabber:client"><body>hi</body>'
        b'<stanza-id xmlns="urn:xmpp:sid:0" id="01ABC" by="alice@example.org"/></message>'
    )
    strip_stanza_ids(message, ALICE)
    assert etree.tostring(message) == b'<message xmlns="jabber:client"><body>hi</body></message>'
