"""The admin API served for a test: the real application on loopback, an operator's session."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import users
from frontends.admin.app import create_app

API = tuple[TestServer, ClientSession]


@contextlib.asynccontextmanager
async def admin_api(rt: Runtime, app: web.Application | None = None) -> AsyncIterator[API]:
    """``create_app(rt)`` (or ``app``) served on loopback, with the operator's token sent."""
    token = await users.issue_token(rt, SYSTEM, "operator")
    srv = TestServer(app if app is not None else create_app(rt), host="127.0.0.1")
    await srv.start_server()
    try:
        async with ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            yield srv, session
    finally:
        await srv.close()


async def call(
    api: API, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    """One request (as another user when ``token`` is given): the status and the JSON body."""
    srv, session = api
    if token is not None:
        kw["headers"] = {"Authorization": f"Bearer {token}"}
    async with session.request(method, srv.make_url(path), **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body
