"""Service discovery (XEP-0030) of the MUC service and its rooms (XEP-0045 §6, §15.6 features)."""

from __future__ import annotations

from collections.abc import Iterable
from xml.etree.ElementTree import Element

from plugins.muc.room import Room
from plugins.muc.xml import (
    DATA,
    DISCO_INFO,
    DISCO_ITEMS,
    MAM,
    MUC,
    MUC_ROOMINFO,
    OCCUPANT_ID,
    PING,
    SELF_PING,
    SID,
    make,
    q,
    sub,
)


def service_info(name: str) -> Element:
    query = make(q("query", DISCO_INFO))
    sub(query, q("identity", DISCO_INFO), {"category": "conference", "type": "text", "name": name})
    for feature in (DISCO_INFO, DISCO_ITEMS, MUC, PING, OCCUPANT_ID):
        sub(query, q("feature", DISCO_INFO), {"var": feature})
    return query


def service_items(rooms: Iterable[Room]) -> Element:
    """§6.3: the public rooms (hidden and locked ones are not listed)."""
    query = make(q("query", DISCO_ITEMS))
    for room in sorted(rooms, key=lambda r: r.jid):
        if room.config.public and not room.locked:
            sub(query, q("item", DISCO_ITEMS), {"jid": room.jid, "name": room.config.name or room.jid})
    return query


def room_info(room: Room) -> Element:
    """§6.4: the room's identity, its features (muc_public/hidden, …) and the muc#roominfo form."""
    config = room.config
    query = make(q("query", DISCO_INFO))
    sub(
        query,
        q("identity", DISCO_INFO),
        {"category": "conference", "type": "text", "name": config.name or room.jid},
    )
    features = [
        MUC,
        DISCO_INFO,
        DISCO_ITEMS,
        SID,
        OCCUPANT_ID,
        SELF_PING,
        MAM,
        "muc_public" if config.public else "muc_hidden",
        "muc_persistent" if config.persistent else "muc_temporary",
        "muc_membersonly" if config.members_only else "muc_open",
        "muc_moderated" if config.moderated else "muc_unmoderated",
        "muc_nonanonymous" if config.whois == "anyone" else "muc_semianonymous",
        "muc_passwordprotected" if config.password_protected else "muc_unsecured",
    ]
    for feature in features:
        sub(query, q("feature", DISCO_INFO), {"var": feature})
    form = sub(query, q("x", DATA), {"type": "result"})
    for var, value in (
        ("FORM_TYPE", MUC_ROOMINFO),
        ("muc#roominfo_description", config.description),
        ("muc#roominfo_occupants", str(len(room.by_jid))),
        ("muc#roominfo_subject", room.subject),
        ("muc#roomconfig_roomname", config.name),
        ("muc#roomconfig_changesubject", "1" if config.change_subject else "0"),
    ):
        sub(sub(form, q("field", DATA), {"var": var}), q("value", DATA), text=value)
    return query


def room_items() -> Element:
    """§6.5: occupants are not listed (their nicknames are for occupants only)."""
    return make(q("query", DISCO_ITEMS))
