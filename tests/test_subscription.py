"""The subscription state machine against RFC 6121 Appendix A, row by row, and its roster item mapping."""

from __future__ import annotations

import pytest

from nitro.storage.models import RosterItem
from nitro.xmpp.subscription import (
    SUBSCRIPTION_TYPES,
    Direction,
    State,
    SubscriptionType,
    Transition,
    UnknownTransition,
    apply,
    state_of,
    transition,
    with_state,
)

# RFC 6121 Appendix A, as printed: one table per (direction, type); "no state change" is "-".
# A.2 is the user's server handling what the user's client sends (ROUTE?), A.3 what arrives for the
# user (DELIVER?). A "*" in A.3.1 is "the server auto-replies 'subscribed'". The pre-approval rows
# (§3.4.1) follow in PRE_APPROVAL.
APPENDIX_A = """
A.2.1 outbound subscribe
None                   | yes | None + Pending Out
None + Pending Out     | yes | -
None + Pending In      | yes | None + Pending Out+In
None + Pending Out+In  | yes | -
To                     | yes | -
To + Pending In        | yes | -
From                   | yes | From + Pending Out
From + Pending Out     | yes | -
Both                   | yes | -

A.2.2 outbound subscribed
None                   | no  | None + Pre-approved
None + Pending Out     | no  | None + Pending Out + Pre-approved
None + Pending In      | yes | From
None + Pending Out+In  | yes | From + Pending Out
To                     | no  | To + Pre-approved
To + Pending In        | yes | Both
From                   | no  | -
From + Pending Out     | no  | -
Both                   | no  | -

A.2.3 outbound unsubscribe
None                   | yes | -
None + Pending Out     | yes | None
None + Pending In      | yes | -
None + Pending Out+In  | yes | None + Pending In
To                     | yes | None
To + Pending In        | yes | None + Pending In
From                   | yes | -
From + Pending Out     | yes | From
Both                   | yes | From

A.2.4 outbound unsubscribed
None                   | no  | -
None + Pending Out     | no  | -
None + Pending In      | yes | None
None + Pending Out+In  | yes | None + Pending Out
To                     | no  | -
To + Pending In        | yes | To
From                   | yes | None
From + Pending Out     | yes | None + Pending Out
Both                   | yes | To

A.3.1 inbound subscribe
None                   | yes | None + Pending In
None + Pending Out     | yes | None + Pending Out+In
None + Pending In      | no  | -
None + Pending Out+In  | no  | -
To                     | yes | To + Pending In
To + Pending In        | no  | -
From                   | no* | -
From + Pending Out     | no* | -
Both                   | no* | -

A.3.2 inbound subscribed
None                   | no  | -
None + Pending Out     | yes | To
None + Pending In      | no  | -
None + Pending Out+In  | yes | To + Pending In
To                     | no  | -
To + Pending In        | no  | -
From                   | no  | -
From + Pending Out     | yes | Both
Both                   | no  | -

A.3.3 inbound unsubscribe
None                   | no  | -
None + Pending Out     | no  | -
None + Pending In      | yes | None
None + Pending Out+In  | yes | None + Pending Out
To                     | no  | -
To + Pending In        | yes | To
From                   | yes | None
From + Pending Out     | yes | None + Pending Out
Both                   | yes | To

A.3.4 inbound unsubscribed
None                   | no  | -
None + Pending Out     | yes | None
None + Pending In      | no  | -
None + Pending Out+In  | yes | None + Pending In
To                     | yes | None
To + Pending In        | yes | None + Pending In
From                   | no  | -
From + Pending Out     | yes | From
Both                   | yes | From
"""

# §3.4.1: a pre-approval is kept until the contact subscribes (then it is consumed and answered on the
# user's behalf), or the user cancels it with 'unsubscribed'; the rest behaves as the state without it.
PRE_APPROVAL = """
3.4 outbound subscribe
None + Pre-approved                    | yes | None + Pending Out + Pre-approved
None + Pending Out + Pre-approved      | yes | -
To + Pre-approved                      | yes | -

3.4 outbound subscribed
None + Pre-approved                    | no  | -
None + Pending Out + Pre-approved      | no  | -
To + Pre-approved                      | no  | -

3.4 outbound unsubscribe
None + Pre-approved                    | yes | -
None + Pending Out + Pre-approved      | yes | None + Pre-approved
To + Pre-approved                      | yes | None + Pre-approved

3.4 outbound unsubscribed
None + Pre-approved                    | no  | None
None + Pending Out + Pre-approved      | no  | None + Pending Out
To + Pre-approved                      | no  | To

3.4 inbound subscribe
None + Pre-approved                    | no* | From
None + Pending Out + Pre-approved      | no* | From + Pending Out
To + Pre-approved                      | no* | Both

3.4 inbound subscribed
None + Pre-approved                    | no  | -
None + Pending Out + Pre-approved      | yes | To + Pre-approved
To + Pre-approved                      | no  | -

3.4 inbound unsubscribe
None + Pre-approved                    | no  | -
None + Pending Out + Pre-approved      | no  | -
To + Pre-approved                      | no  | -

3.4 inbound unsubscribed
None + Pre-approved                    | no  | -
None + Pending Out + Pre-approved      | yes | None + Pre-approved
To + Pre-approved                      | yes | None + Pre-approved
"""

Row = tuple[State, Direction, SubscriptionType, State, bool, bool]


def parse(tables: str) -> list[Row]:
    rows: list[Row] = []
    direction, kind = Direction.OUTBOUND, "subscribe"
    for line in tables.strip().splitlines():
        if not line.strip():
            continue
        if "|" not in line:
            _section, direction_name, kind = line.split()
            direction = Direction(direction_name)
            continue
        state_name, forward, new_name = (cell.strip() for cell in line.split("|"))
        before = State(state_name)
        after = before if new_name == "-" else State(new_name)
        assert kind in SUBSCRIPTION_TYPES
        rows.append((before, direction, kind, after, forward == "yes", forward.endswith("*")))
    return rows


ROWS = parse(APPENDIX_A) + parse(PRE_APPROVAL)


@pytest.mark.parametrize(
    ("before", "direction", "kind", "after", "forward", "auto_reply"),
    ROWS,
    ids=[f"{r[1].value}-{r[2]}-{r[0].value}" for r in ROWS],
)
def test_transition_matches_rfc_6121_appendix_a(
    before: State, direction: Direction, kind: SubscriptionType, after: State, forward: bool, auto_reply: bool
) -> None:
    step = transition(before, direction, kind)
    assert step == Transition(before, after, forward, "subscribed" if auto_reply else None)
    assert step.changed is (before is not after)


def test_the_tables_cover_every_state_direction_and_type() -> None:
    covered = {(row[0], row[1], row[2]) for row in ROWS}
    assert len(covered) == len(ROWS) == len(State) * len(Direction) * len(SUBSCRIPTION_TYPES)


def test_an_unknown_input_is_an_error_naming_state_and_input() -> None:
    with pytest.raises(UnknownTransition, match=r"'probe' inbound in 'To'"):
        transition(State.TO, Direction.INBOUND, "probe")  # type: ignore[arg-type]  # not an input, on purpose


@pytest.mark.parametrize("state", list(State))
def test_every_state_round_trips_through_a_roster_item(state: State) -> None:
    item = with_state(RosterItem("juliet@example.com", name="Juliet", groups=("Friends",)), state)
    assert state_of(item) is state
    assert (item.name, item.groups) == ("Juliet", ("Friends",))


@pytest.mark.parametrize(
    ("item", "state"),
    [
        (RosterItem("a@b", subscription="none", ask=True, pending_in=True), State.NONE_PENDING_OUT_IN),
        (RosterItem("a@b", subscription="to", pending_in=True), State.TO_PENDING_IN),
        (RosterItem("a@b", subscription="from", ask=True), State.FROM_PENDING_OUT),
        (RosterItem("a@b", subscription="both"), State.BOTH),
    ],
)
def test_roster_item_flags_map_to_the_appendix_a_states(item: RosterItem, state: State) -> None:
    assert state_of(item) is state
    assert with_state(item, state) == item


@pytest.mark.parametrize(
    ("item", "state"),
    [
        (RosterItem("a@b", subscription="both", ask=True, pending_in=True, approved=True), State.BOTH),
        (RosterItem("a@b", subscription="to", ask=True), State.TO),  # already subscribed: no pending out
        (RosterItem("a@b", subscription="from", pending_in=True, approved=True), State.FROM),
        (RosterItem("a@b", subscription="none", pending_in=True, approved=True), State.NONE_PENDING_IN),
    ],
)
def test_flags_that_cannot_apply_to_the_subscription_are_ignored(item: RosterItem, state: State) -> None:
    assert state_of(item) is state


def test_subscription_presence_creates_an_item_only_for_a_lasting_state() -> None:
    subscribe = transition(State.NONE, Direction.OUTBOUND, "subscribe")
    assert apply(None, "romeo@example.net", subscribe) == RosterItem("romeo@example.net", ask=True)
    unsubscribed = transition(State.NONE, Direction.OUTBOUND, "unsubscribed")
    assert apply(None, "romeo@example.net", unsubscribed) is None
    pre_approve = transition(State.NONE, Direction.OUTBOUND, "subscribed")
    assert apply(None, "romeo@example.net", pre_approve) == RosterItem("romeo@example.net", approved=True)


def test_a_declined_request_from_an_unnamed_contact_leaves_no_item() -> None:
    request = RosterItem("romeo@example.net", pending_in=True)
    decline = transition(State.NONE_PENDING_IN, Direction.OUTBOUND, "unsubscribed")
    withdraw = transition(State.NONE_PENDING_IN, Direction.INBOUND, "unsubscribe")
    assert apply(request, request.jid, decline) is None
    assert apply(request, request.jid, withdraw) is None
    named = RosterItem("romeo@example.net", name="Romeo", pending_in=True)
    assert apply(named, named.jid, decline) == RosterItem("romeo@example.net", name="Romeo")


@pytest.mark.parametrize(
    ("before", "direction", "kind", "gained", "lost"),
    [
        (State.NONE_PENDING_IN, Direction.OUTBOUND, "subscribed", True, False),
        (State.NONE_APPROVED, Direction.INBOUND, "subscribe", True, False),
        (State.BOTH, Direction.OUTBOUND, "unsubscribed", False, True),
        (State.BOTH, Direction.INBOUND, "unsubscribe", False, True),
        (State.BOTH, Direction.OUTBOUND, "unsubscribe", False, False),
        (State.NONE_PENDING_OUT, Direction.INBOUND, "subscribed", False, False),
    ],
)
def test_gaining_or_losing_the_from_direction_is_reported(
    before: State, direction: Direction, kind: SubscriptionType, gained: bool, lost: bool
) -> None:
    step = transition(before, direction, kind)
    assert (step.gained_from, step.lost_from) == (gained, lost)


def test_each_states_flags_are_read_from_its_name() -> None:
    """to/from/pending/approved as the state's name in Appendix A says (§3.4.1 for pre-approval)."""
    for state in State:
        name = state.value
        assert state.to == (name.startswith("To") or name == "Both"), state
        assert state.from_ == (name.startswith("From") or name == "Both"), state
        assert state.pending_out == ("Pending Out" in name), state
        assert state.pending_in == ("Pending In" in name or "Pending Out+In" in name), state
        assert state.approved == ("Pre-approved" in name), state
