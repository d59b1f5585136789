"""Each EC2 and OCCI request names its action for the metrics middleware in
``request[metrics.ACTION]``: the EC2 action when it is one we know, the OCCI kind and method
(or the action's term); never free text from the client."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from broker import metrics
from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import users
from frontends.ec2.app import create_app as ec2_app
from frontends.occi.app import create_app as occi_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _capturing(app: web.Application, seen: list[Any]) -> web.Application:
    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            seen.append(request.get(metrics.ACTION))

    app.middlewares.insert(0, capture)
    return app


async def test_ec2_names_known_actions_only(sqlite_rt: Runtime) -> None:
    creds = await users.create_user(sqlite_rt, SYSTEM, "metered")
    seen: list[Any] = []
    async with TestClient(TestServer(_capturing(ec2_app(sqlite_rt), seen))) as client:
        url = str(client.make_url("/"))
        for action in ("DescribeInstances", "NoSuchAction"):
            body = urlencode({"Action": action, "Version": "2016-11-15"}).encode()
            form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
            req = AWSRequest(method="POST", url=url, data=body, headers=form)
            auth = Credentials(creds.access_key, creds.secret_key)
            SigV4Auth(auth, "ec2", "cloudbroker-1").add_auth(req)
            async with client.post("/", data=body, headers=dict(req.headers.items())) as resp:
                assert resp.status in (200, 400)
    assert seen == ["DescribeInstances", "-"]


async def test_occi_names_kind_and_method(sqlite_rt: Runtime) -> None:
    creds = await users.create_user(sqlite_rt, SYSTEM, "metered")
    basic = base64.b64encode(f"{creds.access_key}:{creds.secret_key}".encode()).decode()
    seen: list[Any] = []
    async with TestClient(TestServer(_capturing(occi_app(sqlite_rt), seen))) as client:
        headers = {"Authorization": "Basic " + basic, "Accept": "text/uri-list"}
        async with client.get("/compute/", headers=headers) as resp:
            assert resp.status == 200
        async with client.get("/-/", headers={**headers, "Accept": "text/plain"}) as resp:
            assert resp.status == 200
    assert seen == ["compute GET", "query GET"]
