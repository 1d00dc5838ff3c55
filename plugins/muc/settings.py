"""The MUC plugin's own keys of its [plugins.NAME] table, checked (an unknown key is an error naming it)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from nitro.config import ConfigError
from nitro.sdk import PluginSettings
from plugins.muc.room import RoomLimits
from plugins.muc.roomconfig import Limits
from plugins.muc.service import ServiceRules


@dataclass(frozen=True, slots=True)
class MucOptions:
    """Defaults follow Prosody's mod_muc where it has one (20 history messages, …)."""

    name: str = "Chatrooms"  # the service's name in disco
    creators: str = "anyone"  # who may create rooms: "anyone" or "local" (users of the server's domain)
    persistence: bool = True  # persistent rooms and the archive in [storage]; false: memory only
    max_room_id_bytes: int = 128  # longest room name (localpart of the room JID)
    max_room_title: int = 256  # longest muc#roomconfig_roomname
    max_description: int = 1024
    max_nick_length: int = 64
    max_occupants: int = 1000  # per room (an owner may set less)
    history_default: int = 20  # messages sent on entry when the client does not say
    history_max: int = 50  # hard cap of any history request (maxstanzas="1000000000" gets this)
    mam_default: int = 20  # page size of a MAM query without <max/>
    mam_max: int = 100  # largest page a MAM query gets


_RANGES = {
    "max_room_id_bytes": (1, 300),
    "max_room_title": (1, 65535),
    "max_description": (1, 65535),
    "max_nick_length": (1, 1023),
    "max_occupants": (1, 1_000_000),
    "history_default": (0, 10_000),
    "history_max": (0, 10_000),
    "mam_default": (1, 10_000),
    "mam_max": (1, 10_000),
}


def parse_options(options: dict[str, Any], where: str = "[plugins.muc]") -> MucOptions:
    known = {f.name: f for f in dataclasses.fields(MucOptions)}
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        default: Any = known[key].default
        if type(value) is not type(default):  # bool is not int here: True is no room size
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        low, high = _RANGES.get(key, (value, value))
        if not low <= value <= high:
            raise ConfigError(f"{where}.{key}: {value} is outside {low}..{high}")
        values[key] = value
    parsed = MucOptions(**values)
    if parsed.creators not in ("anyone", "local"):
        raise ConfigError(f"{where}.creators: 'anyone' or 'local', not {parsed.creators!r}")
    return parsed


def rules_and_limits(settings: PluginSettings) -> tuple[MucOptions, ServiceRules, RoomLimits]:
    options = parse_options(settings.options, f"[plugins.{settings.name}]")
    rules = ServiceRules(
        domain=settings.subdomain,
        server=settings.server_domain,
        name=options.name,
        creators=options.creators,
        max_room_id_bytes=options.max_room_id_bytes,
        mam_default=options.mam_default,
        mam_max=options.mam_max,
    )
    limits = RoomLimits(
        max_nick_length=options.max_nick_length,
        history_default=options.history_default,
        history_max=options.history_max,
        form=Limits(options.max_room_title, options.max_description, options.max_occupants),
        # occupant-ids stay the same across restarts and differ between deployments (XEP-0421 §4)
        salt=hashlib.sha256(f"muc-occupant-id\0{settings.secret}".encode()).digest(),
    )
    return options, rules, limits
