"""The admin API over real HTTP: tokens, operator commands, and bad input answered as JSON."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import users
from frontends.admin.app import create_app


@pytest.fixture
async def api(sqlite_rt: Runtime) -> AsyncIterator[tuple[TestServer, ClientSession, str]]:
    token = await users.issue_token(sqlite_rt, SYSTEM, "operator")
    server = TestServer(create_app(sqlite_rt), host="127.0.0.1")
    await server.start_server()
    async with ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield server, session, token
    await server.close()


async def call(
    api: tuple[TestServer, ClientSession, str], method: str, path: str, **kw: Any
) -> tuple[int, Any]:
    server, session, _ = api
    async with session.request(method, server.make_url(path), **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


async def test_operator_flow(api: tuple[TestServer, ClientSession, str]) -> None:
    status, made = await call(api, "POST", "/api/v1/users", json={"name": "alice"})
    assert status == 201 and made["access_key"] and made["secret_key"]
    status, listed = await call(api, "GET", "/api/v1/users")
    assert status == 200 and {u["name"] for u in listed} == {"operator", "alice"}
    assert made["secret_key"] not in str(listed)
    status, flavors = await call(api, "GET", "/api/v1/flavors")
    assert status == 200 and "t3.micro" in {f["name"] for f in flavors}
    status, nets = await call(api, "GET", "/api/v1/networks")
    assert status == 200 and nets[0]["cidr"] == "10.11.0.0/24"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/api/v1/instances/i-0123456789abcdef0", None, 404),
        ("GET", "/api/v1/instances/nonsense", None, 400),
        ("POST", "/api/v1/instances/i-0123456789abcdef0/fly", {}, 400),
        ("GET", "/api/v1/users/nobody", None, 404),
        ("POST", "/api/v1/users", {"name": 42}, 400),
        ("POST", "/api/v1/users", {"name": "x", "role": "emperor"}, 400),
        ("POST", "/api/v1/users", {}, 400),
        ("POST", "/api/v1/users", [1, 2], 400),
        ("POST", "/api/v1/networks", {"name": "n", "cidr": "300.0.0.0/8"}, 400),
        ("POST", "/api/v1/flavors", {"name": "f", "vcpus": "two", "memory_mb": 1}, 400),
        ("POST", "/api/v1/flavors", {"name": "f", "vcpus": 0, "memory_mb": 1024}, 400),
        ("POST", "/api/v1/targets", {"name": "h", "kind": "host", "driver": "nosuch"}, 400),
        ("POST", "/api/v1/targets", {"name": "h", "kind": "moon", "driver": "libvirt"}, 400),
        ("DELETE", "/api/v1/targets/none", None, 404),
        ("GET", "/api/v1/instances?limit=abc", None, 400),
        ("GET", "/api/v1/instances?state=flying", None, 400),
        ("GET", "/api/v1/nothing-here", None, 404),
        ("GET", "/api/v1/targets/none/unmanaged", None, 404),
        ("POST", "/api/v1/targets/none/unmanaged/i-0a/adopt", {}, 400),
        ("POST", "/api/v1/targets/none/unmanaged/i-0a/adopt", {"user": "operator"}, 400),
        ("DELETE", "/api/v1/targets/none/unmanaged/i-0a", None, 404),
        ("PUT", "/api/v1/targets/none/reservation", {"cpu": "1"}, 404),
        ("PUT", "/api/v1/targets/none/reservation", {"cpu": True}, 400),
        ("PUT", "/api/v1/targets/none/costs", {"cpu_cost": "cheap"}, 400),
        ("PUT", "/api/v1/clusters/none/reservation", {"memory": "12GB"}, 400),
        ("GET", "/api/v1/clusters/none", None, 404),
    ],
)
async def test_bad_input_is_a_json_error_and_changes_nothing(
    api: tuple[TestServer, ClientSession, str], method: str, path: str, body: Any, status: int
) -> None:
    _, before = await call(api, "GET", "/api/v1/users")
    got, answer = await call(api, method, path, json=body)
    assert got == status, answer
    assert answer["error"]["message"] and answer["error"]["code"]
    _, after = await call(api, "GET", "/api/v1/users")
    assert before == after


async def test_malformed_json_and_oversized_bodies(
    api: tuple[TestServer, ClientSession, str],
) -> None:
    status, answer = await call(
        api,
        "POST",
        "/api/v1/users",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and "JSON" in answer["error"]["message"]
    status, _ = await call(api, "POST", "/api/v1/users", data=io.BytesIO(b"x" * (2 * 1024 * 1024)))
    assert status == 413


async def test_tokens_are_checked(
    api: tuple[TestServer, ClientSession, str], sqlite_rt: Runtime
) -> None:
    server, _, token = api
    async with ClientSession() as anon:
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": f"Bearer {token}x"},
            {"Authorization": f"Basic {token}"},
        ):
            async with anon.get(server.make_url("/api/v1/users"), headers=headers) as resp:
                assert resp.status == 401
    creds = await users.create_user(sqlite_rt, SYSTEM, "carol")
    del creds
    user_token = await users.issue_token(sqlite_rt, SYSTEM, "carol")
    async with ClientSession(headers={"Authorization": f"Bearer {user_token}"}) as carol:
        async with carol.post(server.make_url("/api/v1/users"), json={"name": "x"}) as resp:
            assert resp.status == 403
        async with carol.get(server.make_url("/api/v1/users")) as resp:
            assert [u["name"] for u in await resp.json()] == ["carol"]
