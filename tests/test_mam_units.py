"""Pure functions of the archive (nitro/modules/mam_archive.py): which messages XEP-0313 §6.1.1 and the
XEP-0334 hints let into an archive."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.modules.mam_archive import archivable

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
