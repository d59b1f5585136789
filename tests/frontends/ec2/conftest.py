"""A real broker with the EC2 frontend on loopback, driven by real boto3 clients.

The server (runtime on SQLite, a fake host, scheduler and monitor loops, two EC2 listeners)
runs in a background thread with its own event loop, once per session, so tests are plain
synchronous boto3 code. Each test gets fresh users, so tenants never see each other's work.
The second listener reads "now" from :attr:`Server.replay_now`, for replaying captured
traffic and for clock-skew tests; the first uses the real clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import http.client
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from sqlalchemy import insert

from broker import ids
from broker import model as m
from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import networks, users
from frontends.ec2.app import CLOCK, create_app
from tests.harness import fake_cloud, in_thread, listen, running_loops

T = TypeVar("T")
REGION = "cloudbroker-1"
ZONE = "cloudbroker-1a"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
WIRE_KEY = "AKIDEXAMPLE"
WIRE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


@dataclasses.dataclass
class Server:
    loop: asyncio.AbstractEventLoop
    rt: Runtime
    endpoint: str
    replay_endpoint: str
    image_id: str
    big_subnet: str
    replay_now: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop (setup that has no EC2 action)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclasses.dataclass(frozen=True)
class Tenant:
    user_id: str
    name: str
    access_key: str
    secret_key: str


async def _start(tmp: Path, ready: threading.Event, holder: dict[str, Any]) -> None:
    rt, image_id = await fake_cloud(tmp, REGION, ZONE, {"h1": (8192, 8 * 1024 * 1024)})
    big = await networks.create(rt, SYSTEM, name="big", cidr="10.20.0.0/20", zone=ZONE)
    await users.create_user(rt, SYSTEM, "wire", access_key=WIRE_KEY, secret_key=WIRE_SECRET)
    runners = []
    endpoints = []
    server_box: dict[str, Server] = {}
    for replay in (False, True):
        app = create_app(rt)
        if replay:
            app[CLOCK] = lambda: server_box["s"].replay_now
        runner, endpoint = await listen(app)
        endpoints.append(endpoint)
        runners.append(runner)
    server = Server(asyncio.get_running_loop(), rt, endpoints[0], endpoints[1], image_id, big.id)
    server_box["s"] = server
    holder["server"] = server
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
    tmp = tmp_path_factory.mktemp("ec2")
    for holder in in_thread(lambda ready, holder: _start(tmp, ready, holder), "ec2-server"):
        yield holder["server"]


def new_tenant(server: Server, prefix: str = "u") -> Tenant:
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    creds = server.run(users.create_user(server.rt, SYSTEM, name))
    return Tenant(creds.user.id, name, creds.access_key, creds.secret_key)


def client(
    server: Server, tenant: Tenant, *, secret: str | None = None, endpoint: str | None = None
) -> Any:
    session = boto3.session.Session()
    return session.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint or server.endpoint,
        aws_access_key_id=tenant.access_key,
        aws_secret_access_key=secret or tenant.secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture
def alice(server: Server) -> Tenant:
    return new_tenant(server, "alice")


@pytest.fixture
def bob(server: Server) -> Tenant:
    return new_tenant(server, "bob")


@pytest.fixture
def ec2(server: Server, alice: Tenant) -> Any:
    return client(server, alice)


def add_key_pair(server: Server, tenant: Tenant, name: str) -> None:
    async def go() -> None:
        async with server.rt.engine.begin() as conn:
            await conn.execute(
                insert(m.KeyPair).values(
                    id=ids.new_id("key_pair"),
                    owner_id=tenant.user_id,
                    name=name,
                    fingerprint=hashlib.sha1(name.encode()).hexdigest(),
                    public_key="ssh-ed25519 AAAA test",
                )
            )

    server.run(go())


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    @property
    def code(self) -> str:
        text = self.body.decode()
        start = text.find("<Code>")
        return text[start + 6 : text.find("</Code>")] if start >= 0 else ""


def send(url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Reply:
    """Send exactly these headers and body bytes (Host included) and read the reply."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read())
    finally:
        conn.close()


def signed(
    server: Server,
    tenant: Tenant,
    body: bytes | dict[str, str],
    *,
    endpoint: str | None = None,
    content_type: str = FORM,
) -> Reply:
    """POST a SigV4-signed form body the way botocore signs it, bytes exactly as given."""
    url = endpoint or server.endpoint
    raw = body if isinstance(body, bytes) else urlencode(body).encode()
    req = AWSRequest(method="POST", url=url + "/", data=raw, headers={"Content-Type": content_type})
    SigV4Auth(Credentials(tenant.access_key, tenant.secret_key), "ec2", REGION).add_auth(req)
    host = urlsplit(url).netloc
    headers = [("Host", host), *((k, v) for k, v in req.headers.items() if k.lower() != "host")]
    headers.append(("Content-Length", str(len(raw))))
    return send(url, "POST", "/", headers, raw)
