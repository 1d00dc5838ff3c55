"""The muc plugin's pure parts: nickname rules, affiliation and role rules, the configuration form,
history limits, and its config keys (the shipped config enables it at conference.localhost)."""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element

import pytest

from nitro.config import ConfigError, load_config
from nitro.sdk import settings_from_config
from plugins.muc.affiliation import Affiliation, Role, default_role, may_change_affiliation, may_change_role
from plugins.muc.history import Entry, HistoryRequest, select
from plugins.muc.nick import check_nick, nick_key
from plugins.muc.room import Out, RoomLimits
from plugins.muc.roomconfig import Limits, RoomConfig, parse_submission
from plugins.muc.service import Service, ServiceRules
from plugins.muc.settings import parse_options, rules_and_limits
from plugins.muc.xml import DATA, MUC, MUC_ROOMCONFIG, STANZAS, StanzaError, q, sub

CONFIG = Path(__file__).resolve().parent.parent / "config" / "nitro.toml"


@pytest.mark.parametrize(
    ("nick", "condition"),
    [
        ("", "jid-malformed"),
        ("a\u0007b", "jid-malformed"),
        (" pad", "not-acceptable"),
        ("a  b", "not-acceptable"),
    ],
)
def test_illegal_nicknames(nick: str, condition: str) -> None:
    with pytest.raises(StanzaError) as refused:
        check_nick(nick, 64)
    assert refused.value.condition == condition


def test_nicknames() -> None:
    assert check_nick("Ünïcødé 😀", 64) == "Ünïcødé 😀"
    assert nick_key("Alice") == nick_key("ALICE")
    with pytest.raises(StanzaError):
        check_nick("x" * 65, 64)


def test_roles_and_affiliations() -> None:
    assert default_role(Affiliation.NONE, moderated=True, members_only=False) is Role.VISITOR
    assert default_role(Affiliation.NONE, moderated=False, members_only=True) is Role.NONE
    assert default_role(Affiliation.ADMIN, moderated=True, members_only=True) is Role.MODERATOR
    assert may_change_affiliation(Affiliation.ADMIN, Affiliation.MEMBER, Affiliation.OUTCAST)
    assert not may_change_affiliation(Affiliation.ADMIN, Affiliation.OWNER, Affiliation.NONE)
    assert not may_change_affiliation(Affiliation.MEMBER, Affiliation.NONE, Affiliation.MEMBER)
    # a moderator kicks a participant, never an admin; only admins grant moderator
    assert may_change_role(Role.MODERATOR, Affiliation.ADMIN, Affiliation.NONE, Role.NONE, Role.PARTICIPANT)
    assert not may_change_role(
        Role.MODERATOR, Affiliation.ADMIN, Affiliation.ADMIN, Role.NONE, Role.MODERATOR
    )
    assert not may_change_role(
        Role.MODERATOR, Affiliation.MEMBER, Affiliation.NONE, Role.MODERATOR, Role.VISITOR
    )
    assert not may_change_role(
        Role.PARTICIPANT, Affiliation.MEMBER, Affiliation.NONE, Role.NONE, Role.VISITOR
    )


def form(**fields: str) -> Element:
    x = Element(q("x", DATA), {"type": "submit"})
    sub(sub(x, q("field", DATA), {"var": "FORM_TYPE"}), q("value", DATA), text=MUC_ROOMCONFIG)
    for var, value in fields.items():
        sub(sub(x, q("field", DATA), {"var": f"muc#roomconfig_{var}"}), q("value", DATA), text=value)
    return x


def test_config_form() -> None:
    parsed = parse_submission(form(membersonly="1", whois="anyone", maxusers="50"), RoomConfig(), Limits())
    assert (parsed.config.members_only, parsed.config.whois, parsed.config.max_users) == (True, "anyone", 50)
    for bad, condition in (
        (form(membersonly="yes"), "bad-request"),
        (form(whois="everyone"), "bad-request"),
        (form(maxusers="-1"), "bad-request"),
        (form(roomname="n" * 257), "not-acceptable"),
        (form(passwordprotectedroom="1"), "not-acceptable"),  # no password given
        (Element(q("x", DATA), {"type": "form"}), "bad-request"),
    ):
        with pytest.raises(StanzaError) as refused:
            parse_submission(bad, RoomConfig(), Limits())
        assert refused.value.condition == condition


def test_history_limits() -> None:
    entries = [Entry(f"<m>{n}</m>", 1000.0 + n, str(n), "r@s/n") for n in range(100)]
    assert len(select(entries, HistoryRequest(maxstanzas=10**9), now=2000, default=20, cap=50)) == 50
    assert len(select(entries, HistoryRequest(), now=2000, default=20, cap=50)) == 20
    assert [
        e.stanza_id for e in select(entries, HistoryRequest(seconds=2), now=1100, default=20, cap=50)
    ] == [
        "98",
        "99",
    ]
    assert len(select(entries, HistoryRequest(maxchars=len("<m>99</m>")), now=2000, default=20, cap=50)) == 1
    assert select(entries, HistoryRequest(maxchars=0), now=2000, default=20, cap=50) == []
    assert len(select(entries, HistoryRequest(since=1090.0), now=2000, default=20, cap=50)) == 10


def test_options_and_shipped_config() -> None:
    with pytest.raises(ConfigError, match="unknown key 'maxusers'"):
        parse_options({"maxusers": 3})
    with pytest.raises(ConfigError, match="history_max"):
        parse_options({"history_max": -1})
    with pytest.raises(ConfigError, match="expected int"):
        parse_options({"max_occupants": True})
    settings = settings_from_config(load_config(CONFIG), "muc")
    assert settings.subdomain == "conference.localhost"
    options, rules, limits = rules_and_limits(settings)
    assert (rules.domain, options.history_max, limits.history_max) == ("conference.localhost", 50, 50)


async def test_service_room_creation_rules() -> None:
    """creators = "local": a user of another domain may not create a room (not-allowed), a local user may;
    a room name over max_room_id_bytes is not-acceptable. The service runs here without a network."""
    sent: list[Out] = []
    rules = ServiceRules(
        domain="conference.localhost", server="localhost", creators="local", max_room_id_bytes=8
    )
    service = Service(rules, RoomLimits(), None, sent.append)

    def join(sender: str, room: str) -> Element:
        presence = Element(q("presence"), {"from": sender, "to": f"{room}@conference.localhost/nick"})
        sub(presence, q("x", MUC))
        return presence

    await service.handle(join("eve@elsewhere.example/r", "desk"))
    await service.handle(join("alice@localhost/r", "d" * 9))
    await service.handle(join("alice@localhost/r", "desk"))
    errors = [out.stanza.find(f".//{{{STANZAS}}}*") for out in sent if out.stanza.get("type") == "error"]
    assert [e.tag.split("}")[1] for e in errors if e is not None] == ["not-allowed", "not-acceptable"]
    assert list(service.rooms) == ["desk@conference.localhost"]
    assert service.rooms["desk@conference.localhost"].owners() == ["alice@localhost"]
