"""Moderation and ownership of a room (XEP-0045 §8-10): the muc#admin item lists and changes, the
muc#owner configuration form and destruction; sans-IO like room.py."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from nitro.xmpp.jid import JID, InvalidJID
from plugins.muc.affiliation import (
    Affiliation,
    Role,
    default_role,
    may_change_affiliation,
    may_change_role,
    parse_affiliation,
    parse_role,
)
from plugins.muc.room import Result, Room
from plugins.muc.roomconfig import RoomConfig, parse_submission, render_form
from plugins.muc.xml import DATA, MUC_ADMIN, MUC_OWNER, MUC_USER, StanzaError, make, q, sub


def _bare(text: str) -> str:
    try:
        return str(JID.parse(text).bare)
    except InvalidJID:
        raise StanzaError("jid-malformed", f"not a JID: {text!r}") from None


def _actor(room: Room, sender: str) -> tuple[Affiliation, Role]:
    bare = sender.split("/", 1)[0]
    occupant = room.by_jid.get(sender)
    return room.affiliation(bare), (occupant.role if occupant else Role.NONE)


def admin_get(room: Room, sender: str, query: Element) -> Element:
    """§9.5, §8.5: a list of the users with one affiliation, or the occupants with one role."""
    affiliation, role = _actor(room, sender)
    items = query.findall(q("item", MUC_ADMIN))
    if len(items) != 1:
        raise StanzaError("bad-request", "ask for one affiliation or role")
    item = items[0]
    answer = make(q("query", MUC_ADMIN))
    if (wanted := parse_affiliation(item.get("affiliation"))) is not None:
        if affiliation not in (Affiliation.OWNER, Affiliation.ADMIN) and not (
            wanted is Affiliation.MEMBER and affiliation is Affiliation.MEMBER
        ):
            raise StanzaError("forbidden", "only admins and owners see affiliation lists")
        for jid, held in sorted(room.affiliations.items()):
            if held is wanted:
                sub(answer, q("item", MUC_ADMIN), {"affiliation": held.value, "jid": jid})
        return answer
    if (wanted_role := parse_role(item.get("role"))) is not None:
        if role is not Role.MODERATOR:
            raise StanzaError("forbidden", "only moderators see role lists")
        for occupant in room.by_jid.values():
            if occupant.role is wanted_role:
                sub(
                    answer,
                    q("item", MUC_ADMIN),
                    {
                        "role": occupant.role.value,
                        "nick": occupant.nick,
                        "jid": occupant.jid,
                        "affiliation": room.affiliation(occupant.bare).value,
                    },
                )
        return answer
    raise StanzaError("bad-request", "an item with an affiliation or a role")


def admin_set(room: Room, sender: str, query: Element) -> Result:
    """§8.2-8.4, §9.1-9.8, §10.3-10.7: each item changes a role (by nick) or an affiliation (by JID); the
    whole request is checked before anything changes."""
    affiliation, role = _actor(room, sender)
    items = query.findall(q("item", MUC_ADMIN))
    if not items:
        raise StanzaError("bad-request", "no item to change")
    roles: list[tuple[str, Role, str]] = []
    affiliations: list[tuple[str, Affiliation, str]] = []
    owners = set(room.owners())
    for item in items:
        reason = item.findtext(q("reason", MUC_ADMIN)) or ""
        if (new_role := parse_role(item.get("role"))) is not None and item.get("nick"):
            target = room.find_nick(item.get("nick", ""))
            if target is None:
                raise StanzaError("item-not-found", "no occupant has that nickname")
            target_affiliation = room.affiliation(target.bare)
            if not may_change_role(role, affiliation, target_affiliation, new_role, target.role):
                raise StanzaError("not-allowed", "you may not change that occupant's role")
            roles.append((target.jid, new_role, reason))
        elif (new := parse_affiliation(item.get("affiliation"))) is not None and item.get("jid"):
            bare = _bare(item.get("jid", ""))
            if not may_change_affiliation(affiliation, room.affiliation(bare), new):
                raise StanzaError("forbidden", "you may not change that affiliation")
            if new is Affiliation.OWNER:
                owners.add(bare)
            else:
                owners.discard(bare)
            affiliations.append((bare, new, reason))
        else:
            raise StanzaError("bad-request", "an item has a role and a nick, or an affiliation and a jid")
    if not owners:
        raise StanzaError("conflict", "a room keeps at least one owner")  # §10.6, §10.7
    result = Result()
    for jid, new_role, reason in roles:
        occupant = room.by_jid.get(jid)
        if occupant is None:
            continue
        if new_role is Role.NONE:
            _remove(room, result, occupant.jid, 307, reason)  # §8.2 kick
        else:
            occupant.role = new_role
            room.broadcast_presence(result, occupant, reason=reason)
    for bare, new, reason in affiliations:
        set_affiliation(room, result, bare, new, reason)
    return result


def _remove(room: Room, result: Result, jid: str, code: int, reason: str) -> None:
    occupant = room.by_jid[jid]
    occupant.presence = []
    room.broadcast_presence(result, occupant, codes=[code], unavailable=True, reason=reason)
    room.remove(occupant)


def set_affiliation(room: Room, result: Result, bare: str, new: Affiliation, reason: str = "") -> None:
    """An affiliation changes: stored, and reflected to the user's occupants (their role follows §5.1.2;
    banned: removed with 301, §9.1; no longer allowed in a members-only room: removed with 321, §9.4)."""
    if new is Affiliation.NONE:
        room.affiliations.pop(bare, None)
    else:
        room.affiliations[bare] = new
    result.affiliations[bare] = new
    for occupant in [o for o in room.by_jid.values() if o.bare == bare]:
        if new is Affiliation.OUTCAST:
            _remove(room, result, occupant.jid, 301, reason)
            continue
        role = default_role(new, moderated=room.config.moderated, members_only=room.config.members_only)
        if role is Role.NONE:
            _remove(room, result, occupant.jid, 321, reason)
            continue
        if not (occupant.role is Role.PARTICIPANT and role is Role.VISITOR):
            occupant.role = role
        room.broadcast_presence(result, occupant)


def owner_get(room: Room, sender: str) -> Element:
    """§10.2: the configuration form, for owners only."""
    affiliation, _role = _actor(room, sender)
    if affiliation is not Affiliation.OWNER:
        raise StanzaError("forbidden", "only owners configure the room")
    query = make(q("query", MUC_OWNER))
    admins = sorted(j for j, a in room.affiliations.items() if a is Affiliation.ADMIN)
    query.append(render_form(room.config, room.owners(), admins))
    return query


def owner_set(room: Room, sender: str, query: Element) -> Result:
    """§10.1.2 (instant: an empty submitted form), §10.1.3 (reserved, or cancelled: the new room goes),
    §10.2 (configuration changes: status 104 to the occupants, 172/173 for anonymity; members-only
    turned on removes non-members with 322), §10.9 (destruction: see destroy)."""
    affiliation, _role = _actor(room, sender)
    if affiliation is not Affiliation.OWNER:
        raise StanzaError("forbidden", "only owners configure the room")
    destroy_element = query.find(q("destroy", MUC_OWNER))
    if destroy_element is not None:
        return destroy(room, destroy_element.get("jid"), destroy_element.findtext(q("reason", MUC_OWNER)))
    form = query.find(q("x", DATA))
    if form is None:
        raise StanzaError("bad-request", "expected a data form or <destroy/>")
    if form.get("type") == "cancel":
        result = Result()
        if room.locked:  # §10.1.3: cancelling the initial configuration destroys the new room
            result = destroy(room, None, None)
        return result
    previous = room.config
    if form.get("type") == "submit" and not form.findall(q("field", DATA)):
        submission_config: RoomConfig = previous  # §10.1.2: an instant room takes the defaults
        owners = admins = None
    else:
        submission = parse_submission(form, previous, room.limits.form)
        submission_config, owners, admins = submission.config, submission.owners, submission.admins
    result = Result()
    if owners is not None:
        if not owners:
            raise StanzaError("conflict", "a room keeps at least one owner")
        for bare in [_bare(o) for o in owners]:
            if room.affiliation(bare) is not Affiliation.OWNER:
                set_affiliation(room, result, bare, Affiliation.OWNER)
    if admins is not None:
        for bare in [_bare(a) for a in admins]:
            if room.affiliation(bare) is not Affiliation.ADMIN:
                set_affiliation(room, result, bare, Affiliation.ADMIN)
    room.config = submission_config
    was_locked = room.locked
    room.locked = False
    result.save_room = True
    if submission_config.members_only and not previous.members_only:
        for occupant in list(room.by_jid.values()):
            if room.affiliation(occupant.bare) is Affiliation.NONE:
                _remove(room, result, occupant.jid, 322, "")
    if not was_locked and room.by_jid:
        codes = [104]
        if submission_config.whois != previous.whois:
            codes.append(172 if submission_config.whois == "anyone" else 173)
        if submission_config.logging != previous.logging:
            codes.append(170 if submission_config.logging else 171)
        notice = make(q("message"), {"from": room.jid, "type": "groupchat"})
        x = sub(notice, q("x", MUC_USER))
        for code in codes:
            sub(x, q("status", MUC_USER), {"code": str(code)})
        result.send(notice, room.everyone())
    return result


def destroy(room: Room, alternate: str | None, reason: str | None) -> Result:
    """§10.9: every occupant gets unavailable presence with <destroy/> (and the alternate venue)."""
    result = Result()
    for occupant in list(room.by_jid.values()):
        gone = make(q("destroy", MUC_USER))
        if alternate:
            gone.set("jid", alternate)
        if reason:
            sub(gone, q("reason", MUC_USER), text=reason)
        occupant.presence = []
        presence = room.presence_of(occupant, with_jid=False, unavailable=True, extra=[gone])
        result.send(presence, [occupant.jid])
        room.remove(occupant)
    result.gone = True
    return result
