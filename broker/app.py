"""The composition root: read config, open the database, load plugins, run everything.

``serve`` migrates SQLite on start, seeds a fresh database, adds the local host on first start,
starts the scheduler, the monitor, the hook runner and the accounting pass, and one aiohttp
listener per enabled frontend found through the ``cloudbroker.frontends`` entry points. SIGTERM
and SIGINT shut it all down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from broker import db, plugins
from broker.accounting import run_accounting
from broker.config import Config, ListenerSection
from broker.errors import BrokerError, ConfigError
from broker.hooks import run_hooks
from broker.monitor import Monitor
from broker.plugins import BackendRegistry
from broker.runtime import Runtime
from broker.scheduler import Scheduler
from broker.seed import refresh_operator_file, seed
from broker.service import policies

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


def _ssl(section: ListenerSection) -> ssl.SSLContext | None:
    if not section.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(section.tls_cert, section.tls_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {section.tls_cert}: {exc}") from None
    return ctx


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
            runner = web.AppRunner(factory(rt), access_log=None, handle_signals=False)
            await runner.setup()
            runners.append(runner)
            host, _, port = section.listen.rpartition(":")
            site = web.TCPSite(
                runner, host, int(port), ssl_context=_ssl(section), reuse_address=True
            )
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"[{name}] cannot listen on {section.listen}: {exc.strerror or exc}"
                ) from None
            bound = runner.addresses[0] if runner.addresses else (host, port)
            rt.listeners[name] = f"{bound[0]}:{bound[1]}"
            log.info("%s listening on %s", name, rt.listeners[name])
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
        await scheduler.aclose()
        for runner in runners:
            await runner.cleanup()
        await rt.aclose()


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
        # What starting made (modules, tables, compiled statements, plugins) lives as long
        # as the process: out of the collector's sight, full collections under load skip it.
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
