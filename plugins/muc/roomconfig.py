"""A room's configuration (XEP-0045 §10.2, the muc#roomconfig form): the values, the form, its parsing."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

from plugins.muc.xml import DATA, MUC_ROOMCONFIG, StanzaError, make, q, sub

WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")


@dataclass(frozen=True, slots=True)
class RoomConfig:
    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password_protected: bool = False
    password: str = ""
    whois: str = "moderators"  # "anyone": non-anonymous (real JIDs to everyone)
    change_subject: bool = False  # participants may change the subject
    allow_invites: bool = False  # participants may invite to a members-only room
    allow_pm: str = "anyone"
    max_users: int = 0  # 0: the service's limit only
    logging: bool = True  # messages are archived (MAM) and status 170 is sent on entry

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RoomConfig:
        stored: dict[str, Any] = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in stored.items() if key in known})


@dataclass(frozen=True, slots=True)
class Limits:
    """What the service allows in a form (from [plugins.muc])."""

    max_name_length: int = 256
    max_description_length: int = 1024
    max_users: int = 1000


# (form var, attribute, field type, label)
_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("muc#roomconfig_roomname", "name", "text-single", "Title"),
    ("muc#roomconfig_roomdesc", "description", "text-single", "Description"),
    ("muc#roomconfig_persistentroom", "persistent", "boolean", "Persistent (kept when empty)"),
    ("muc#roomconfig_publicroom", "public", "boolean", "Listed in the public directory"),
    ("muc#roomconfig_membersonly", "members_only", "boolean", "Members only"),
    ("muc#roomconfig_moderatedroom", "moderated", "boolean", "Moderated (visitors need voice)"),
    ("muc#roomconfig_passwordprotectedroom", "password_protected", "boolean", "Password protected"),
    ("muc#roomconfig_roomsecret", "password", "text-private", "Password"),
    ("muc#roomconfig_whois", "whois", "list-single", "Who may see real JIDs"),
    ("muc#roomconfig_changesubject", "change_subject", "boolean", "Participants may change the subject"),
    ("muc#roomconfig_allowinvites", "allow_invites", "boolean", "Participants may invite"),
    ("muc#roomconfig_allowpm", "allow_pm", "list-single", "Who may send private messages"),
    ("muc#roomconfig_maxusers", "max_users", "list-single", "Maximum occupants (0: no limit)"),
    ("muc#roomconfig_enablelogging", "logging", "boolean", "Archive messages (MAM)"),
)
_BY_VAR = {var: (attribute, kind) for var, attribute, kind, _label in _FIELDS}
_OPTIONS = {"whois": WHOIS, "allow_pm": ALLOW_PM}
_MAX_USERS_OPTIONS = ("10", "20", "50", "100", "200", "500", "1000", "0")


def render_form(config: RoomConfig, owners: list[str], admins: list[str]) -> Element:
    """The form an owner gets (§10.1.3 reserved room, §10.2 later changes), filled with `config`."""
    form = make(q("x", DATA), {"type": "form"})
    sub(form, q("title", DATA), text="Room configuration")
    form_type = sub(form, q("field", DATA), {"var": "FORM_TYPE", "type": "hidden"})
    sub(form_type, q("value", DATA), text=MUC_ROOMCONFIG)
    for var, attribute, kind, label in _FIELDS:
        field = sub(form, q("field", DATA), {"var": var, "type": kind, "label": label})
        value = getattr(config, attribute)
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        sub(field, q("value", DATA), text=text)
        options = _MAX_USERS_OPTIONS if attribute == "max_users" else _OPTIONS.get(attribute, ())
        for option in options:
            sub(sub(field, q("option", DATA), {"label": option}), q("value", DATA), text=option)
    for var, jids, label in (
        ("muc#roomconfig_roomowners", owners, "Owners"),
        ("muc#roomconfig_roomadmins", admins, "Admins"),
    ):
        field = sub(form, q("field", DATA), {"var": var, "type": "jid-multi", "label": label})
        for jid in jids:
            sub(field, q("value", DATA), text=jid)
    return form


@dataclass(frozen=True, slots=True)
class Submission:
    """A parsed submitted form: the new config, and owners/admins when the form named them."""

    config: RoomConfig
    owners: tuple[str, ...] | None = None
    admins: tuple[str, ...] | None = None


def _boolean(var: str, text: str) -> bool:
    # XEP-0004 §3.3: boolean values are "0", "1", "false", "true".
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise StanzaError("bad-request", f"{var}: not a boolean: {text!r}")


def parse_submission(form: Element, current: RoomConfig, limits: Limits) -> Submission:
    """Apply a submitted muc#roomconfig form to `current`; a malformed form raises bad-request and a
    value past the service's limits not-acceptable. Fields the form leaves out keep their value."""
    if form.tag != q("x", DATA) or form.get("type") != "submit":
        raise StanzaError("bad-request", "expected a submitted data form")
    values: dict[str, Any] = {}
    owners: tuple[str, ...] | None = None
    admins: tuple[str, ...] | None = None
    seen: set[str] = set()
    for field in form.findall(q("field", DATA)):
        var = field.get("var")
        if not var:
            raise StanzaError("bad-request", "a form field without var")
        if var in seen:
            raise StanzaError("bad-request", f"{var}: given twice")
        seen.add(var)
        texts = [value.text or "" for value in field.findall(q("value", DATA))]
        if var == "FORM_TYPE":
            if texts != [MUC_ROOMCONFIG]:
                raise StanzaError("bad-request", "FORM_TYPE is not muc#roomconfig")
            continue
        if var == "muc#roomconfig_roomowners":
            owners = tuple(texts)
            continue
        if var == "muc#roomconfig_roomadmins":
            admins = tuple(texts)
            continue
        known = _BY_VAR.get(var)
        if known is None:
            continue  # XEP-0004 §3.4: fields the service does not know are ignored
        attribute, kind = known
        if len(texts) > 1:
            raise StanzaError("bad-request", f"{var}: more than one value")
        text = texts[0] if texts else ""
        if kind == "boolean":
            values[attribute] = _boolean(var, text)
        elif attribute == "max_users":
            if not text.isdigit():
                raise StanzaError("bad-request", f"{var}: not a number: {text!r}")
            values[attribute] = int(text)
        elif attribute in _OPTIONS:
            if text not in _OPTIONS[attribute]:
                raise StanzaError("bad-request", f"{var}: {text!r} is not one of {_OPTIONS[attribute]}")
            values[attribute] = text
        else:
            values[attribute] = text
    config = dataclasses.replace(current, **values)
    _check_limits(config, limits)
    return Submission(config, owners, admins)


def _check_limits(config: RoomConfig, limits: Limits) -> None:
    if len(config.name) > limits.max_name_length:
        raise StanzaError("not-acceptable", f"room name longer than {limits.max_name_length} characters")
    if len(config.description) > limits.max_description_length:
        raise StanzaError(
            "not-acceptable", f"room description longer than {limits.max_description_length} characters"
        )
    if config.max_users > limits.max_users:
        raise StanzaError("not-acceptable", f"at most {limits.max_users} occupants")
    if config.password_protected and not config.password:
        raise StanzaError("not-acceptable", "a password-protected room needs a password")
