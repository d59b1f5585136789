"""The lifecycle table: every allowed transition passes, every other one is refused."""

from __future__ import annotations

import itertools

import pytest

from broker.errors import InvalidState
from broker.states import ACTION_MOVES, TRANSITIONS, State, can_move, check_move


@pytest.mark.parametrize(("old", "new"), [(o, n) for o, ns in TRANSITIONS.items() for n in ns])
def test_allowed_transitions_pass(old: State, new: State) -> None:
    assert can_move(old, new)
    check_move(old, new)


FORBIDDEN = [
    (o, n) for o, n in itertools.product(State, State) if o != n and n not in TRANSITIONS[o]
]


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_forbidden_transitions_are_refused_with_a_clear_error(old: State, new: State) -> None:
    assert not can_move(old, new)
    with pytest.raises(InvalidState) as err:
        check_move(old, new, resource="i-0123456789abcdef0")
    assert old.value in err.value.message and new.value in err.value.message
    assert err.value.state == old.value


def test_every_state_has_a_row_and_done_is_final() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.DONE] == frozenset()
    assert len(FORBIDDEN) > 90


def test_action_moves_stay_inside_the_table() -> None:
    for allowed, new in ACTION_MOVES.values():
        for state in allowed:
            assert new is None or can_move(state, new), (state, new)
