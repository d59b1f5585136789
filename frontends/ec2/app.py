"""The EC2 Query API application: read, authenticate, dispatch, render, in that order.

Every request is parsed from its raw bytes (:mod:`frontends.ec2.protocol`), verified with
SigV4 or SigV2 against the caller's secret (:mod:`frontends.ec2.signing`, 15 minutes of clock
skew, "now" from ``rt.clock`` so tests can replay captured traffic), then handed to the one
handler the action table names. Every error, from any step, becomes an EC2 error document
through the one table in :mod:`frontends.ec2.errors`. Secrets and signatures are never logged.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import unquote

from aiohttp import web

from broker import metrics
from broker.auth import Caller
from broker.errors import BrokerError
from broker.ratelimit import RateLimiter
from broker.runtime import Runtime
from frontends.ec2 import render
from frontends.ec2.actions import ACTIONS
from frontends.ec2.errors import WireError, classify
from frontends.ec2.lookups import DefaultGroups
from frontends.ec2.protocol import (
    Call,
    Params,
    check_content_type,
    read_body,
    request_params,
    version_of,
)
from frontends.ec2.replies import REUSABLE, Replies
from frontends.ec2.signing import SignedRequest, Verifier

log = logging.getLogger(__name__)

MAX_SKEW: Final = 900.0
RUNTIME: Final = web.AppKey("runtime", Runtime)
VERIFIER: Final = web.AppKey("verifier", Verifier)
CLOCK: Final[web.AppKey[Callable[[], dt.datetime]]] = web.AppKey("clock")
FRAGMENTS: Final = web.AppKey("fragments", render.Fragments)
LIMITER: Final = web.AppKey("limiter", RateLimiter)
REPLIES: Final = web.AppKey("replies", Replies)
DEFAULT_GROUPS: Final = web.AppKey("default_groups", DefaultGroups)


class RequestIds:
    """Request ids in the UUID shape EC2 answers with: a random head made once per app, then a
    count. They only need to tell requests apart in answers and logs; ``uuid4()`` for each one
    read the kernel's random source every time, 3% of a kept DescribeInstances."""

    def __init__(self) -> None:
        head = uuid.uuid4().hex
        self._head = f"{head[:8]}-{head[8:12]}-{head[12:16]}-{head[16:20]}-"
        self._count = itertools.count(int(head[20:], 16))

    def next(self) -> str:
        return f"{self._head}{next(self._count) & 0xFFFFFFFFFFFF:012x}"


REQUEST_IDS: Final = web.AppKey("request_ids", RequestIds)

_MAX_KEY: Final = 128

#: Where each action is answered when worker processes serve the listener (``[ec2] workers``,
#: :mod:`broker.workers`). A worker answers what reads and writes the database alone; it hands
#: to the core what needs a backend (the console is read from the host; volume actions ask the
#: target's driver whether it stores volumes). Every action is in exactly one of the two (a
#: test holds them to :data:`ACTIONS`), so a new one is placed on purpose.
IN_WORKERS: Final = frozenset(
    {
        "AllocateAddress", "AssociateAddress", "AuthorizeSecurityGroupEgress",
        "AuthorizeSecurityGroupIngress", "CreateImage", "CreateKeyPair", "CreateSecurityGroup",
        "CreateTags", "DeleteKeyPair", "DeleteSecurityGroup", "DeleteTags", "DeregisterImage",
        "DescribeAccountAttributes", "DescribeAddresses", "DescribeAvailabilityZones",
        "DescribeImageAttribute", "DescribeImages", "DescribeInstanceAttribute",
        "DescribeInstanceStatus", "DescribeInstanceTypes", "DescribeInstances",
        "DescribeKeyPairs", "DescribeNetworkInterfaces", "DescribeRegions",
        "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSubnets", "DescribeTags",
        "DescribeVolumes", "DescribeVpcs", "DisassociateAddress", "ImportKeyPair",
        "ModifyImageAttribute", "ModifyInstanceAttribute", "RebootInstances", "RegisterImage",
        "ReleaseAddress", "RevokeSecurityGroupEgress", "RevokeSecurityGroupIngress",
        "RunInstances", "StartInstances", "StopInstances", "TerminateInstances",
    }
)  # fmt: skip
IN_CORE: Final = frozenset(
    {
        "GetConsoleOutput", "AttachVolume", "DetachVolume", "CreateVolume", "DeleteVolume",
        "CreateSnapshot", "DeleteSnapshot",
    }
)  # fmt: skip


def set_metrics_action(request: web.Request, action: str) -> None:
    """Name the request's action for the metrics middleware (a bounded set of names)."""
    request[metrics.ACTION] = action


def _claimed_key(headers: Mapping[str, str], query: str, params: Mapping[str, str]) -> str | None:
    """The access key the request says it was signed with (checked by the verifier after)."""
    auth = headers.get("Authorization", "")
    _, found, rest = auth.partition("Credential=")
    if found:
        return rest.split("/", 1)[0].strip() or None
    for piece in query.split("&"):
        name, _, value = piece.partition("=")
        if name == "X-Amz-Credential":
            return unquote(value).split("/", 1)[0] or None
    return params.get("AWSAccessKeyId") or None


async def authenticate(
    request: web.Request, params: Params, path: str, query: str, body: bytes
) -> Caller:
    """The caller who signed this request, or :class:`SignatureError`."""
    app = request.app  # a property that looks the app up: read once
    key = _claimed_key(request.headers, query, params)
    found = None
    if key is not None and len(key) <= _MAX_KEY:
        found = await app[RUNTIME].caller_for_key(key)

    def secret_for(access_key: str) -> str | None:
        return found[1] if found is not None and access_key == key else None

    signed = SignedRequest(request.method, path, query, request.headers, body)
    app[VERIFIER].verify(signed, params, secret_for, app[CLOCK]())
    assert found is not None and key is not None  # the verifier refuses a key without a secret
    # limited after the signature is checked: nobody can spend another user's requests
    limiter = app.get(LIMITER)  # none where workers hand requests over: they limited them
    if limiter is not None and not limiter.allow(key, time.monotonic()):
        raise WireError("RequestLimitExceeded", "Request limit exceeded.", status=503)
    return found[0]


async def handle(request: web.Request) -> web.Response:
    app = request.app  # a property that looks the app up: read once
    request_id = app[REQUEST_IDS].next()
    action = "-"
    try:
        check_content_type(request)
        body = await read_body(request)
        path, _, query = request.raw_path.partition("?")
        params = Params(
            request_params(request.method, query.encode("utf-8", "surrogateescape"), body)
        )
        caller = await authenticate(request, params, path, query, body)
        action = params.get("Action", "")
        if not action:
            raise WireError("MissingAction", "The request must contain the parameter Action")
        handler = ACTIONS.get(action)
        # a known action's name, never the client's free text (metrics labels stay bounded)
        set_metrics_action(request, action if handler is not None else "-")
        if handler is None:
            raise WireError(
                "InvalidAction", f"The action {action[:64]} is not valid for this web service."
            )
        rt = app[RUNTIME]
        if rt.core is not None and action not in IN_WORKERS:
            return await rt.core.forward(request, body)
        version = version_of(params)
        kept = app[REPLIES]
        asked = kept.key(caller, request.host, params) if action in REUSABLE else None
        db_version = rt.reads.version() if asked is not None else None
        if asked is not None:
            again = kept.get(asked, db_version, request_id)
            if again is not None:
                return _answer(again, request_id)
        root = render.envelope(action, version, request_id)
        call = Call(
            rt,
            caller,
            params,
            action,
            version,
            request_id,
            request.host,
            app[FRAGMENTS],
            app[DEFAULT_GROUPS],
        )
        whole = await handler(call, root)
    except (BrokerError, Exception) as exc:
        status, code, message = classify(exc)
        if status >= 500 and not isinstance(exc, BrokerError):
            log.exception("EC2 %s failed (request %s)", action[:64], request_id)
        else:
            log.info("EC2 %s -> %s %s (request %s)", action[:64], status, code, request_id)
        return web.Response(
            body=render.error(code, message, request_id),
            status=status,
            content_type="text/xml",
            headers={"x-amzn-RequestId": request_id},
        )
    body = render.serialize(root) if whole is None else whole
    if asked is not None:
        kept.keep(asked, db_version, body, request_id)
    return _answer(body, request_id)


def _answer(body: bytes, request_id: str) -> web.Response:
    return web.Response(
        body=body, content_type="text/xml", headers={"x-amzn-RequestId": request_id}
    )


def create_app(rt: Runtime, *, forwarded: bool = False) -> web.Application:
    """The EC2 endpoint's app; ``forwarded``: the one serving what worker processes hand over
    (each request was rate limited and is counted by the worker that accepted it)."""
    app = web.Application()
    app[RUNTIME] = rt
    app[VERIFIER] = Verifier(max_skew=MAX_SKEW)
    app[CLOCK] = lambda: dt.datetime.fromtimestamp(rt.clock(), dt.UTC)
    app[FRAGMENTS] = render.Fragments()
    app[REPLIES] = Replies(rt.config.broker.kept_answers)
    app[REQUEST_IDS] = RequestIds()
    app[DEFAULT_GROUPS] = DefaultGroups()
    if not forwarded:
        app[LIMITER] = RateLimiter(rt.config.ec2.rate_limit, rt.config.ec2.rate_burst)
    # every request takes this one route: counted around it, where a middleware would cost
    # a chain built for each request
    app.router.add_route(
        "*", "/{tail:.*}", handle if forwarded else metrics.observed(rt, "ec2", handle)
    )
    return app
