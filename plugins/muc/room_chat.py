"""Messages in a room (XEP-0045 §7.4-7.9, §8.1, §8.6): groupchat, subject, private messages,
mediated invitations and declines, voice requests; sans-IO like room.py."""

from __future__ import annotations

import uuid
from xml.etree.ElementTree import Element

from slixmpp.xmlstream import tostring

from plugins.muc.affiliation import Affiliation, Role
from plugins.muc.history import Entry
from plugins.muc.room import Occupant, Result, Room
from plugins.muc.xml import (
    CLIENT,
    DATA,
    MUC_REQUEST,
    MUC_USER,
    OCCUPANT_ID,
    SID,
    STANZA,
    StanzaError,
    make,
    q,
    renamespaced,
    sub,
)

# What a room strips from a message before reflecting it: ids only the room may set (XEP-0359 §5,
# XEP-0421 §4), and the MUC user payload of the sender.
_FORGEABLE = {q("occupant-id", OCCUPANT_ID), q("x", MUC_USER)}


def _reflected(room: Room, occupant: Occupant, message: Element, kind: str) -> Element:
    copy = make(q("message"), {"from": room.occupant_jid(occupant), "type": kind})
    if (message_id := message.get("id")) is not None:
        copy.set("id", message_id)
    for child in message:
        if child.tag == q("stanza-id", SID):
            if child.get("by") == room.jid:
                continue
        elif child.tag in _FORGEABLE:
            continue
        copy.append(child)
    sub(copy, q("occupant-id", OCCUPANT_ID), {"id": occupant.occupant_id})
    return copy


def groupchat(room: Room, sender: str, message: Element, *, now: float) -> Result:
    """§7.4: a message to all occupants, reflected to its sender too, with a stanza-id (XEP-0359) and
    archived; a subject alone changes the subject (§8.1)."""
    occupant = room.by_jid.get(sender)
    if occupant is None:
        raise StanzaError("not-acceptable", "you are not in this room")
    if occupant.role is Role.VISITOR:
        raise StanzaError("forbidden", "visitors may not speak in this moderated room")  # §7.4
    result = Result()
    body = message.find(q("body"))
    subject = message.find(q("subject"))
    if subject is not None and body is None:
        if not (occupant.role is Role.MODERATOR or room.config.change_subject):
            raise StanzaError("forbidden", "only moderators may change the subject")  # §8.1
        room.subject = subject.text or ""
        room.subject_from = room.occupant_jid(occupant)
        result.save_room = True
    copy = _reflected(room, occupant, message, "groupchat")
    if body is not None:
        stanza_id = str(uuid.uuid4())
        sub(copy, q("stanza-id", SID), {"id": stanza_id, "by": room.jid})
        if room.config.logging:
            stored = renamespaced(copy, STANZA, CLIENT)
            text = tostring(stored)  # with xmlns="jabber:client" on the message
            entry = Entry(text, now, stanza_id, room.occupant_jid(occupant))
            room.history.add(entry)
            result.archive = entry
    result.send(copy, room.everyone())
    return result


def private(room: Room, sender: str, nick: str, message: Element) -> Result:
    """§7.5: a private message to one occupant through the room."""
    occupant = room.by_jid.get(sender)
    if occupant is None:
        raise StanzaError("not-acceptable", "you are not in this room")
    target = room.find_nick(nick)
    if target is None:
        raise StanzaError("item-not-found", "no occupant has that nickname")
    allowed = room.config.allow_pm
    if allowed == "none" or (
        (allowed == "moderators" and occupant.role is not Role.MODERATOR)
        or (allowed == "participants" and occupant.role is Role.VISITOR)
    ):
        raise StanzaError("forbidden", "private messages are not allowed here")
    copy = _reflected(room, occupant, message, message.get("type") or "chat")
    sub(copy, q("x", MUC_USER))  # §7.5: marks a private message sent through a room
    result = Result()
    result.send(copy, [target.jid])
    return result


def invite(room: Room, sender: str, invite_element: Element, password_for: str | None) -> Result:
    """§7.8.2: a mediated invitation, sent on by the room to the invitee; in a members-only room an
    admin's (or, when allowed, any occupant's) invitation makes the invitee a member."""
    occupant = room.by_jid.get(sender)
    if occupant is None:
        raise StanzaError("not-acceptable", "only occupants may invite")
    bare = sender.split("/", 1)[0]
    affiliation = room.affiliation(bare)
    may_add = affiliation in (Affiliation.OWNER, Affiliation.ADMIN) or room.config.allow_invites
    if room.config.members_only and not may_add:
        raise StanzaError("forbidden", "only admins may invite to this members-only room")
    invitee = invite_element.get("to")
    if not invitee:
        raise StanzaError("bad-request", "an invitation names its invitee")
    result = Result()
    if room.config.members_only and room.affiliation(invitee.split("/", 1)[0]) is Affiliation.NONE:
        bare_invitee = invitee.split("/", 1)[0]
        room.affiliations[bare_invitee] = Affiliation.MEMBER
        result.affiliations[bare_invitee] = Affiliation.MEMBER
    message = make(q("message"), {"from": room.jid})
    x = sub(message, q("x", MUC_USER))
    forwarded = sub(x, q("invite", MUC_USER), {"from": sender})
    reason = invite_element.findtext(q("reason", MUC_USER))
    if reason:
        sub(forwarded, q("reason", MUC_USER), text=reason)
    if password_for:
        sub(x, q("password", MUC_USER), text=password_for)
    sub(
        message,
        q("body"),
        text=f"{sender} invites you to the room {room.jid}" + (f": {reason}" if reason else ""),
    )
    result.send(message, [invitee])
    return result


def decline(room: Room, sender: str, decline_element: Element) -> Result:
    """§7.8.2: a declined invitation goes back to the inviter."""
    inviter = decline_element.get("to")
    if not inviter:
        raise StanzaError("bad-request", "a decline names the inviter")
    message = make(q("message"), {"from": room.jid})
    x = sub(message, q("x", MUC_USER))
    forwarded = sub(x, q("decline", MUC_USER), {"from": sender})
    reason = decline_element.findtext(q("reason", MUC_USER))
    if reason:
        sub(forwarded, q("reason", MUC_USER), text=reason)
    result = Result()
    result.send(message, [inviter])
    return result


def _form_values(form: Element) -> dict[str, str]:
    values: dict[str, str] = {}
    for field in form.findall(q("field", DATA)):
        var = field.get("var")
        if var:
            values[var] = field.findtext(q("value", DATA)) or ""
    return values


def voice_request(room: Room, sender: str, form: Element) -> Result:
    """§8.6: a visitor asks for voice (the request goes to every moderator as a form); a moderator's
    submitted form with request_allow true grants it (§8.6 "approves")."""
    occupant = room.by_jid.get(sender)
    if occupant is None:
        raise StanzaError("not-acceptable", "you are not in this room")
    values = _form_values(form)
    result = Result()
    if occupant.role is Role.MODERATOR and "muc#request_allow" in values:
        target = room.find_nick(values.get("muc#roomnick", ""))
        if target is None:
            raise StanzaError("item-not-found", "no occupant has that nickname")
        if values["muc#request_allow"] in ("1", "true") and target.role is Role.VISITOR:
            target.role = Role.PARTICIPANT
            room.broadcast_presence(result, target)
        return result
    if values.get("muc#role") != "participant":
        raise StanzaError("bad-request", "a voice request asks for the participant role")
    if occupant.role is not Role.VISITOR:
        return result  # already has voice: nothing to ask
    request = make(q("message"), {"from": room.jid})
    x = sub(request, q("x", DATA), {"type": "form"})
    sub(x, q("title", DATA), text="Voice request")
    for var, kind, value in (
        ("FORM_TYPE", "hidden", MUC_REQUEST),
        ("muc#role", "list-single", "participant"),
        ("muc#jid", "jid-single", occupant.jid),
        ("muc#roomnick", "text-single", occupant.nick),
        ("muc#request_allow", "boolean", "false"),
    ):
        sub(sub(x, q("field", DATA), {"var": var, "type": kind}), q("value", DATA), text=value)
    moderators = [o.jid for o in room.by_jid.values() if o.role is Role.MODERATOR]
    result.send(request, moderators)
    return result
