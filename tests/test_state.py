"""The stream's phases and their transitions (trio_kcm/_state.py), without I/O."""

from __future__ import annotations

import itertools

import pytest

from trio_kcm import StreamState
from trio_kcm._state import HEALTHY, PUBLIC, RELEASED, TRANSITIONS, Phase, transition

ALL = list(Phase)


def reachable(start: Phase) -> set[Phase]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_phase_has_a_row_and_a_public_state() -> None:
    assert set(TRANSITIONS) == set(ALL)
    assert set(PUBLIC) == set(ALL)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(ALL, ALL)))
def test_transition_allows_exactly_the_table(old: Phase, new: Phase) -> None:
    if new in TRANSITIONS[old]:
        assert transition(old, new) is new
    else:
        with pytest.raises(RuntimeError, match=f"from {old.name} to {new.name}"):
            transition(old, new)


def test_released_phases_are_final_and_everything_can_reach_one() -> None:
    for phase in RELEASED:
        assert TRANSITIONS[phase] == frozenset()
    for phase in ALL:
        assert reachable(phase) & RELEASED, phase
    assert reachable(Phase.ACTIVE) == set(ALL)


def test_a_failed_stream_never_becomes_healthy_again() -> None:
    for phase in reachable(Phase.FAILED):
        assert phase not in HEALTHY
        assert PUBLIC[phase] is StreamState.FAILED


def test_healthy_phases_can_fail_or_be_closed_by_the_mux() -> None:
    for phase in HEALTHY:
        assert {Phase.FAILED, Phase.CLOSED} <= TRANSITIONS[phase]
        assert PUBLIC[phase] is StreamState.ACTIVE


def test_what_the_handle_shows() -> None:
    assert PUBLIC[Phase.UNATTACHED] is StreamState.UNATTACHED
    # Closed by the mux as it closed: the handle keeps "active" (documented).
    assert PUBLIC[Phase.CLOSED] is StreamState.ACTIVE
    assert PUBLIC[Phase.DISCARDED] is StreamState.FAILED
