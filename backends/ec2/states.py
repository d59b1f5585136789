"""What an EC2 instance state means as a broker state: one table, keyed by EC2's state names.

``pending`` is a boot, ``stopping``/``stopped`` a graceful stop on its way to power-off (the
instance keeps its place in the region), ``shutting-down``/``terminated`` the way out. A name EC2
adds later is *unknown*, never a guess.

Whether a terminated instance *failed to launch* or was *terminated by someone* is told by its
state reason code: EC2 reports launch failures as ``Server.*`` codes (``Server.InternalError``,
``Server.InsufficientInstanceCapacity``...) and client-side ones such as
``Client.VolumeLimitExceeded``; a person or the guest stopping it is
``Client.UserInitiatedShutdown`` or ``Client.InstanceInitiatedShutdown``.
"""

from __future__ import annotations

from broker.states import State

#: EC2 state name -> broker state.
STATE_MAP: dict[str, State] = {
    "pending": State.BOOT,
    "running": State.RUNNING,
    "stopping": State.SHUTDOWN,
    "stopped": State.POWEROFF,
    "shutting-down": State.EPILOG,
    "terminated": State.DONE,
}

#: States in which the instance is on its way out or gone.
GONE: frozenset[str] = frozenset({"shutting-down", "terminated"})

#: States that cost compute time (stopped instances bill only their volumes).
BILLED: frozenset[str] = frozenset({"pending", "running", "stopping"})

#: State reason codes that mean "someone ended it", not "it failed to start".
ENDED_ON_PURPOSE: frozenset[str] = frozenset(
    {"", "Client.UserInitiatedShutdown", "Client.InstanceInitiatedShutdown"}
)


def to_state(name: str) -> State:
    """The broker state for an EC2 state name (unknown names are :attr:`State.UNKNOWN`)."""
    return STATE_MAP.get(name, State.UNKNOWN)


def launch_failed(name: str, reason_code: str) -> bool:
    """True when a gone instance never ran because EC2 could not start it."""
    return name in GONE and reason_code not in ENDED_ON_PURPOSE
