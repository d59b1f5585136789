"""moto's server as a real EC2 endpoint (one per test module), a fault-injecting proxy in front
of it, and a factory for EC2 backends pointed at either.

The proxy is a small threaded HTTP forwarder. A fault is a rule: which EC2 action (or any), what
goes wrong, and how many times; or a random rate over a set of faults. Faults:

- ``throttle``: answer 503 RequestLimitExceeded without forwarding (EC2 did nothing);
- ``error``: answer 500 InternalError without forwarding;
- ``error-after``: forward (moto acts), then answer 500 anyway;
- ``slow``: forward (moto acts), then hold the answer ``delay`` seconds;
- ``drop``: forward (moto acts), then close the connection without an answer;
- ``drop-before``: close the connection without forwarding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest

from backends.ec2.backend import Ec2Backend
from broker.auth import SYSTEM
from broker.plugins import BackendRegistry
from broker.protocols import LaunchSpec, TargetConfig
from broker.runtime import Runtime
from broker.service import targets
from broker.service.targets import TargetView

REGION = "us-east-1"
CREDS = {"access_key": "AKIDTESTTESTTEST", "secret_key": "not-a-real-secret"}

_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


@dataclasses.dataclass
class Rule:
    action: str | None
    fault: str
    times: int
    delay: float = 0.0


class FaultProxy:
    """Forwards EC2 Query requests to ``upstream`` and misbehaves as told."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.rules: list[Rule] = []
        self.chaos_rate = 0.0
        self.chaos_faults: tuple[str, ...] = ()
        self.chaos_delay = 0.0
        self.rng = random.Random(int(os.environ.get("CB_CHAOS_SEED", "7")))
        self.counts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                proxy.handle(self)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def inject(self, fault: str, action: str | None = None, times: int = 1, delay: float = 0.0):
        with self.lock:
            self.rules.append(Rule(action, fault, times, delay))

    def chaos(self, rate: float, faults: tuple[str, ...], delay: float = 0.0) -> None:
        with self.lock:
            self.chaos_rate, self.chaos_faults, self.chaos_delay = rate, faults, delay

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.chaos_rate = 0.0

    def _pick(self, action: str) -> Rule | None:
        with self.lock:
            self.counts[action] += 1
            for rule in self.rules:
                if rule.times > 0 and rule.action in (None, action):
                    rule.times -= 1
                    self.faults[rule.fault] += 1
                    return rule
            if self.chaos_rate and self.rng.random() < self.chaos_rate:
                fault = self.rng.choice(self.chaos_faults)
                self.faults[fault] += 1
                return Rule(action, fault, 1, self.chaos_delay)
        return None

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length", 0) or 0))
        action = parse_qs(body.decode("utf-8", "replace")).get("Action", ["?"])[0]
        rule = self._pick(action)
        fault = rule.fault if rule else ""
        if fault == "throttle":
            self._error(req, 503, "RequestLimitExceeded", "Request limit exceeded.")
            return
        if fault == "error":
            self._error(req, 500, "InternalError", "An internal error has occurred")
            return
        if fault == "drop-before":
            self._drop(req)
            return
        status, headers, payload = self._forward(req, body)
        if fault == "error-after":
            self._error(req, 500, "InternalError", "An internal error has occurred")
            return
        if fault == "drop":
            self._drop(req)
            return
        if fault == "slow" and rule is not None:
            time.sleep(rule.delay)
        req.send_response(status)
        for name, value in headers:
            if name.lower() not in _HOP:
                req.send_header(name, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _forward(
        self, req: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP}
            conn.request(req.command, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _error(self, req: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        payload = _ERROR.format(code=code, message=message, rid=uuid.uuid4()).encode()
        req.send_response(status)
        req.send_header("Content-Type", "text/xml")
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _drop(self, req: BaseHTTPRequestHandler) -> None:
        req.close_connection = True
        with contextlib.suppress(OSError):
            req.connection.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    p = FaultProxy(moto_url)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def raw(moto_url: str) -> Any:
    """A plain boto3 client straight to moto: the test's own view of 'EC2'."""
    return boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id=CREDS["access_key"],
        aws_secret_access_key=CREDS["secret_key"],
    )


@pytest.fixture(scope="module")
def ami(raw: Any) -> str:
    made = raw.register_image(Name="cloudbroker-burst", RootDeviceName="/dev/sda1")
    return str(made["ImageId"])


@pytest.fixture
def broker_id() -> str:
    return f"cb-test-{uuid.uuid4().hex[:10]}"


FAST = {
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
    "call_timeout": 15.0,
    "max_attempts": 4,
    "retry_base": 0.02,
    "batch_window": 0.02,
    "breaker_cooldown": 0.3,
}


def target_config(
    tmp: Path, endpoint: str, broker_id: str, name: str = "aws-east", **settings: Any
) -> TargetConfig:
    return TargetConfig(
        id=f"target-{uuid.uuid4().hex[:8]}",
        name=name,
        kind="region",
        driver="ec2",
        hypervisor="",
        settings={
            "region": REGION,
            "endpoint": endpoint,
            "broker_id": broker_id,
            **FAST,
            **settings,
        },
        secret=dict(CREDS),
        data_dir=str(tmp),
    )


async def add_region(
    rt: Runtime, moto_url: str, broker_id: str, name: str = "aws-east", **settings: Any
) -> TargetView:
    """The region target ``name`` at moto, added through the service, with the EC2 backend as
    the runtime's only driver (no inventory reuse between observations: tests see changes)."""
    rt.backends = BackendRegistry(
        rt.engine, rt.box.open, str(rt.config.data_path), loader=lambda _d: Ec2Backend
    )  # type: ignore[arg-type,return-value]
    return await targets.add(
        rt,
        SYSTEM,
        name=name,
        kind="region",
        driver="ec2",
        settings={
            "region": REGION,
            "endpoint": moto_url,
            "broker_id": broker_id,
            "observe_reuse": 0,
            **FAST,
            **settings,
        },
        secret=CREDS,
    )


MakeBackend = Callable[..., Ec2Backend]


@pytest.fixture
async def make_backend(tmp_path: Path, moto_url: str, broker_id: str) -> AsyncIterator[MakeBackend]:
    made: list[Ec2Backend] = []

    def make(endpoint: str | None = None, **settings: Any) -> Ec2Backend:
        owner = str(settings.pop("broker_id", broker_id))
        backend = Ec2Backend(target_config(tmp_path, endpoint or moto_url, owner, **settings))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


def spec(ami: str, n: int = 0, **overrides: Any) -> LaunchSpec:
    """A launch spec for instance number ``n`` whose image maps to ``ami`` in the region."""
    values: dict[str, Any] = {
        "instance_id": f"i-{uuid.uuid4().hex[:17]}",
        "target_id": "target-x",
        "target_settings": {},
        "hostname": f"burst-{n}",
        "vcpus": 2,
        "memory_mb": 1024,
        "disk_gb": 8,
        "flavor": "t3.micro",
        "image_id": "ami-00000000000000001",
        "image_kind": "disk",
        "image_location": "",
        "image_kernel": "",
        "image_ramdisk": "",
        "image_cmdline": "",
        "image_checksum": "",
        "image_mappings": {f"ec2:{REGION}": ami},
        "user_data": b"#!/bin/sh\necho burst\n",
        "key_name": None,
        "public_key": None,
        "nics": (),
    }
    values.update(overrides)
    return LaunchSpec(**values)


def ours(raw: Any, broker_id: str, live_only: bool = True) -> list[dict[str, Any]]:
    """Every instance in moto carrying ``broker_id``'s tag (live ones by default)."""
    got = raw.describe_instances(
        Filters=[{"Name": "tag:cloudbroker:broker", "Values": [broker_id]}], MaxResults=1000
    )
    out = [i for r in got["Reservations"] for i in r["Instances"]]
    if live_only:
        out = [i for i in out if i["State"]["Name"] not in ("shutting-down", "terminated")]
    return out
