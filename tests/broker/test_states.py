"""The lifecycle table: every allowed transition passes, every other one is refused.

``EXPECTED`` below is written by hand from the lifecycle as OpenNebula models it and as
broker/states.py describes it, not computed from ``TRANSITIONS``: an edit to the table that
adds or drops a move fails here until this list is changed too, on purpose.
"""

from __future__ import annotations

import itertools

import pytest

from broker.errors import InvalidState
from broker.states import ACTION_MOVES, TRANSITIONS, Action, State, can_move, check_move

#: (from, to) -> why the move exists. One line per allowed move; everything else is refused.
EXPECTED: dict[tuple[str, str], str] = {
    # waiting for the scheduler
    ("pending", "hold"): "an operator holds it before placement",
    ("pending", "prolog"): "the scheduler placed it on a target",
    ("pending", "failed"): "it can never be placed (no image, too many attempts)",
    ("pending", "done"): "terminated before it was placed: nothing to clean up",
    ("hold", "pending"): "released: back to the scheduler",
    ("hold", "done"): "terminated while held",
    # placed: the backend prepares and starts it
    ("prolog", "boot"): "the backend started the domain",
    ("prolog", "running"): "the backend reports it running at once",
    ("prolog", "pending"): "the launch failed on this target: placed again",
    ("prolog", "failed"): "the launch failed for good",
    ("prolog", "epilog"): "terminated while the target prepared it",
    ("prolog", "unknown"): "the target stopped answering",
    ("boot", "running"): "the guest is up",
    ("boot", "shutdown"): "asked to stop while booting",
    ("boot", "poweroff"): "the target reports it off",
    ("boot", "failed"): "the boot failed",
    ("boot", "epilog"): "terminated while booting",
    ("boot", "unknown"): "the target stopped answering",
    # running and its ways out
    ("running", "shutdown"): "a graceful stop began",
    ("running", "poweroff"): "powered off (or seen off) on its target",
    ("running", "suspended"): "suspended, memory kept on the target",
    ("running", "epilog"): "terminated",
    ("running", "unknown"): "the target stopped answering",
    ("running", "failed"): "the target reports it crashed",
    ("shutdown", "poweroff"): "the graceful stop finished",
    ("shutdown", "running"): "the stop failed: it still runs",
    ("shutdown", "epilog"): "terminated while stopping",
    ("shutdown", "unknown"): "the target stopped answering",
    ("shutdown", "failed"): "the stop broke it",
    ("poweroff", "boot"): "started again on the same target",
    ("poweroff", "running"): "started and seen running at once",
    ("poweroff", "stopped"): "saved off its target, to be placed again on start",
    ("poweroff", "epilog"): "terminated while off",
    ("poweroff", "unknown"): "the target stopped answering",
    ("poweroff", "failed"): "the target lost it",
    ("stopped", "pending"): "started: placed again by the scheduler",
    ("stopped", "done"): "terminated while off every target",
    ("suspended", "running"): "resumed",
    ("suspended", "boot"): "resumed by a fresh boot",
    ("suspended", "shutdown"): "asked to stop while suspended",
    ("suspended", "poweroff"): "powered off while suspended",
    ("suspended", "epilog"): "terminated while suspended",
    ("suspended", "unknown"): "the target stopped answering",
    ("suspended", "failed"): "the target lost it",
    # cleaning up
    ("epilog", "done"): "the backend removed it",
    ("epilog", "failed"): "the clean-up failed",
    ("epilog", "unknown"): "the target stopped answering during clean-up",
    # the target answers again: whatever it reports now
    ("unknown", "running"): "seen running again",
    ("unknown", "boot"): "seen booting again",
    ("unknown", "poweroff"): "seen off",
    ("unknown", "suspended"): "seen suspended",
    ("unknown", "shutdown"): "seen stopping",
    ("unknown", "epilog"): "terminated while unreachable",
    ("unknown", "failed"): "the target reports it broken",
    ("unknown", "done"): "terminated and confirmed gone",
    # failed keeps its reason; it can only be cleaned up
    ("failed", "epilog"): "terminated: the backend cleans up what is left",
    ("failed", "done"): "terminated: nothing left on a target",
    # done is final: no row
}

ALL_STATES = {
    "pending",
    "hold",
    "prolog",
    "boot",
    "running",
    "shutdown",
    "poweroff",
    "stopped",
    "suspended",
    "epilog",
    "done",
    "failed",
    "unknown",
}

ALLOWED = sorted(EXPECTED)
FORBIDDEN = sorted(
    (o, n)
    for o, n in itertools.product(ALL_STATES, ALL_STATES)
    if o != n and (o, n) not in EXPECTED
)


def _actual() -> set[tuple[str, str]]:
    return {(o.value, n.value) for o, ns in TRANSITIONS.items() for n in ns}


def test_the_states_are_opennebulas() -> None:
    assert {s.value for s in State} == ALL_STATES
    assert set(TRANSITIONS) == set(State)


def test_the_table_is_exactly_the_hand_written_expectation() -> None:
    actual = _actual()
    assert actual - set(EXPECTED) == set(), "allowed by the table but not expected"
    assert set(EXPECTED) - actual == set(), "expected but missing from the table"
    assert len(EXPECTED) == 57 and len(FORBIDDEN) == 13 * 12 - 57


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_allowed_transitions_pass(old: str, new: str) -> None:
    assert can_move(State(old), State(new))
    check_move(State(old), State(new))


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_forbidden_transitions_are_refused_with_a_clear_error(old: str, new: str) -> None:
    assert not can_move(State(old), State(new))
    with pytest.raises(InvalidState) as err:
        check_move(State(old), State(new), resource="i-0123456789abcdef0")
    assert err.value.message == (f"instance i-0123456789abcdef0 is {old} and cannot become {new}")
    assert err.value.state == old


@pytest.mark.parametrize("state", sorted(ALL_STATES))
def test_staying_put_is_always_allowed(state: str) -> None:
    assert can_move(State(state), State(state))
    check_move(State(state), State(state))


def test_done_is_final_and_every_other_state_can_reach_it() -> None:
    assert TRANSITIONS[State.DONE] == frozenset()
    reach = {s for s in ALL_STATES if (s, "done") in EXPECTED}
    via_epilog = {s for s in ALL_STATES if (s, "epilog") in EXPECTED}
    assert reach | via_epilog == ALL_STATES - {"done"}


#: action -> (states it may be asked in, the state it moves to at once; None: stays).
EXPECTED_ACTIONS: dict[Action, tuple[set[str], str | None]] = {
    Action.STOP: ({"running", "boot", "suspended"}, "shutdown"),
    Action.POWEROFF: ({"running", "boot", "shutdown", "suspended"}, "shutdown"),
    Action.START: ({"poweroff"}, "boot"),
    Action.REBOOT: ({"running"}, None),
    Action.SUSPEND: ({"running"}, None),
    Action.RESUME: ({"suspended"}, None),
}


def test_action_moves_are_the_expected_ones_and_stay_inside_the_table() -> None:
    actual = {
        action: ({s.value for s in allowed}, None if new is None else new.value)
        for action, (allowed, new) in ACTION_MOVES.items()
    }
    assert actual == EXPECTED_ACTIONS
    for allowed, new in EXPECTED_ACTIONS.values():
        for state in allowed:
            assert new is None or state == new or (state, new) in EXPECTED, (state, new)
