"""What a vSphere VM's power state means as a broker instance state: one table.

``poweredOn`` is running, ``poweredOff`` is powered off (defined on its target, can start again),
``suspended`` is suspended (its memory is saved on the datastore). A power state vSphere adds later
is unknown, never a guess. A VM whose ``connectionState`` is not ``connected`` (its host is
disconnected, its files are inaccessible, or it was orphaned) reports a power state vSphere itself
no longer vouches for, so it is unknown too, with that reason: the monitor then leaves it alone.
"""

from __future__ import annotations

from broker.states import State

#: vSphere ``VirtualMachinePowerState`` -> (broker state, the word for it in reason texts).
POWER_STATES: dict[str, tuple[State, str]] = {
    "poweredOn": (State.RUNNING, "powered on"),
    "poweredOff": (State.POWEROFF, "powered off"),
    "suspended": (State.SUSPENDED, "suspended"),
}


def to_state(power_state: str, connection_state: str = "connected") -> tuple[State, str]:
    """The broker state of a VM and a short text such as ``"powered off"``."""
    if connection_state and connection_state != "connected":
        return State.UNKNOWN, f"the VM is {connection_state}"
    return POWER_STATES.get(power_state, (State.UNKNOWN, f"vSphere power state {power_state!r}"))
