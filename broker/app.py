"""The composition root: read config, open the database, load plugins, run everything.

``serve`` migrates SQLite on start, seeds a fresh database, adds the local host on first start,
starts the scheduler, the monitor, the hook runner and the accounting pass, and one aiohttp
listener per enabled frontend found through the ``cloudbroker.frontends`` entry points. SIGTERM
and SIGINT shut it all down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any, cast

from aiohttp import web

from broker import db, heap, plugins
from broker.accounting import run_accounting
from broker.config import Config, ListenerSection
from broker.errors import BrokerError, ConfigError
from broker.hooks import run_hooks
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.protocols import WorkerFrontendFactory
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.seed import refresh_operator_file, seed
from broker.service import policies
from broker.workers import WorkerSet, bind

log = logging.getLogger("cloudbroker")
FRONTENDS = ("ec2", "occi", "admin")


async def open_runtime(config: Config, *, migrate: bool | None = None) -> Runtime:
    """A runtime on a migrated, seeded database (tests use this too)."""
    if migrate is None:
        migrate = db.is_sqlite(config.database_url)
    if migrate:
        await db.upgrade(config.database_url)
    rt = Runtime(config)
    rt.backends = BackendRegistry(rt.engine, rt.box.open, str(config.data_path))
    rt.policy_factory = plugins.load("cloudbroker.policies", "default")
    first = await seed(rt)
    refresh_operator_file(rt)
    if first and config.broker.local_host != "none":
        await add_local_host(rt)
    if config.policy is not None:
        try:
            await policies.apply_file_policy(rt, config.policy)
        except BaseException:
            await rt.aclose()
            raise
    return rt


async def add_local_host(rt: Runtime) -> None:
    """Ask each ``cloudbroker.local`` plugin for the machine's own host and its ready image."""
    for name in plugins.names("cloudbroker.local"):
        setup = plugins.load("cloudbroker.local", name)
        try:
            await setup(rt)
        except BrokerError as exc:
            log.warning("local host '%s' not added: %s", name, exc.message)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Runtime]:
    """Everything up (listeners, scheduler, monitor) for the duration of the block."""
    rt = await open_runtime(config)
    assert rt.policy_factory is not None
    scheduler = Scheduler(rt, rt.policy_factory(), rt.policy_factory)
    monitor = Monitor(rt)
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        for name in FRONTENDS:
            section: ListenerSection = getattr(config, name)
            if not section.enabled:
                continue
            if name not in plugins.names("cloudbroker.frontends"):
                log.warning("[%s] is enabled but no frontend plugin provides it", name)
                continue
            factory = plugins.load("cloudbroker.frontends", name)
            if getattr(section, "workers", 0):
                served = cast(WorkerFrontendFactory, factory)
                runners.append(await _with_workers(rt, name, section, served))
            else:
                runners.append(await _listen(rt, name, section, factory(rt)))
        tasks.append(asyncio.create_task(scheduler.run(), name="scheduler"))
        tasks.append(asyncio.create_task(monitor.run(), name="monitor"))
        tasks.append(asyncio.create_task(run_hooks(rt, config.hooks), name="hooks"))
        accounting_cfg = config.accounting
        tasks.append(
            asyncio.create_task(
                run_accounting(rt, accounting_cfg.interval, accounting_cfg.batch), name="accounting"
            )
        )
        yield rt
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if rt.workers is not None:
            await rt.workers.aclose()
        await scheduler.aclose()
        for runner in runners:
            await runner.cleanup()
        await rt.aclose()


async def _listen(
    rt: Runtime, name: str, section: ListenerSection, app: web.Application
) -> web.AppRunner:
    """``app`` served on ``section``'s address, which goes into ``rt.listeners``."""
    tls = section.ssl_context()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = section.listen.rpartition(":")
    site = web.TCPSite(runner, host, int(port), ssl_context=tls, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"[{name}] cannot listen on {section.listen}: {exc.strerror or exc}"
        ) from None
    bound = runner.addresses[0] if runner.addresses else (host, port)
    rt.listeners[name] = f"{bound[0]}:{bound[1]}"
    log.info("%s listening on %s", name, rt.listeners[name])
    return runner


async def _with_workers(
    rt: Runtime, name: str, section: ListenerSection, factory: WorkerFrontendFactory
) -> web.AppRunner:
    """``section``'s listener served by worker processes (:mod:`broker.workers`); this process
    serves what they hand over on a Unix socket. The runner of that socket."""
    section.ssl_context()  # a bad certificate fails here, not in every worker
    try:
        listener = bind(section.listen)
    except OSError as exc:
        raise ConfigError(
            f"[{name}] cannot listen on {section.listen}: {exc.strerror or exc}"
        ) from None
    count = int(getattr(section, "workers", 0))
    rt.workers = WorkerSet(rt, name, listener, count)
    runner = web.AppRunner(factory(rt, forwarded=True), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.UnixSite(runner, rt.workers.inner).start()
        await rt.workers.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = listener.getsockname()
    rt.listeners[name] = f"{bound[0]}:{bound[1]}"
    log.info("%s listening on %s in %d worker processes", name, rt.listeners[name], count)
    return runner


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
    async with running(config) as rt:
        print(
            f"cloudbroker serving region {config.broker.region}: "
            + ", ".join(
                f"{k} {'https' if getattr(config, k).tls_cert else 'http'}://{v}"
                for k, v in rt.listeners.items()
            ),
            flush=True,
        )
        print(f"operator credential: {config.data_path / 'operator.json'}", flush=True)
        heap.settle()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
