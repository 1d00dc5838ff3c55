"""Affiliations and roles (XEP-0045 §5): their order, the default role, and who may change whose."""

from __future__ import annotations

import enum


class Affiliation(enum.Enum):
    """XEP-0045 §5.2; `rank` orders them (outcast lowest)."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    NONE = "none"
    OUTCAST = "outcast"

    @property
    def rank(self) -> int:
        return _AFFILIATION_RANK[self]


_AFFILIATION_RANK = {
    Affiliation.OUTCAST: 0,
    Affiliation.NONE: 1,
    Affiliation.MEMBER: 2,
    Affiliation.ADMIN: 3,
    Affiliation.OWNER: 4,
}


class Role(enum.Enum):
    """XEP-0045 §5.1; `rank` orders them (none lowest)."""

    MODERATOR = "moderator"
    PARTICIPANT = "participant"
    VISITOR = "visitor"
    NONE = "none"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]


_ROLE_RANK = {Role.NONE: 0, Role.VISITOR: 1, Role.PARTICIPANT: 2, Role.MODERATOR: 3}


def parse_affiliation(text: str | None) -> Affiliation | None:
    try:
        return Affiliation(text)
    except ValueError:
        return None


def parse_role(text: str | None) -> Role | None:
    try:
        return Role(text)
    except ValueError:
        return None


def default_role(affiliation: Affiliation, *, moderated: bool, members_only: bool) -> Role:
    """XEP-0045 §5.1.2 (table "Default roles"): the role an entering occupant gets; NONE: may not enter."""
    if affiliation in (Affiliation.OWNER, Affiliation.ADMIN):
        return Role.MODERATOR
    if affiliation is Affiliation.MEMBER:
        return Role.PARTICIPANT
    if affiliation is Affiliation.OUTCAST or members_only:
        return Role.NONE
    return Role.VISITOR if moderated else Role.PARTICIPANT


def may_change_affiliation(actor: Affiliation, current: Affiliation, new: Affiliation) -> bool:
    """XEP-0045 §9 and §10: an owner changes any affiliation; an admin grants and revokes membership and
    bans (none/member/outcast) of users who are neither admins nor owners; nobody else changes any."""
    if actor is Affiliation.OWNER:
        return True
    if actor is Affiliation.ADMIN:
        low = (Affiliation.NONE, Affiliation.MEMBER, Affiliation.OUTCAST)
        return current in low and new in low
    return False


def may_change_role(
    actor_role: Role, actor_affiliation: Affiliation, target_affiliation: Affiliation, new: Role, old: Role
) -> bool:
    """XEP-0045 §8 and §9.6-9.7: a moderator kicks and gives or takes voice from occupants whose
    affiliation is below an admin's (§8.2: never from one at or above their own level); granting or
    revoking moderator status is for admins and owners, and never touches an admin or owner."""
    if actor_role is not Role.MODERATOR:
        return False
    if target_affiliation in (Affiliation.OWNER, Affiliation.ADMIN):
        # §8.2, §9.7: an admin or owner is always a moderator; only an owner can demote an admin by
        # changing the affiliation, never through the role.
        return False
    plain = actor_affiliation.rank < Affiliation.ADMIN.rank  # a member (or none) made moderator
    if plain and (target_affiliation.rank > actor_affiliation.rank or old is Role.MODERATOR):
        return False  # §8.2: never on someone above, nor on another moderator
    if Role.MODERATOR in (new, old):
        return actor_affiliation in (Affiliation.OWNER, Affiliation.ADMIN)
    return True
