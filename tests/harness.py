"""A service on its own event loop in a thread, for tests that drive it with blocking clients
(boto3, raw HTTP, a browser) from the test's thread; and the small cloud such a service runs
on: hosts that are :class:`tests.fakes.FakeBackend`, listeners on loopback, the loops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.app import open_runtime
from broker.auth import SYSTEM
from broker.config import from_mapping
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.service import images, targets
from policies.placement import DefaultPolicy
from tests.fakes import FakeBackend

#: ``start(ready, holder)``: sets up, puts what the tests need and an asyncio.Event under
#: ``holder["stop"]``, sets ``ready``, then runs until that event is set, and cleans up.
Start = Callable[[threading.Event, dict[str, Any]], Coroutine[Any, Any, None]]


def in_thread(start: Start, name: str, timeout: float = 60) -> Iterator[dict[str, Any]]:
    """Run ``start`` in a daemon thread; yield its ``holder`` once ready; stop it after. A
    failure while starting fails the test; one while stopping fails its teardown."""
    ready = threading.Event()
    holder: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        await start(ready, holder)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    assert ready.wait(timeout), f"{name} did not start"
    if failure:
        raise failure[0]
    try:
        yield holder
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        if failure:
            raise failure[0]


def use_backend(rt: Runtime, backend: type[Any] = FakeBackend) -> None:
    """Every target of ``rt`` runs on ``backend`` (a test double), whatever its driver says."""
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: backend
    )


async def add_fake_host(
    rt: Runtime, name: str = "h1", cluster: str = "cloudbroker-1a", **settings: Any
) -> targets.TargetView:
    """A host ``name`` with ``settings`` (cpu, memory_mb, ...) for :func:`use_backend`'s double."""
    return await targets.add(
        rt,
        SYSTEM,
        name=name,
        kind="host",
        driver="fake",
        hypervisor="kvm",
        cluster=cluster,
        settings=settings,
    )


async def fake_cloud(
    tmp: Path,
    region: str,
    zone: str,
    hosts: Mapping[str, tuple[int, int]],
    others: Sequence[tuple[str, str]] = (),
) -> tuple[Runtime, str]:
    """A migrated runtime in ``tmp`` with no local host: ``hosts`` (name -> CPUs, memory MB) in
    cluster ``zone`` and ``others`` (name, kind: a region or a peer) all on FakeBackend,
    probed once, and the public image ``tiny``; the runtime and the image's id."""
    cfg = from_mapping(
        {
            "broker": {"data_dir": str(tmp), "local_host": "none", "region": region},
            "monitor": {"interval": 0.5},
            "scheduler": {"interval": 0.2},
        },
        env={},
    )
    rt = await open_runtime(cfg, migrate=True)
    use_backend(rt)
    for name, (cpu, memory_mb) in hosts.items():
        await add_fake_host(rt, name, zone, cpu=cpu, memory_mb=memory_mb)
    for name, kind in others:
        await targets.add(rt, SYSTEM, name=name, kind=kind, driver="fake")
    await Monitor(rt).cycle()
    image = await images.register(
        rt, SYSTEM, images.ImageSpec(name="tiny", kind="kernel", kernel="/k", visibility="public")
    )
    return rt, image.id


async def listen(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a free loopback port: its runner (to clean up) and its base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def running_loops(rt: Runtime) -> AsyncIterator[None]:
    """The scheduler (default policy) and the monitor running on ``rt`` until the block ends."""
    scheduler = Scheduler(rt, DefaultPolicy())
    tasks = [asyncio.create_task(scheduler.run()), asyncio.create_task(Monitor(rt).run())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await scheduler.aclose()
