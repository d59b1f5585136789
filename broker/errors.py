"""The one error tree every layer raises and every frontend maps to its wire.

::

    BrokerError
    ├─ NotFound            (the resource does not exist or is not visible to the caller)
    ├─ InvalidRequest      (bad parameter, bad state transition, conflicting values)
    │   ├─ InvalidState
    │   └─ AlreadyExists
    ├─ Forbidden           (not the owner, not an admin)
    ├─ QuotaExceeded
    ├─ NoCapacity          (no target passes the filters)
    ├─ Unsupported         (a feature this broker does not offer)
    └─ BackendError        (BackendUnavailable, BackendTimeout)

Each error carries a ``resource`` word ("instance", "image", ...) and a ``field`` where the
frontend needs them to pick its own code (InvalidInstanceID.NotFound, InvalidAMIID.NotFound).
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    def __init__(self, message: str, *, resource: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.resource = resource
        self.field = field


class NotFound(BrokerError):
    """The resource does not exist, or the caller may not see it (the two look the same)."""


class InvalidRequest(BrokerError):
    """A parameter is missing, malformed or conflicts with another."""


class InvalidState(InvalidRequest):
    """The resource is in a state that does not allow the requested change."""

    def __init__(self, message: str, *, resource: str = "", state: str = "") -> None:
        super().__init__(message, resource=resource)
        self.state = state


class AlreadyExists(InvalidRequest):
    """A resource with that name already exists for this owner."""


class Forbidden(BrokerError):
    """The caller is known but may not do this."""


class Unauthenticated(BrokerError):
    """The caller could not be identified (no key, bad signature, expired token)."""


class QuotaExceeded(BrokerError):
    """The request would take the owner over a quota."""


class NoCapacity(BrokerError):
    """No target can take the instance now."""


class Unsupported(BrokerError):
    """The request names a feature this broker does not provide."""


class BackendError(BrokerError):
    """A backend failed to do what was asked."""


class BackendUnavailable(BackendError):
    """The backend's endpoint did not answer."""


class BackendTimeout(BackendError):
    """The backend did not finish in time."""


class ConfigError(BrokerError):
    """The configuration file is missing, malformed or names an unknown key."""
