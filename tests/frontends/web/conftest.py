"""A real broker for the web interface: admin listener with the UI mounted at /ui/, and EC2.

The server (runtime on SQLite, a fake host, scheduler and monitor loops, the admin app with
``add_subapp("/ui/", create_app(rt))`` and the EC2 app, each on loopback) runs in a thread
with its own event loop, once per module, so tests are plain synchronous code driving HTTP
clients, boto3 and the browser. Each test makes its own users, so tenants never meet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.config import Config

from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import networks, users
from frontends.admin.app import create_app as admin_app
from frontends.ec2.app import create_app as ec2_app
from frontends.web.app import create_app as web_app
from tests.harness import fake_cloud, in_thread, listen, running_loops

T = TypeVar("T")
REGION = "cloudbroker-1"
ZONE = "cloudbroker-1a"


@dataclasses.dataclass
class Server:
    loop: asyncio.AbstractEventLoop
    rt: Runtime
    admin: str  # http://127.0.0.1:port (the UI is at admin + "/ui/")
    ec2: str
    image_id: str

    @property
    def ui(self) -> str:
        return self.admin + "/ui/"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@dataclasses.dataclass(frozen=True)
class Tenant:
    user_id: str
    name: str
    access_key: str
    secret_key: str


async def _start(tmp: Path, ready: threading.Event, holder: dict[str, Any]) -> None:
    hosts = {name: (64, 256 * 1024) for name in ("h1", "h2")}
    others = (("us-east-1", "region"), ("site-b", "peer"))
    rt, image_id = await fake_cloud(tmp, REGION, ZONE, hosts, others)
    await networks.create(rt, SYSTEM, name="lan", cidr="10.30.0.0/22", zone=ZONE)
    admin = admin_app(rt)
    admin.add_subapp("/ui/", web_app(rt))
    admin_runner, admin_url = await listen(admin)
    ec2_runner, ec2_url = await listen(ec2_app(rt))
    holder["server"] = Server(asyncio.get_running_loop(), rt, admin_url, ec2_url, image_id)
    holder["stop"] = stop = asyncio.Event()
    try:
        async with running_loops(rt):
            ready.set()
            await stop.wait()
    finally:
        for runner in (admin_runner, ec2_runner):
            await runner.cleanup()
        await rt.aclose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("web")
    for holder in in_thread(lambda ready, holder: _start(tmp, ready, holder), "web-server"):
        yield holder["server"]


def new_tenant(server: Server, prefix: str = "u", role: str = "user") -> Tenant:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    creds = server.run(users.create_user(server.rt, SYSTEM, name, role=role))
    return Tenant(creds.user.id, name, creds.access_key, creds.secret_key)


def ec2_client(server: Server, tenant: Tenant) -> Any:
    return boto3.session.Session().client(
        "ec2",
        region_name=REGION,
        endpoint_url=server.ec2,
        aws_access_key_id=tenant.access_key,
        aws_secret_access_key=tenant.secret_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
