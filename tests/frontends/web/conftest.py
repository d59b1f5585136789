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
from aiohttp import web
from botocore.config import Config

from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.config import from_mapping
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, networks, targets, users
from frontends.admin.app import create_app as admin_app
from frontends.ec2.app import create_app as ec2_app
from frontends.web.app import create_app as web_app
from policies.placement import DefaultPolicy
from tests.fakes import FakeBackend
from tests.harness import in_thread

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


async def _listen(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def _start(tmp: Path, ready: threading.Event, holder: dict[str, Any]) -> None:
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none", "region": REGION},
            "monitor": {"interval": 0.5},
            "scheduler": {"interval": 0.2},
        },
        env={},
    )
    rt = await open_runtime(cfg, migrate=True)
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: FakeBackend
    )  # type: ignore[arg-type,return-value]
    for name in ("h1", "h2"):
        await targets.add(
            rt,
            SYSTEM,
            name=name,
            kind="host",
            driver="fake",
            hypervisor="kvm",
            cluster=ZONE,
            settings={"cpu": 64, "memory_mb": 256 * 1024},
        )
    for name, kind in (("us-east-1", "region"), ("site-b", "peer")):
        await targets.add(rt, SYSTEM, name=name, kind=kind, driver="fake")
    await Monitor(rt).cycle()
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    await networks.create(rt, SYSTEM, name="lan", cidr="10.30.0.0/22", zone=ZONE)
    admin = admin_app(rt)
    admin.add_subapp("/ui/", web_app(rt))
    admin_runner, admin_url = await _listen(admin)
    ec2_runner, ec2_url = await _listen(ec2_app(rt))
    scheduler = Scheduler(rt, DefaultPolicy())
    tasks = [asyncio.create_task(scheduler.run()), asyncio.create_task(Monitor(rt).run())]
    stop = asyncio.Event()
    holder["server"] = Server(asyncio.get_running_loop(), rt, admin_url, ec2_url, image.id)
    holder["stop"] = stop
    ready.set()
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.aclose()
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
