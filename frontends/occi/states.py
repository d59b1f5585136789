"""Decides the OCCI state of every broker resource: one table per kind, nothing else.

A compute is ``active`` while it runs or is on its way there, ``inactive`` when it is off or
not yet placed, ``suspended`` when suspended, ``error`` when it failed or its target stopped
answering. Volumes are ``online`` while they can be used; networks ``active`` when available.
"""

from __future__ import annotations

from typing import Final

from broker.states import State

COMPUTE: Final[dict[State, str]] = {
    State.PENDING: "inactive",
    State.HOLD: "inactive",
    State.PROLOG: "inactive",
    State.BOOT: "active",
    State.RUNNING: "active",
    State.SHUTDOWN: "active",
    State.POWEROFF: "inactive",
    State.STOPPED: "inactive",
    State.SUSPENDED: "suspended",
    State.EPILOG: "inactive",
    State.DONE: "inactive",
    State.FAILED: "error",
    State.UNKNOWN: "error",
}

STORAGE: Final[dict[str, str]] = {
    "creating": "offline",
    "available": "online",
    "in-use": "online",
    "deleting": "offline",
    "deleted": "offline",
    "error": "error",
}

#: Volume attach states -> storagelink states.
STORAGELINK: Final[dict[str | None, str]] = {
    "attaching": "inactive",
    "attached": "active",
    "detaching": "inactive",
    "detached": "inactive",
    None: "inactive",
}

NETWORK: Final[dict[str, str]] = {"available": "active", "down": "inactive"}


def compute_state(state: State) -> str:
    return COMPUTE[state]


def storage_state(state: str) -> str:
    return STORAGE.get(state, "error")


def network_state(state: str) -> str:
    return NETWORK.get(state, "error")
