"""Room nicknames (XEP-0045 §7.2.1, RFC 8266): which are legal, and when two are the same nickname."""

from __future__ import annotations

from functools import lru_cache

from precis_i18n import get_profile

from nitro.xmpp.jid import JID, InvalidJID
from plugins.muc.xml import StanzaError

_NICKNAME = get_profile("NicknameCasePreserved")
_NICKNAME_KEY = get_profile("NicknameCaseMapped")


@lru_cache(maxsize=4096)
def check_nick(nick: str, max_length: int) -> str:
    """`nick` as the room will use it, or jid-malformed / not-acceptable: a nickname is a valid
    resourcepart (RFC 7622 §3.4) that the Nickname profile accepts unchanged (no control characters,
    no leading, trailing or doubled spaces: XEP-0045 §7.2.1 recommends RFC 8266), of at most
    `max_length` characters."""
    if not nick:
        raise StanzaError("jid-malformed", "a nickname is required (the resource of the room JID)")
    try:
        prepared = JID.make("room", "muc.invalid", nick).resource
    except InvalidJID as error:
        raise StanzaError("jid-malformed", f"illegal nickname: {error}") from None
    assert prepared is not None
    try:
        normal = _NICKNAME.enforce(prepared)
    except UnicodeError:
        raise StanzaError("jid-malformed", "illegal characters in the nickname") from None
    if normal != prepared:
        raise StanzaError("not-acceptable", "nicknames have no leading, trailing or doubled spaces")
    if len(prepared) > max_length:
        raise StanzaError("not-acceptable", f"nicknames are at most {max_length} characters")
    return prepared


@lru_cache(maxsize=4096)
def nick_key(nick: str) -> str:
    """The form two nicknames are compared in (RFC 8266 §2.4: case-mapped), so "Alice" takes "alice"."""
    try:
        return str(_NICKNAME_KEY.enforce(nick))
    except UnicodeError:
        return nick
