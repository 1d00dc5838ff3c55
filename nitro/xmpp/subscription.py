"""Presence subscription states (RFC 6121 Appendix A, pre-approval §3.4) as one pure transition table.

No I/O: the presence module reads a roster item, asks `transition` what to do, stores and routes.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Literal

from nitro.storage.models import RosterItem

SubscriptionType = Literal["subscribe", "subscribed", "unsubscribe", "unsubscribed"]
SUBSCRIPTION_TYPES: tuple[SubscriptionType, ...] = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")


class Direction(enum.Enum):
    OUTBOUND = "outbound"  # sent by the user's client; the user's server processes it (Appendix A.2)
    INBOUND = "inbound"  # arriving for the user from the contact; the user's server processes it (A.3)


class State(enum.Enum):
    """The user's roster item for one contact (RFC 6121 §A.1), plus the pre-approved variants of §3.4."""

    NONE = "None"
    NONE_PENDING_OUT = "None + Pending Out"
    NONE_PENDING_IN = "None + Pending In"
    NONE_PENDING_OUT_IN = "None + Pending Out+In"
    TO = "To"
    TO_PENDING_IN = "To + Pending In"
    FROM = "From"
    FROM_PENDING_OUT = "From + Pending Out"
    BOTH = "Both"
    # §3.4.1: the user approved the contact's subscription before the contact asked. Only states where
    # the contact has no subscription and no pending request can carry a pre-approval.
    NONE_APPROVED = "None + Pre-approved"
    NONE_PENDING_OUT_APPROVED = "None + Pending Out + Pre-approved"
    TO_APPROVED = "To + Pre-approved"

    # Each flag is a lookup of the member's value in a set (below): a fan-out asks them per roster item.
    @property
    def to(self) -> bool:
        """The user receives the contact's presence."""
        return self._value_ in _TO

    @property
    def from_(self) -> bool:
        """The contact receives the user's presence."""
        return self._value_ in _FROM

    @property
    def pending_out(self) -> bool:
        return self._value_ in _PENDING_OUT

    @property
    def pending_in(self) -> bool:
        return self._value_ in _PENDING_IN

    @property
    def approved(self) -> bool:
        return self._value_ in _APPROVED


def _values(*states: State) -> frozenset[str]:
    return frozenset(state.value for state in states)


_TO = _values(State.TO, State.TO_PENDING_IN, State.BOTH, State.TO_APPROVED)
_FROM = _values(State.FROM, State.FROM_PENDING_OUT, State.BOTH)
_PENDING_OUT = _values(
    State.NONE_PENDING_OUT, State.NONE_PENDING_OUT_IN, State.FROM_PENDING_OUT, State.NONE_PENDING_OUT_APPROVED
)
_PENDING_IN = _values(State.NONE_PENDING_IN, State.NONE_PENDING_OUT_IN, State.TO_PENDING_IN)
_APPROVED = _values(State.NONE_APPROVED, State.NONE_PENDING_OUT_APPROVED, State.TO_APPROVED)


@dataclass(frozen=True, slots=True)
class Transition:
    """What one subscription presence does to one roster item."""

    before: State
    after: State
    # Outbound: route the stanza to the contact (A.2 "ROUTE?"). Inbound: deliver it to the user's
    # available resources (A.3 "DELIVER?"); an undelivered 'subscribe' stays pending in the item.
    forward: bool
    # Inbound only: the user's server answers the contact itself (A.3.1 "no *" rows, §3.1.3; §3.4.1
    # pre-approval).
    reply: SubscriptionType | None = None

    @property
    def changed(self) -> bool:
        """The item changed: store it and push it to the user's interested resources (§2.1.6)."""
        return self.before is not self.after

    @property
    def gained_from(self) -> bool:
        """The contact now gets the user's presence: send it the user's current presence (§3.1.5)."""
        return self.after.from_ and not self.before.from_

    @property
    def lost_from(self) -> bool:
        """The contact no longer gets the user's presence: send it unavailable (§3.2.2, §3.3.3)."""
        return self.before.from_ and not self.after.from_


_S = State
_OUT = Direction.OUTBOUND
_IN = Direction.INBOUND
_ROUTE = _DELIVER = True
_KEEP = False

# The whole state machine. Each block is one table of RFC 6121 Appendix A, rows in the RFC's order, then
# the §3.4 pre-approval rows. Every (state, direction, type) is present: a missing key is a bug.
_TABLE: dict[tuple[State, Direction, SubscriptionType], tuple[State, bool, SubscriptionType | None]] = {
    # A.2.1 Client-generated 'subscribe': always routed (the contact's server re-syncs a stale state).
    (_S.NONE, _OUT, "subscribe"): (_S.NONE_PENDING_OUT, _ROUTE, None),
    (_S.NONE_PENDING_OUT, _OUT, "subscribe"): (_S.NONE_PENDING_OUT, _ROUTE, None),
    (_S.NONE_PENDING_IN, _OUT, "subscribe"): (_S.NONE_PENDING_OUT_IN, _ROUTE, None),
    (_S.NONE_PENDING_OUT_IN, _OUT, "subscribe"): (_S.NONE_PENDING_OUT_IN, _ROUTE, None),
    (_S.TO, _OUT, "subscribe"): (_S.TO, _ROUTE, None),
    (_S.TO_PENDING_IN, _OUT, "subscribe"): (_S.TO_PENDING_IN, _ROUTE, None),
    (_S.FROM, _OUT, "subscribe"): (_S.FROM_PENDING_OUT, _ROUTE, None),
    (_S.FROM_PENDING_OUT, _OUT, "subscribe"): (_S.FROM_PENDING_OUT, _ROUTE, None),
    (_S.BOTH, _OUT, "subscribe"): (_S.BOTH, _ROUTE, None),
    (_S.NONE_APPROVED, _OUT, "subscribe"): (_S.NONE_PENDING_OUT_APPROVED, _ROUTE, None),
    (_S.NONE_PENDING_OUT_APPROVED, _OUT, "subscribe"): (_S.NONE_PENDING_OUT_APPROVED, _ROUTE, None),
    (_S.TO_APPROVED, _OUT, "subscribe"): (_S.TO_APPROVED, _ROUTE, None),
    # A.2.2 Client-generated 'subscribed': approves a pending request; otherwise §3.4.1 pre-approves
    # (None, None + Pending Out, To) or is ignored.
    (_S.NONE, _OUT, "subscribed"): (_S.NONE_APPROVED, _KEEP, None),
    (_S.NONE_PENDING_OUT, _OUT, "subscribed"): (_S.NONE_PENDING_OUT_APPROVED, _KEEP, None),
    (_S.NONE_PENDING_IN, _OUT, "subscribed"): (_S.FROM, _ROUTE, None),
    (_S.NONE_PENDING_OUT_IN, _OUT, "subscribed"): (_S.FROM_PENDING_OUT, _ROUTE, None),
    (_S.TO, _OUT, "subscribed"): (_S.TO_APPROVED, _KEEP, None),
    (_S.TO_PENDING_IN, _OUT, "subscribed"): (_S.BOTH, _ROUTE, None),
    (_S.FROM, _OUT, "subscribed"): (_S.FROM, _KEEP, None),
    (_S.FROM_PENDING_OUT, _OUT, "subscribed"): (_S.FROM_PENDING_OUT, _KEEP, None),
    (_S.BOTH, _OUT, "subscribed"): (_S.BOTH, _KEEP, None),
    (_S.NONE_APPROVED, _OUT, "subscribed"): (_S.NONE_APPROVED, _KEEP, None),
    (_S.NONE_PENDING_OUT_APPROVED, _OUT, "subscribed"): (_S.NONE_PENDING_OUT_APPROVED, _KEEP, None),
    (_S.TO_APPROVED, _OUT, "subscribed"): (_S.TO_APPROVED, _KEEP, None),
    # A.2.3 Client-generated 'unsubscribe': always routed. It leaves a pre-approval in place, since that
    # concerns the contact's subscription, not the user's.
    (_S.NONE, _OUT, "unsubscribe"): (_S.NONE, _ROUTE, None),
    (_S.NONE_PENDING_OUT, _OUT, "unsubscribe"): (_S.NONE, _ROUTE, None),
    (_S.NONE_PENDING_IN, _OUT, "unsubscribe"): (_S.NONE_PENDING_IN, _ROUTE, None),
    (_S.NONE_PENDING_OUT_IN, _OUT, "unsubscribe"): (_S.NONE_PENDING_IN, _ROUTE, None),
    (_S.TO, _OUT, "unsubscribe"): (_S.NONE, _ROUTE, None),
    (_S.TO_PENDING_IN, _OUT, "unsubscribe"): (_S.NONE_PENDING_IN, _ROUTE, None),
    (_S.FROM, _OUT, "unsubscribe"): (_S.FROM, _ROUTE, None),
    (_S.FROM_PENDING_OUT, _OUT, "unsubscribe"): (_S.FROM, _ROUTE, None),
    (_S.BOTH, _OUT, "unsubscribe"): (_S.FROM, _ROUTE, None),
    (_S.NONE_APPROVED, _OUT, "unsubscribe"): (_S.NONE_APPROVED, _ROUTE, None),
    (_S.NONE_PENDING_OUT_APPROVED, _OUT, "unsubscribe"): (_S.NONE_APPROVED, _ROUTE, None),
    (_S.TO_APPROVED, _OUT, "unsubscribe"): (_S.NONE_APPROVED, _ROUTE, None),
    # A.2.4 Client-generated 'unsubscribed': denies a pending request or cancels the contact's
    # subscription; in None, None + Pending Out and To it only cancels a pre-approval (§3.4.1).
    (_S.NONE, _OUT, "unsubscribed"): (_S.NONE, _KEEP, None),
    (_S.NONE_PENDING_OUT, _OUT, "unsubscribed"): (_S.NONE_PENDING_OUT, _KEEP, None),
    (_S.NONE_PENDING_IN, _OUT, "unsubscribed"): (_S.NONE, _ROUTE, None),
    (_S.NONE_PENDING_OUT_IN, _OUT, "unsubscribed"): (_S.NONE_PENDING_OUT, _ROUTE, None),
    (_S.TO, _OUT, "unsubscribed"): (_S.TO, _KEEP, None),
    (_S.TO_PENDING_IN, _OUT, "unsubscribed"): (_S.TO, _ROUTE, None),
    (_S.FROM, _OUT, "unsubscribed"): (_S.NONE, _ROUTE, None),
    (_S.FROM_PENDING_OUT, _OUT, "unsubscribed"): (_S.NONE_PENDING_OUT, _ROUTE, None),
    (_S.BOTH, _OUT, "unsubscribed"): (_S.TO, _ROUTE, None),
    (_S.NONE_APPROVED, _OUT, "unsubscribed"): (_S.NONE, _KEEP, None),
    (_S.NONE_PENDING_OUT_APPROVED, _OUT, "unsubscribed"): (_S.NONE_PENDING_OUT, _KEEP, None),
    (_S.TO_APPROVED, _OUT, "unsubscribed"): (_S.TO, _KEEP, None),
    # A.3.1 Inbound 'subscribe': "no *" rows are answered 'subscribed' by the server (§3.1.3); a
    # pre-approval is consumed and answered the same way (§3.4.1).
    (_S.NONE, _IN, "subscribe"): (_S.NONE_PENDING_IN, _DELIVER, None),
    (_S.NONE_PENDING_OUT, _IN, "subscribe"): (_S.NONE_PENDING_OUT_IN, _DELIVER, None),
    (_S.NONE_PENDING_IN, _IN, "subscribe"): (_S.NONE_PENDING_IN, _KEEP, None),
    (_S.NONE_PENDING_OUT_IN, _IN, "subscribe"): (_S.NONE_PENDING_OUT_IN, _KEEP, None),
    (_S.TO, _IN, "subscribe"): (_S.TO_PENDING_IN, _DELIVER, None),
    (_S.TO_PENDING_IN, _IN, "subscribe"): (_S.TO_PENDING_IN, _KEEP, None),
    (_S.FROM, _IN, "subscribe"): (_S.FROM, _KEEP, "subscribed"),
    (_S.FROM_PENDING_OUT, _IN, "subscribe"): (_S.FROM_PENDING_OUT, _KEEP, "subscribed"),
    (_S.BOTH, _IN, "subscribe"): (_S.BOTH, _KEEP, "subscribed"),
    (_S.NONE_APPROVED, _IN, "subscribe"): (_S.FROM, _KEEP, "subscribed"),
    (_S.NONE_PENDING_OUT_APPROVED, _IN, "subscribe"): (_S.FROM_PENDING_OUT, _KEEP, "subscribed"),
    (_S.TO_APPROVED, _IN, "subscribe"): (_S.BOTH, _KEEP, "subscribed"),
    # A.3.2 Inbound 'subscribed': only an answer to the user's own pending request counts.
    (_S.NONE, _IN, "subscribed"): (_S.NONE, _KEEP, None),
    (_S.NONE_PENDING_OUT, _IN, "subscribed"): (_S.TO, _DELIVER, None),
    (_S.NONE_PENDING_IN, _IN, "subscribed"): (_S.NONE_PENDING_IN, _KEEP, None),
    (_S.NONE_PENDING_OUT_IN, _IN, "subscribed"): (_S.TO_PENDING_IN, _DELIVER, None),
    (_S.TO, _IN, "subscribed"): (_S.TO, _KEEP, None),
    (_S.TO_PENDING_IN, _IN, "subscribed"): (_S.TO_PENDING_IN, _KEEP, None),
    (_S.FROM, _IN, "subscribed"): (_S.FROM, _KEEP, None),
    (_S.FROM_PENDING_OUT, _IN, "subscribed"): (_S.BOTH, _DELIVER, None),
    (_S.BOTH, _IN, "subscribed"): (_S.BOTH, _KEEP, None),
    (_S.NONE_APPROVED, _IN, "subscribed"): (_S.NONE_APPROVED, _KEEP, None),
    (_S.NONE_PENDING_OUT_APPROVED, _IN, "subscribed"): (_S.TO_APPROVED, _DELIVER, None),
    (_S.TO_APPROVED, _IN, "subscribed"): (_S.TO_APPROVED, _KEEP, None),
    # A.3.3 Inbound 'unsubscribe': the contact withdraws its request or ends its subscription.
    (_S.NONE, _IN, "unsubscribe"): (_S.NONE, _KEEP, None),
    (_S.NONE_PENDING_OUT, _IN, "unsubscribe"): (_S.NONE_PENDING_OUT, _KEEP, None),
    (_S.NONE_PENDING_IN, _IN, "unsubscribe"): (_S.NONE, _DELIVER, None),
    (_S.NONE_PENDING_OUT_IN, _IN, "unsubscribe"): (_S.NONE_PENDING_OUT, _DELIVER, None),
    (_S.TO, _IN, "unsubscribe"): (_S.TO, _KEEP, None),
    (_S.TO_PENDING_IN, _IN, "unsubscribe"): (_S.TO, _DELIVER, None),
    (_S.FROM, _IN, "unsubscribe"): (_S.NONE, _DELIVER, None),
    (_S.FROM_PENDING_OUT, _IN, "unsubscribe"): (_S.NONE_PENDING_OUT, _DELIVER, None),
    (_S.BOTH, _IN, "unsubscribe"): (_S.TO, _DELIVER, None),
    (_S.NONE_APPROVED, _IN, "unsubscribe"): (_S.NONE_APPROVED, _KEEP, None),
    (_S.NONE_PENDING_OUT_APPROVED, _IN, "unsubscribe"): (_S.NONE_PENDING_OUT_APPROVED, _KEEP, None),
    (_S.TO_APPROVED, _IN, "unsubscribe"): (_S.TO_APPROVED, _KEEP, None),
    # A.3.4 Inbound 'unsubscribed': the contact denies the user's request or cancels the user's
    # subscription.
    (_S.NONE, _IN, "unsubscribed"): (_S.NONE, _KEEP, None),
    (_S.NONE_PENDING_OUT, _IN, "unsubscribed"): (_S.NONE, _DELIVER, None),
    (_S.NONE_PENDING_IN, _IN, "unsubscribed"): (_S.NONE_PENDING_IN, _KEEP, None),
    (_S.NONE_PENDING_OUT_IN, _IN, "unsubscribed"): (_S.NONE_PENDING_IN, _DELIVER, None),
    (_S.TO, _IN, "unsubscribed"): (_S.NONE, _DELIVER, None),
    (_S.TO_PENDING_IN, _IN, "unsubscribed"): (_S.NONE_PENDING_IN, _DELIVER, None),
    (_S.FROM, _IN, "unsubscribed"): (_S.FROM, _KEEP, None),
    (_S.FROM_PENDING_OUT, _IN, "unsubscribed"): (_S.FROM, _DELIVER, None),
    (_S.BOTH, _IN, "unsubscribed"): (_S.FROM, _DELIVER, None),
    (_S.NONE_APPROVED, _IN, "unsubscribed"): (_S.NONE_APPROVED, _KEEP, None),
    (_S.NONE_PENDING_OUT_APPROVED, _IN, "unsubscribed"): (_S.NONE_APPROVED, _DELIVER, None),
    (_S.TO_APPROVED, _IN, "unsubscribed"): (_S.NONE_APPROVED, _DELIVER, None),
}


class UnknownTransition(LookupError):
    """A (state, direction, type) the table lacks: a bug in the table, never a peer's fault."""


def transition(state: State, direction: Direction, kind: SubscriptionType) -> Transition:
    """Look up what a subscription presence of type `kind` does in `state`."""
    try:
        after, forward, reply = _TABLE[(state, direction, kind)]
    except KeyError:
        raise UnknownTransition(f"no transition for {kind!r} {direction.value} in {state.value!r}") from None
    return Transition(state, after, forward, reply)


def state_of(item: RosterItem | None) -> State:
    """The state of a stored item (no item: None); flags that cannot go with its subscription are ignored."""
    if item is None:
        return State.NONE
    match item.subscription:
        case "both":
            return State.BOTH
        case "from":
            return State.FROM_PENDING_OUT if item.ask else State.FROM
        case "to":
            if item.pending_in:
                return State.TO_PENDING_IN
            return State.TO_APPROVED if item.approved else State.TO
    if item.pending_in:
        return State.NONE_PENDING_OUT_IN if item.ask else State.NONE_PENDING_IN
    if item.ask:
        return State.NONE_PENDING_OUT_APPROVED if item.approved else State.NONE_PENDING_OUT
    return State.NONE_APPROVED if item.approved else State.NONE


def with_state(item: RosterItem, state: State) -> RosterItem:
    """`item` with subscription, ask, pending-in and approved set from `state`; name and groups kept."""
    subscription: Literal["none", "to", "from", "both"]
    if state is State.BOTH:
        subscription = "both"
    elif state.to:
        subscription = "to"
    elif state.from_:
        subscription = "from"
    else:
        subscription = "none"
    return dataclasses.replace(
        item,
        subscription=subscription,
        ask=state.pending_out,
        pending_in=state.pending_in,
        approved=state.approved,
    )


def apply(item: RosterItem | None, jid: str, step: Transition, *, inbound: bool = False) -> RosterItem | None:
    """The roster item after `step` (None: no item), for the contact `jid`.

    A subscription presence never leaves an empty item behind: nothing is created for a step that ends
    in plain None, and a request that was declined or withdrawn before the user ever named or grouped
    the contact (None + Pending In → None) removes the item it created (as ejabberd and Tigase do).
    """
    if item is None:  # a contact's request alone does not put the contact on the user's roster
        return (
            None
            if step.after is State.NONE
            else with_state(RosterItem(jid, in_roster=not inbound), step.after)
        )
    if (
        step.before is State.NONE_PENDING_IN
        and step.after is State.NONE
        and not item.name
        and not item.groups
    ):
        return None
    if not inbound and not item.in_roster:  # the user answered or subscribed: now it is on the roster
        item = dataclasses.replace(item, in_roster=True)
    return with_state(item, step.after)
