"""Worker processes: one frontend's listener served by processes beside ``serve``'s own.

Decides how a frontend's requests are spread over processes and what the processes tell each
other. With ``[ec2] workers = N``, ``serve``'s own process (the core) binds the EC2 listener and
starts N worker processes (``cloudbroker frontend-worker``) that accept on that very socket: the
kernel hands each connection to one of them. The core keeps everything that holds state beyond
the database: the scheduler, the monitor, the backends (a simulated host's domains live in the
process that made them), hooks, accounting, the admin and OCCI listeners. A worker answers what
the database alone answers and hands every other request (an action that needs a backend, as
GetConsoleOutput does) to the core, over a Unix socket in a folder only this user can enter;
the frontend decides which requests those are. Each request is authenticated, rate limited and
counted in the metrics once, by the worker that accepted it.

Each worker and the core share a control channel, a ``SOCK_SEQPACKET`` socket pair (one message
per packet, and an end of file when the other side is gone):

- worker to core ``wake``: launches or changes were recorded, the scheduler should look now
  (the wakes of one pass of the worker's loop are sent as one);
- core to worker ``forget <user id>``: that user's keys changed, drop them from the cache;
- core to worker ``metrics``, answered ``metrics <json>``: the worker's request counts and
  latencies, which the core's /metrics adds to its own, so one scrape sees every process;
- end of file: a worker whose core is gone exits. The core starts a new worker in place of one
  that exited, after a pause (a second, doubling up to half a minute while they keep failing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import zlib
from collections import deque
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from broker import config as config_mod
from broker import heap, metrics, plugins
from broker.runtime import Runtime

log = logging.getLogger("cloudbroker.workers")

#: how long the core waits for a worker's metrics, and a worker for a request it handed over
METRICS_TIMEOUT: Final = 2.0
FORWARD_TIMEOUT: Final = 300.0
#: the longest pause before a worker that keeps exiting is started again
MAX_PAUSE: Final = 30.0
_PACKET: Final = 1 << 20
#: headers about one connection, not the request: never handed on
_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "date",
        "server",
    }
)
Samples = list[tuple[str, dict[str, str], float]]


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``listen`` (host:port), to be shared with the workers."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family, kind, proto, _, address = socket.getaddrinfo(
        host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Worker:
    """One worker's place in the set: its process and control channel while it runs."""

    __slots__ = ("control", "index", "pending", "proc")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.control: socket.socket | None = None
        self.pending: deque[asyncio.Future[Samples]] = deque()


class WorkerSet:
    """The core's side: starts ``count`` workers on ``listener``, keeps them running, talks to
    them, and stops them."""

    def __init__(self, rt: Runtime, frontend: str, listener: socket.socket, count: int) -> None:
        self.rt = rt
        self.frontend = frontend
        self.listener = listener
        self._folder = tempfile.mkdtemp(prefix="cloudbroker-")  # only this user may enter
        #: the Unix socket where the core serves what workers hand over
        self.inner = str(Path(self._folder) / f"{frontend}.sock")
        self._workers = [_Worker(i) for i in range(count)]
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def start(self) -> None:
        for worker in self._workers:
            await self._spawn(worker)
            self._tasks.append(
                asyncio.create_task(self._keep(worker), name=f"{self.frontend} worker")
            )

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = (self.listener.fileno(), theirs.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "broker", "frontend-worker", self.frontend,
                "--listen-fd", str(fds[0]), "--control-fd", str(fds[1]), "--inner", self.inner,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=fds,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        assert proc.stdin is not None
        proc.stdin.write(config_mod.dumps(self.rt.config).encode())
        proc.stdin.close()
        ours.setblocking(False)
        worker.proc, worker.control = proc, ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable, worker)
        log.info("%s worker %d started (pid %d)", self.frontend, worker.index, proc.pid)

    async def _keep(self, worker: _Worker) -> None:
        """Start the worker again whenever it exits, until the set closes."""
        loop = asyncio.get_running_loop()
        pause = 1.0
        while True:
            assert worker.proc is not None
            started = loop.time()
            code = await worker.proc.wait()
            self._hang_up(worker)
            if self._closing:
                return
            log.warning(
                "%s worker %d (pid %d) exited with %s; starting another in %.0fs",
                self.frontend, worker.index, worker.proc.pid, code, pause,
            )  # fmt: skip
            pause = 1.0 if loop.time() - started > 60 else pause
            while True:
                await asyncio.sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)
                try:
                    await self._spawn(worker)
                    break
                except OSError as exc:  # no process could be made (out of memory or pids)
                    log.warning("%s worker %d not started: %s", self.frontend, worker.index, exc)

    def _hang_up(self, worker: _Worker) -> None:
        if worker.control is not None:
            asyncio.get_running_loop().remove_reader(worker.control.fileno())
            worker.control.close()
            worker.control = None
        while worker.pending:
            worker.pending.popleft().cancel()

    def _readable(self, worker: _Worker) -> None:
        assert worker.control is not None
        try:
            message = worker.control.recv(_PACKET)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:  # the worker is gone; _keep sees its exit
            self._hang_up(worker)
        elif message == b"wake":
            self.rt.scheduler_wake.set()
        elif message.startswith(b"metrics ") and worker.pending:
            found = worker.pending.popleft()
            if not found.done():
                samples = json.loads(zlib.decompress(message[8:]))
                found.set_result([(n, dict(labels), v) for n, labels, v in samples])

    def _send(self, worker: _Worker, message: bytes) -> bool:
        if worker.control is None:
            return False
        try:
            worker.control.send(message)
        except OSError as exc:  # full or gone: a worker that restarts has nothing cached
            log.warning("%s worker %d missed a message: %s", self.frontend, worker.index, exc)
            return False
        return True

    def forget(self, user_id: str) -> None:
        for worker in self._workers:
            self._send(worker, b"forget " + user_id.encode())

    async def samples(self) -> list[Samples]:
        """Every running worker's request samples (one that does not answer in time: none)."""
        loop = asyncio.get_running_loop()
        asked: list[asyncio.Future[Samples]] = []
        for worker in self._workers:
            future: asyncio.Future[Samples] = loop.create_future()
            if self._send(worker, b"metrics"):
                worker.pending.append(future)
                asked.append(future)
        if not asked:
            return []
        done, late = await asyncio.wait(asked, timeout=METRICS_TIMEOUT)
        for future in late:
            future.cancel()
        return [f.result() for f in done if not f.cancelled()]

    async def aclose(self) -> None:
        self._closing = True
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.terminate()
        for worker in self._workers:
            if worker.proc is None:
                continue
            try:
                await asyncio.wait_for(worker.proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await worker.proc.wait()
            self._hang_up(worker)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.listener.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class CoreLink:
    """A worker's side: its wakes and handed-over requests to the core, and the core's
    messages to it."""

    def __init__(self, rt: Runtime, control: socket.socket, inner: str, gone: asyncio.Event):
        self.rt = rt
        self.control = control
        self.inner = inner
        self.gone = gone
        self._wake_due = False
        self._session: aiohttp.ClientSession | None = None
        control.setblocking(False)
        asyncio.get_running_loop().add_reader(control.fileno(), self._readable)

    def wake_scheduler(self) -> None:
        if not self._wake_due:
            self._wake_due = True
            asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_due = False
        self._send(b"wake")

    def _send(self, message: bytes) -> None:
        try:
            self.control.send(message)
        except ConnectionError:  # BrokenPipeError, ConnectionResetError: the core is gone
            self.gone.set()
        except OSError as exc:  # full, or too large for one packet
            log.warning("a message to the core was dropped: %s", exc)

    def _readable(self) -> None:
        try:
            message = self.control.recv(_PACKET)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            asyncio.get_running_loop().remove_reader(self.control.fileno())
            log.warning("the core is gone: this worker stops")
            self.gone.set()
        elif message.startswith(b"forget "):
            self.rt.credentials.forget(message[7:].decode())
        elif message == b"metrics":
            # compressed: thousands of samples whose names and labels repeat fit one packet
            samples = json.dumps(metrics.install(self.rt).request_samples()).encode()
            self._send(b"metrics " + zlib.compress(samples))

    async def forward(self, request: web.Request, body: bytes) -> web.Response:
        """``request`` (whose body was read: ``body``) answered by the core, as it answers."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.inner),
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                auto_decompress=False,
            )
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        url = URL(f"http://core{request.raw_path}", encoded=True)
        async with self._session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as answer:
            content = await answer.read()
            kept = [(k, v) for k, v in answer.headers.items() if k.lower() not in _HOP]
        response = web.Response(body=content, status=answer.status)
        for name, value in kept:
            response.headers.add(name, value)
        return response

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.control.fileno())
        self.control.close()


async def run_worker(
    config: config_mod.Config, frontend: str, listen_fd: int, control_fd: int, inner: str
) -> None:
    """Serve ``frontend`` on the inherited listening socket until told to stop or the core
    is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rt = Runtime(config)
    runner: web.AppRunner | None = None
    link = CoreLink(rt, socket.socket(fileno=control_fd), inner, stop)
    try:
        rt.core = link
        rt.policy_factory = plugins.load("cloudbroker.policies", "default")
        app = plugins.load("cloudbroker.frontends", frontend)(rt)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listener = socket.socket(fileno=listen_fd)
        section = getattr(config, frontend)
        await web.SockSite(runner, listener, ssl_context=section.ssl_context()).start()
        log.info("%s worker serving (pid %d)", frontend, os.getpid())
        heap.settle()
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await link.aclose()
        await rt.aclose()
