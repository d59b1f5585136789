"""The instance lifecycle: its states and the one table of allowed transitions.

Modelled on OpenNebula's VM states. An instance is *pending* until the scheduler places it,
goes through *prolog* (target chosen, disk being prepared) and *boot* (the backend started it)
to *running*. A graceful stop passes *shutdown* on its way to *poweroff* (still defined on its
target); *stopped* means saved off the target, to be placed again on start. Termination passes
*epilog* (the backend cleans up) to *done*. *unknown* is what we say when a target stops
answering: never a guess that the instance is gone. *failed* keeps the reason in the event log.

Frontends map these to their own words (EC2 ``stopping``, OCCI ``inactive``) in their own code.
"""

from __future__ import annotations

import enum

from broker.errors import InvalidState


class State(enum.StrEnum):
    PENDING = "pending"
    HOLD = "hold"
    PROLOG = "prolog"
    BOOT = "boot"
    RUNNING = "running"
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    EPILOG = "epilog"
    DONE = "done"
    FAILED = "failed"
    UNKNOWN = "unknown"


S = State

#: state -> the states it may move to. Anything not listed is refused.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.PENDING: frozenset({S.HOLD, S.PROLOG, S.FAILED, S.DONE}),
    S.HOLD: frozenset({S.PENDING, S.DONE}),
    S.PROLOG: frozenset({S.BOOT, S.RUNNING, S.PENDING, S.FAILED, S.EPILOG, S.UNKNOWN}),
    S.BOOT: frozenset({S.RUNNING, S.SHUTDOWN, S.POWEROFF, S.FAILED, S.EPILOG, S.UNKNOWN}),
    S.RUNNING: frozenset({S.SHUTDOWN, S.POWEROFF, S.SUSPENDED, S.EPILOG, S.UNKNOWN, S.FAILED}),
    S.SHUTDOWN: frozenset({S.POWEROFF, S.RUNNING, S.EPILOG, S.UNKNOWN, S.FAILED}),
    S.POWEROFF: frozenset({S.BOOT, S.RUNNING, S.STOPPED, S.EPILOG, S.UNKNOWN, S.FAILED}),
    S.STOPPED: frozenset({S.PENDING, S.DONE}),
    S.SUSPENDED: frozenset(
        {S.RUNNING, S.BOOT, S.SHUTDOWN, S.POWEROFF, S.EPILOG, S.UNKNOWN, S.FAILED}
    ),
    S.EPILOG: frozenset({S.DONE, S.FAILED, S.UNKNOWN}),
    S.UNKNOWN: frozenset(
        {S.RUNNING, S.BOOT, S.POWEROFF, S.SUSPENDED, S.SHUTDOWN, S.EPILOG, S.FAILED, S.DONE}
    ),
    S.FAILED: frozenset({S.EPILOG, S.DONE}),
    S.DONE: frozenset(),
}

#: States in which the instance holds resources on a target.
ON_TARGET: frozenset[State] = frozenset(
    {S.PROLOG, S.BOOT, S.RUNNING, S.SHUTDOWN, S.POWEROFF, S.SUSPENDED, S.EPILOG, S.UNKNOWN}
)

#: States that count against quotas and capacity (everything but done).
LIVE: frozenset[State] = frozenset(State) - {S.DONE}


def can_move(current: State, new: State) -> bool:
    """True when ``current -> new`` is in the table (staying put is always allowed)."""
    return current == new or new in TRANSITIONS[current]


def check_move(current: State, new: State, *, resource: str = "") -> None:
    """Raise :class:`InvalidState` unless ``current -> new`` is allowed."""
    if not can_move(current, new):
        raise InvalidState(
            f"instance {resource} is {current.value} and cannot become {new.value}".replace(
                "  ", " "
            ),
            resource=resource,
            state=current.value,
        )


class Action(enum.StrEnum):
    """What a user or operator asks of an instance; the service turns each into a move."""

    STOP = "stop"
    POWEROFF = "poweroff"
    START = "start"
    REBOOT = "reboot"
    SUSPEND = "suspend"
    RESUME = "resume"
    TERMINATE = "terminate"
    LAUNCH = "launch"
    MIGRATE = "migrate"  # an operator's, to another host of the cluster (not in ACTION_MOVES)


#: action -> (states it may be asked in, the state the instance moves to at once).
#: ``None`` as the new state means "stay" (reboot keeps an instance running).
ACTION_MOVES: dict[Action, tuple[frozenset[State], State | None]] = {
    Action.STOP: (frozenset({S.RUNNING, S.BOOT, S.SUSPENDED}), S.SHUTDOWN),
    Action.POWEROFF: (frozenset({S.RUNNING, S.BOOT, S.SHUTDOWN, S.SUSPENDED}), S.SHUTDOWN),
    Action.START: (frozenset({S.POWEROFF}), S.BOOT),  # stopped: placed again (PENDING)
    Action.REBOOT: (frozenset({S.RUNNING}), None),
    Action.SUSPEND: (frozenset({S.RUNNING}), None),
    Action.RESUME: (frozenset({S.SUSPENDED}), None),
}
