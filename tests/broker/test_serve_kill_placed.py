"""Kill -9 of ``serve`` after an instance was placed but before its launch was carried out.

The instance is placed on an EC2 region (moto's server stands in for EC2) reached through a
small HTTP relay in this test. The relay passes every call through, except that it holds the
first RunInstances: the scheduler has recorded the placement (state prolog, launch intent) and
the backend's call is on the wire, but EC2 has not acted. That is when serve is killed with
SIGKILL. Then either the held call is dropped (it never reached EC2), or it is delivered to EC2
after the broker died (it reached EC2, the broker never heard). Serve is started again and the
instance proceeds to running, exactly once: EC2 holds one instance of ours and received one
RunInstances from the restarted broker at most, and the event log has one launch.
Nothing is faked: the broker, its scheduler and EC2 backend, boto3 and moto are real.
"""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from broker.client import AdminClient
from tests.broker.test_serve import Server, cli, cli_json, wait_state, write_config

HOLD_FOR = 300.0  # seconds a held call waits at most (a safety net, never reached when passing)


class Relay(http.server.ThreadingHTTPServer):
    """An HTTP relay to ``upstream`` that can hold the first RunInstances it sees."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), RelayHandler)
        self.upstream = urlsplit(upstream)
        self.holding = True
        self.held: list[tuple[str, dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.run_instances = 0  # RunInstances calls that reached EC2
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        if b"Action=RunInstances" in body:
            with self.lock:
                self.run_instances += 1
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()


class RelayHandler(http.server.BaseHTTPRequestHandler):
    server: Relay
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._relay()

    def do_GET(self) -> None:
        self._relay()

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        relay = self.server
        if b"Action=RunInstances" in body:
            with relay.lock:
                hold = relay.holding
                if hold:
                    relay.holding = False
                    relay.held.append((self.command, headers, body))
            if hold:
                relay.arrived.set()
                relay.release.wait(HOLD_FOR)
                self.close_connection = True
                return  # no answer: the caller is dead by now anyway
        status, resp_headers, data = relay.forward(self.command, self.path, headers, body)
        self.send_response(status)
        for key, value in resp_headers:
            if key.lower() not in {"connection", "transfer-encoding", "content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def relay(moto_url: str) -> Iterator[Relay]:
    server = Relay(moto_url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def _moto(url: str) -> Any:
    return boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _ours_on_ec2(moto_url: str, broker_id: str) -> list[dict[str, Any]]:
    found = _moto(moto_url).describe_instances(
        Filters=[
            {"Name": "tag:cloudbroker:broker", "Values": [broker_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return [i for r in found["Reservations"] for i in r["Instances"]]


def _explain(cfg: Path, rid: str) -> object:
    return cli_json(cfg, "instance", "show", rid), cli_json(cfg, "explain", rid)


@pytest.mark.slow
@pytest.mark.parametrize("held_call", ["dropped", "delivered after the kill"])
def test_kill_9_after_placement_before_the_launch_acted_launches_exactly_once(
    tmp_path: Path, relay: Relay, moto_url: str, held_call: str
) -> None:
    server = Server(write_config(tmp_path))
    server.start()
    try:
        _scenario(server, relay, moto_url, held_call)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def _scenario(server: Server, relay: Relay, moto_url: str, held_call: str) -> None:
    cfg = server.cfg
    ami = _moto(moto_url).register_image(Name="web", RootDeviceName="/dev/sda1")["ImageId"]
    cli(cfg, "host", "disable", "local-simulated")  # no local room: the region is the place
    cli(
        cfg,
        "target",
        "add",
        "east",
        "--kind",
        "ec2",
        "--region",
        "us-east-1",
        "--endpoint",
        relay.url,
        "--access-key",
        "testing",
        "--secret",
        "testing",
    )
    images = cli_json(cfg, "image", "list")
    assert isinstance(images, list)
    image = images[0]["id"]
    policy = cfg.parent / "policy.toml"
    policy.write_text(
        '[default]\ntrigger = "no_local_fit"\n'
        f'[[targets]]\nname = "east"\nimage_map = {{ "{image}" = "{ami}" }}\n'
    )
    cli(cfg, "policy", "set", str(policy))
    creds = json.loads((cfg.parent / "data" / "operator.json").read_text())
    client = AdminClient(creds["url"], creds["token"])
    (inst,) = client.call("POST", "/api/v1/instances", {"image": image, "flavor": "t3.micro"})
    rid = inst["id"]

    if not relay.arrived.wait(120):
        raise AssertionError(("the launch never reached the region", _explain(cfg, rid)))
    view = cli_json(cfg, "instance", "show", rid)
    assert isinstance(view, dict)
    assert view["state"] == "prolog", view  # placed, launch intent recorded, not carried out
    explained = cli_json(cfg, "explain", rid)
    assert isinstance(explained, dict) and explained["target"] == "east"
    broker_id = (cfg.parent / "data" / "ec2-broker-id").read_text().strip()
    assert _ours_on_ec2(moto_url, broker_id) == [] and relay.run_instances == 0

    assert server.kill() == -signal.SIGKILL
    (held,) = relay.held
    if held_call == "delivered after the kill":
        status, _, _ = relay.forward(held[0], "/", held[1], held[2])
        assert status == 200
        assert len(_ours_on_ec2(moto_url, broker_id)) == 1  # EC2 acted; the broker never knew
    relay.release.set()

    server.start()
    wait_state(cfg, rid, "running", timeout=120)

    ours = _ours_on_ec2(moto_url, broker_id)
    assert len(ours) == 1, ours  # one instance on EC2: no duplicate launch
    tags = {t["Key"]: t["Value"] for t in ours[0].get("Tags", [])}
    assert rid in tags.values(), tags
    # the restarted broker sent RunInstances only when EC2 had nothing of ours
    assert relay.run_instances == 1
    events = cli_json(cfg, "instance", "events", rid)
    assert isinstance(events, list)
    launched = [e for e in events if e.get("from") == "prolog"]
    assert len(launched) == 1, events
    placed = [e for e in events if e.get("from") == "pending" and e.get("to") == "prolog"]
    assert len(placed) == 1, events  # placed once: the restart resumed, it did not re-place

    cli(cfg, "instance", "terminate", rid)
    wait_state(cfg, rid, "done", timeout=120)
    assert _ours_on_ec2(moto_url, broker_id) == []
    assert server.kill(signal.SIGTERM) == 0
