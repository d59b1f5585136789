"""Real cloudbroker sites on loopback for the federation tests and benchmark.

Each :class:`Site` is one ``cloudbroker serve`` process with its own ports, database, data dir
and simulated local host, started through :data:`LAUNCHER` (the ``cloudbroker`` command).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

CLI = [sys.executable, "-m", "broker"]

LAUNCHER = """
import sys
from broker.cli import main
sys.argv[0] = "cloudbroker"
main()
"""

NODE = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes>
       <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{kib}</memory>
</node>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Site:
    """One cloudbroker process: its config, CLI, EC2 clients and lifecycle."""

    def __init__(self, root: Path, name: str, *, cpus: int = 16, memory_gb: int = 32) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.ec2_port, self.admin_port, self.occi_port = free_port(), free_port(), free_port()
        self.region = f"{name}-1"
        node = self.dir / "data" / "hosts" / "simulated-node.xml"
        node.parent.mkdir(parents=True)
        node.write_text(NODE.format(cpus=cpus, kib=memory_gb * 1024 * 1024))
        self.cfg = self.dir / "broker.toml"
        self.cfg.write_text(
            f'[broker]\ndata_dir = "data"\nlocal_host = "simulated"\n'
            f'region = "{self.region}"\nsite_id = "site-{name}"\n'
            f'[ec2]\nlisten = "127.0.0.1:{self.ec2_port}"\n'
            f'[occi]\nenabled = true\nlisten = "127.0.0.1:{self.occi_port}"\n'
            f'[admin]\nlisten = "127.0.0.1:{self.admin_port}"\n'
            f"[monitor]\ninterval = 0.5\nmisses = 3\nprobe_timeout = 3\n"
            f"[scheduler]\ninterval = 0.2\n"
        )
        self.proc: subprocess.Popen[str] | None = None

    @property
    def ec2_url(self) -> str:
        return f"http://127.0.0.1:{self.ec2_port}"

    @property
    def occi_url(self) -> str:
        return f"http://127.0.0.1:{self.occi_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        with open(self.dir / "serve.log", "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, "--config", str(self.cfg), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError((self.dir / "serve.log").read_text()[-4000:])
            if self.cli("--json", "host", "list", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"site {self.name} did not come up")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cli(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI against this site; ``input`` is what the operator types (else none)."""
        result = subprocess.run(
            [*CLI, "--config", str(self.cfg), *args],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {args}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli("--json", *args).stdout)

    def user(self, name: str) -> tuple[str, str]:
        made = self.json("user", "create", name)
        return made["access_key"], made["secret_key"]

    def ec2(self, key: tuple[str, str]) -> Any:
        return boto3.client(
            "ec2",
            endpoint_url=self.ec2_url,
            region_name=self.region,
            aws_access_key_id=key[0],
            aws_secret_access_key=key[1],
            config=Config(retries={"total_max_attempts": 1}, read_timeout=60),
        )

    def image(self) -> str:
        images = self.json("image", "list")
        return str(images[0]["id"])

    def set_policy(self, doc: dict[str, Any]) -> None:
        path = self.dir / "policy.json"
        path.write_text(json.dumps(doc))
        self.cli("policy", "set", str(path))

    def link(self, other: Site, key: tuple[str, str], name: str | None = None) -> str:
        """``peer add`` from this site to ``other`` as the user ``key``."""
        peer_name = name or f"site-{other.name}"
        self.cli(
            "peer",
            "add",
            peer_name,
            "--url",
            other.ec2_url,
            "--admin-url",
            other.admin_url,
            "--access-key",
            key[0],
            "--secret",
            key[1],
        )
        return peer_name

    def admin(self) -> Any:
        from broker.client import AdminClient

        saved = json.loads((self.dir / "data" / "operator.json").read_text())
        return AdminClient(saved["url"], saved["token"])

    def vsphere_host(self, url: str, template: str) -> str:
        """Run instances on a vSphere host (a simulator process that outlives this site's
        process) instead of the simulated local host; returns the image name to burst with."""
        client = self.admin()
        client.call(
            "POST",
            "/api/v1/targets",
            {"name": "vs", "kind": "host", "driver": "vmware", "hypervisor": "vmware",
             "settings": {"url": url, "insecure": True, "cpu_ratio": 16, "memory_ratio": 4},
             "secret": {"user": "root", "password": "secret"}},
        )  # fmt: skip
        client.call("POST", "/api/v1/targets/local-simulated/disable")
        client.call(
            "POST",
            "/api/v1/images",
            {"name": "tiny-vs", "kind": "disk", "location": f"template:{template}",
             "hypervisor": "vmware", "visibility": "public"},
        )  # fmt: skip
        return "tiny-vs"

    def burst_to(self, *peers: str, image: str = "tiny-simulated", always: bool = False) -> None:
        """Place on the peers, in order, when no local host fits (``always``: never local)."""
        self.set_policy(
            {
                "placement": {"requirements": 'KIND != "host"' if always else ""},
                "default": {"trigger": "no_local_fit"},
                "targets": [
                    {"name": p, "image_map": {"*": image}, "flavor_map": {"*": "*"}} for p in peers
                ],
            }
        )


def wait_for(
    check: Callable[[], Any], timeout: float = 60.0, every: float = 0.25, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")


def states(client: Any, **filters: Any) -> dict[str, str]:
    """Instance id -> EC2 state name, as ``client`` sees them."""
    out: dict[str, str] = {}
    for page in client.get_paginator("describe_instances").paginate(**filters):
        for res in page["Reservations"]:
            for inst in res["Instances"]:
                out[inst["InstanceId"]] = inst["State"]["Name"]
    return out


def instances(client: Any, **filters: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for page in client.get_paginator("describe_instances").paginate(**filters):
        for res in page["Reservations"]:
            out.extend(res["Instances"])
    return out


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """A factory of started sites; every process is killed at the end."""
    made: list[Site] = []

    def make(name: str, **kw: Any) -> Site:
        site = Site(tmp_path, name, **kw)
        made.append(site)
        site.start()
        return site

    try:
        yield make
    finally:
        for site in made:
            if site.alive():
                site.kill()
