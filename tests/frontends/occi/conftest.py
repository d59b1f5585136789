"""A real broker with the OCCI and EC2 frontends on loopback, driven by raw aiohttp clients.

The server (runtime on SQLite, a fake host, scheduler and monitor loops, one OCCI and one EC2
listener) runs in a background thread with its own event loop, once per session; tests talk to
it over HTTP from their own loop. Each test gets fresh users, so tenants never see each other.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from multidict import CIMultiDict

from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import networks, users
from frontends.ec2.app import create_app as create_ec2
from frontends.occi.app import create_app as create_occi
from tests.harness import fake_cloud, in_thread, listen, running_loops

T = TypeVar("T")
REGION = "cloudbroker-1"
ZONE = "cloudbroker-1a"
OS_SCHEME = "http://schemas.cloudbroker.org/occi/templates/os#"
RES_SCHEME = "http://schemas.cloudbroker.org/occi/templates/resource#"
INFRA = "http://schemas.ogf.org/occi/infrastructure#"


@dataclasses.dataclass
class Server:
    loop: asyncio.AbstractEventLoop
    rt: Runtime
    occi: str
    ec2: str
    image_id: str
    network_id: str

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop from a test's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


@dataclasses.dataclass(frozen=True)
class Tenant:
    user_id: str
    name: str
    access_key: str
    secret_key: str

    @property
    def basic(self) -> str:
        raw = f"{self.access_key}:{self.secret_key}".encode()
        return "Basic " + base64.b64encode(raw).decode()


async def _start(tmp: Path, ready: threading.Event, holder: dict[str, Any]) -> None:
    rt, image_id = await fake_cloud(tmp, REGION, ZONE, {"h1": (8192, 8 * 1024 * 1024)})
    big = await networks.create(rt, SYSTEM, name="big", cidr="10.20.0.0/20", zone=ZONE)
    runners = []
    endpoints = []
    for factory in (create_occi, create_ec2):
        runner, endpoint = await listen(factory(rt))
        endpoints.append(endpoint)
        runners.append(runner)
    holder["server"] = Server(
        asyncio.get_running_loop(), rt, endpoints[0], endpoints[1], image_id, big.id
    )
    holder["stop"] = stop = asyncio.Event()
    try:
        async with running_loops(rt):
            ready.set()
            await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await rt.aclose()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("occi")
    for holder in in_thread(lambda ready, holder: _start(tmp, ready, holder), "occi-server"):
        yield holder["server"]


def new_tenant(server: Server, prefix: str = "u", role: str = "user") -> Tenant:
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    creds = server.run(users.create_user(server.rt, SYSTEM, name, role=role))
    return Tenant(creds.user.id, name, creds.access_key, creds.secret_key)


@dataclasses.dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        import json

        return json.loads(self.body)

    def all(self, name: str) -> list[str]:
        return list(self.headers.getall(name, []))


class Client:
    """Raw HTTP to the OCCI endpoint as one tenant (or with explicit headers only)."""

    def __init__(self, server: Server, session: aiohttp.ClientSession, auth: str | None) -> None:
        self.server = server
        self.session = session
        self.auth = auth

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[str, str]] | dict[str, str] | None = None,
        body: bytes | str = b"",
        accept: str | None = "text/plain",
        content_type: str | None = None,
        auth: bool = True,
    ) -> Reply:
        hdrs: list[tuple[str, str]] = []
        if self.auth and auth:
            hdrs.append(("Authorization", self.auth))
        if accept:
            hdrs.append(("Accept", accept))
        if content_type:
            hdrs.append(("Content-Type", content_type))
        if isinstance(headers, dict):
            hdrs.extend(headers.items())
        elif headers:
            hdrs.extend(headers)
        raw = body.encode() if isinstance(body, str) else body
        data: Any = io.BytesIO(raw) if len(raw) > 512 * 1024 else raw
        async with self.session.request(
            method, self.server.occi + path, headers=CIMultiDict(hdrs), data=data or None
        ) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: bytes | str = b"", **kw: Any) -> Reply:
        kw.setdefault("content_type", "text/plain")
        return await self.request("POST", path, body=body, **kw)

    async def put(self, path: str, body: bytes | str = b"", **kw: Any) -> Reply:
        kw.setdefault("content_type", "text/plain")
        return await self.request("PUT", path, body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def alice(server: Server) -> Tenant:
    return new_tenant(server, "alice")


@pytest.fixture
def bob(server: Server) -> Tenant:
    return new_tenant(server, "bob")


@pytest.fixture
def occi(server: Server, session: aiohttp.ClientSession, alice: Tenant) -> Client:
    return Client(server, session, alice.basic)


def client_for(server: Server, session: aiohttp.ClientSession, tenant: Tenant) -> Client:
    return Client(server, session, tenant.basic)


def compute_body(server: Server, flavor: str = "t3.micro", *extra: str) -> str:
    lines = [
        f'Category: compute; scheme="{INFRA}"; class="kind"',
        f'Category: {server.image_id}; scheme="{OS_SCHEME}"; class="mixin"',
    ]
    if flavor:
        lines.append(f'Category: {flavor}; scheme="{RES_SCHEME}"; class="mixin"')
    lines.extend(extra)
    return "\n".join(lines) + "\n"


async def create_compute(client: Client, *extra: str, flavor: str = "t3.micro") -> str:
    reply = await client.post("/compute/", compute_body(client.server, flavor, *extra))
    assert reply.status == 201, reply.text
    location = reply.headers["Location"]
    assert location.startswith("/compute/i-")
    return str(location)


async def wait_state(client: Client, location: str, state: str, timeout: float = 20) -> str:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    last = ""
    while loop.time() < until:
        reply = await client.get(location, accept="application/occi+json")
        last = reply.json()["attributes"]["occi.compute.state"]
        if last == state:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{location} stayed {last}, never {state}")


@pytest.fixture
def bob_client(server: Server, session: aiohttp.ClientSession, bob: Tenant) -> Client:
    return Client(server, session, bob.basic)
