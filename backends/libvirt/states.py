"""What a libvirt domain state means as a broker instance state: one table, keyed by libvirt's ints.

A paused domain is suspended, not gone; a shut-off one is powered off and can start again (also
after a crash when ``on_crash`` is ``destroy``: the reason text says "crashed"); a domain that
libvirt keeps in the crashed state (``on_crash`` ``preserve``) has failed. A state libvirt adds
later, or "no state", is unknown: never a guess.

The numbers are libvirt's ``virDomainState`` and per-state reason enums (stable ABI); they are
spelled out here so this module imports without libvirt-python, and a test checks them against
the ``libvirt`` module.
"""

from __future__ import annotations

import enum

from broker.states import State


class DomainState(enum.IntEnum):
    """``virDomainState``."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


D = DomainState

#: libvirt state -> (broker state, the word for it in reason texts).
STATE_MAP: dict[int, tuple[State, str]] = {
    D.NOSTATE: (State.UNKNOWN, "no state"),
    D.RUNNING: (State.RUNNING, "running"),
    D.BLOCKED: (State.RUNNING, "blocked"),
    D.PAUSED: (State.SUSPENDED, "paused"),
    D.SHUTDOWN: (State.SHUTDOWN, "shutting down"),
    D.SHUTOFF: (State.POWEROFF, "shut off"),
    D.CRASHED: (State.FAILED, "crashed"),
    D.PMSUSPENDED: (State.SUSPENDED, "suspended by the guest"),
}

#: libvirt state -> its reason enum as words, indexed by the reason int (0 is always "unknown").
REASONS: dict[int, tuple[str, ...]] = {
    D.RUNNING: (
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from snapshot",
        "unpaused",
        "migration canceled",
        "save canceled",
        "woken up",
        "crashed",
        "post-copy migration",
        "post-copy migration failed",
    ),
    D.PAUSED: (
        "unknown",
        "by user",
        "migration",
        "save",
        "dump",
        "I/O error",
        "watchdog",
        "from snapshot",
        "shutting down",
        "snapshot",
        "crashed",
        "starting up",
        "post-copy migration",
        "post-copy migration failed",
    ),
    D.SHUTDOWN: ("unknown", "by user"),
    D.SHUTOFF: (
        "unknown",
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from snapshot",
        "daemon",
    ),
    D.CRASHED: ("unknown", "panicked"),
}


def to_state(libvirt_state: int, reason: int) -> tuple[State, str]:
    """The broker state of a domain and a short text such as ``"paused: I/O error"``."""
    state, word = STATE_MAP.get(libvirt_state, (State.UNKNOWN, f"libvirt state {libvirt_state}"))
    reasons = REASONS.get(libvirt_state, ())
    if 0 < reason < len(reasons):
        return state, f"{word}: {reasons[reason]}"
    if reason == 0 or libvirt_state not in STATE_MAP:
        return state, word
    return state, f"{word}: reason {reason}"
