"""Decides which EC2 instance state (name and code) each broker state is shown as.

EC2 has six states; the broker has more. The one table below is the only place the two meet,
and :data:`BY_NAME` is its inverse for the ``instance-state-name`` filter.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from broker.states import State

PENDING: Final = ("pending", 0)
RUNNING: Final = ("running", 16)
SHUTTING_DOWN: Final = ("shutting-down", 32)
TERMINATED: Final = ("terminated", 48)
STOPPING: Final = ("stopping", 64)
STOPPED: Final = ("stopped", 80)

#: broker state -> (EC2 state name, EC2 state code)
EC2_STATE: Final = MappingProxyType(
    {
        State.PENDING: PENDING,
        State.HOLD: PENDING,
        State.PROLOG: PENDING,
        State.BOOT: PENDING,
        State.RUNNING: RUNNING,
        State.UNKNOWN: RUNNING,  # the target stopped answering; status checks say impaired
        State.SHUTDOWN: STOPPING,
        State.POWEROFF: STOPPED,
        State.STOPPED: STOPPED,
        State.SUSPENDED: STOPPED,
        State.EPILOG: SHUTTING_DOWN,
        State.DONE: TERMINATED,
        State.FAILED: TERMINATED,  # as EC2 shows a launch that failed; the reason says why
    }
)

#: EC2 state name -> the broker states shown under it
BY_NAME: Final = MappingProxyType(
    {
        name: tuple(s for s, (n, _) in EC2_STATE.items() if n == name)
        for name, _ in (PENDING, RUNNING, SHUTTING_DOWN, TERMINATED, STOPPING, STOPPED)
    }
)


def ec2_state(state: State) -> tuple[str, int]:
    """The EC2 (name, code) of a broker state."""
    return EC2_STATE[state]
