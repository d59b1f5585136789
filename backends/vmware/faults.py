"""The one place vSphere faults and transport errors become broker errors.

Decisions:

* A refused user name or password is the operator's to fix: ``InvalidRequest`` on the
  ``password`` field, so ``host add`` says so instead of reporting an outage.
* An endpoint that does not answer (refused, unresolvable, reset, TLS handshake failed) is
  ``BackendUnavailable``; a certificate that does not verify says to pass ``--insecure`` or
  install the CA. A call or task that runs out of time is ``BackendTimeout``.
* Out of room on the target (``InsufficientResourcesFault``, ``NoDiskSpace``...) is
  ``NoCapacity``: placement may try elsewhere.
* Everything else vSphere raises is ``BackendError`` with vSphere's own message and the fault's
  name, so the event log says which call failed and why.
"""

from __future__ import annotations

import http.client
import ssl
from typing import Any

from backends.vmware.sdk import vim, vmodl
from broker.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BrokerError,
    InvalidRequest,
    NoCapacity,
)

#: vSphere fault type names that mean "no room here".
_NO_ROOM = frozenset(
    {
        "InsufficientResourcesFault",
        "InsufficientHostCapacityFault",
        "InsufficientMemoryResourcesFault",
        "InsufficientCpuResourcesFault",
        "NoDiskSpace",
        "OutOfBounds",
    }
)


def fault_name(fault: Any) -> str:
    """``vim.fault.InvalidPowerState`` -> ``InvalidPowerState``."""
    return type(fault).__name__.rsplit(".", 1)[-1]


def fault_text(fault: Any) -> str:
    msg = getattr(fault, "msg", "") or ""
    if not msg:
        messages = getattr(fault, "faultMessage", None) or []
        msg = "; ".join(str(getattr(m, "message", "") or "") for m in messages)
    name = fault_name(fault)
    return f"{name}: {msg}" if msg and msg != name else name


def translate(exc: BaseException, what: str) -> BrokerError:
    """The broker error for ``exc`` raised while doing ``what`` (raise it ``from exc``)."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, vim.fault.InvalidLogin):
        return InvalidRequest(
            f"{what}: vSphere refused the user name or password", field="password"
        )
    if isinstance(exc, vim.fault.NoPermission | vim.fault.NotAuthenticated):
        return BackendError(f"{what}: not permitted ({fault_text(exc)})")
    if isinstance(exc, vim.fault.Timedout):
        return BackendTimeout(f"{what}: {fault_text(exc)}")
    if isinstance(exc, vmodl.MethodFault):
        if fault_name(exc) in _NO_ROOM:
            return NoCapacity(f"{what}: {fault_text(exc)}")
        return BackendError(f"{what}: {fault_text(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return BackendUnavailable(
            f"{what}: the server's certificate does not verify ({exc.verify_message}); "
            "install its CA or add the target with --insecure"
        )
    if isinstance(exc, TimeoutError):
        return BackendTimeout(f"{what}: no answer in time")
    if isinstance(exc, OSError | http.client.HTTPException):
        return BackendUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return BackendError(f"{what}: {type(exc).__name__}: {exc}")
