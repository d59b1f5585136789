"""Decides the HTTP status of every error an OCCI request can end with, in one table.

OCCI errors from the protocol layer carry their own ``status`` (400, 409, 413, 415). Broker
errors map by class, most specific first: a state conflict is 409 (GFD.223: the request
conflicts with the resource's current state), a bad parameter 400, a missing or invisible
resource 404, a quota or ownership refusal 403, no capacity and backend trouble 503, a feature
the broker lacks 501. A client error is never a 5xx. The body is one short line of text.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from broker import errors
from frontends.occi.categories import OcciError

STATUS: Final[tuple[tuple[type[errors.BrokerError], int], ...]] = (
    (errors.NotFound, 404),
    (errors.InvalidState, 409),
    (errors.AlreadyExists, 409),
    (errors.InvalidRequest, 400),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.QuotaExceeded, 403),
    (errors.NoCapacity, 503),
    (errors.Unsupported, 501),
    (errors.BackendError, 503),
    (errors.ConfigError, 503),
)

#: The realm advertised with a 401.
CHALLENGE: Final = 'Basic realm="cloudbroker OCCI"'


class Unsupported(errors.Unsupported):
    """Something OCCI defines that this broker cannot do (yet): 501 with the reason."""


def status_of(exc: errors.BrokerError) -> int:
    if isinstance(exc, OcciError):
        return exc.status
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str) -> web.Response:
    text = " ".join(message.split())[:500] + "\n"
    headers = {"WWW-Authenticate": CHALLENGE} if status == 401 else {}
    return web.Response(status=status, text=text, headers=headers)
