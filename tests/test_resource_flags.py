"""A resource's flags (what modules decided about it): set and cleared one by one, and the same set of flags
held as one shared frozenset by every resource that has it (idle memory), within a bound."""

from __future__ import annotations

from nitro.c2s import resource_state
from nitro.c2s.resource_state import ResourceState
from nitro.xmpp.jid import JID


def test_flags_are_set_and_cleared_and_equal_sets_are_one_object() -> None:
    alice = ResourceState(JID.parse("alice@localhost/phone"))
    bob = ResourceState(JID.parse("bob@localhost/laptop"))
    for state in (alice, bob):
        state.set_flag("interested")
        state.set_flag("carbons")
    assert alice.has_flag("carbons")
    assert alice.has_flag("interested")
    assert alice._flags == bob._flags == {"carbons", "interested"}
    assert alice._flags is bob._flags
    alice.set_flag("carbons", on=False)
    assert not alice.has_flag("carbons")
    assert bob.has_flag("carbons")
    bob.set_flag("carbons", on=False)
    assert alice._flags is bob._flags
    alice.set_flag("interested", on=False)
    assert alice._flags == frozenset()
    assert not alice.interested


def test_shared_flag_sets_stay_bounded() -> None:
    sets = [frozenset({f"flag {n}"}) for n in range(resource_state._FLAG_SETS_KEPT + 5)]
    assert [resource_state._shared_flags(flags) for flags in sets] == sets
    assert len(resource_state._FLAG_SETS) <= resource_state._FLAG_SETS_KEPT
    assert resource_state._shared_flags(frozenset()) is resource_state._NO_FLAGS
