"""``cloudbroker serve`` as a real process: the CLI against it, bad input, and kill -9 safety."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "broker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path) -> Path:
    cfg = tmp / "broker.toml"
    cfg.write_text(
        f'[broker]\ndata_dir = "data"\nlocal_host = "simulated"\n'
        f'[ec2]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[occi]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[monitor]\ninterval = 0.5\n[scheduler]\ninterval = 0.2\n"
    )
    return cfg


def cli(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, "--config", str(cfg), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args}: {result.stderr}")
    return result


def cli_json(cfg: Path, *args: str) -> object:
    return json.loads(cli(cfg, "--json", *args).stdout)


class Server:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        with open(self.cfg.parent / "serve.log", "a") as log:
            self.proc = subprocess.Popen(
                [*CLI, "--config", str(self.cfg), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError((self.cfg.parent / "serve.log").read_text())
            if cli(self.cfg, "--json", "host", "list", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("serve did not come up")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(write_config(tmp_path))
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()


def wait_state(cfg: Path, rid: str, state: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        view = cli_json(cfg, "instance", "show", rid)
        assert isinstance(view, dict)
        if view["state"] == state or time.monotonic() > deadline:
            assert view["state"] == state, view
            return view
        time.sleep(0.2)


def test_kill_9_between_accepting_and_dispatching_loses_nothing(server: Server) -> None:
    cfg = server.cfg
    cli(cfg, "host", "disable", "local-simulated")
    images = cli_json(cfg, "image", "list")
    assert isinstance(images, list)
    ami = images[0]["id"]
    made = cli(cfg, "--json", "instance", "list").stdout
    assert json.loads(made)["instances"] == []
    from broker.client import AdminClient

    saved = json.loads((cfg.parent / "data" / "operator.json").read_text())
    client = AdminClient(saved["url"], saved["token"])
    (inst,) = client.call("POST", "/api/v1/instances", {"image": ami, "flavor": "t3.micro"})
    assert inst["state"] == "pending"
    assert server.kill() == -signal.SIGKILL
    server.start()
    view = wait_state(cfg, inst["id"], "pending")
    assert "no target" in str(view["state_reason"])
    cli(cfg, "host", "enable", "local-simulated")
    wait_state(cfg, inst["id"], "running")
    explained = cli_json(cfg, "explain", inst["id"])
    assert isinstance(explained, dict) and explained["target"] == "local-simulated"
    cli(cfg, "instance", "terminate", inst["id"])
    wait_state(cfg, inst["id"], "done")
    assert server.kill(signal.SIGTERM) == 0


def test_serve_runs_on_uvloop(server: Server) -> None:
    log = (server.cfg.parent / "serve.log").read_text()
    assert "event loop: uvloop.Loop" in log, log


def test_cli_user_create_prints_keys_once_and_bad_input_is_one_line(server: Server) -> None:
    cfg = server.cfg
    made = cli_json(cfg, "user", "create", "alice")
    assert isinstance(made, dict) and made["access_key"] and made["secret_key"]
    listed = cli(cfg, "--json", "user", "list").stdout
    assert made["secret_key"] not in listed
    bad = [
        ("instance", "show", "i-0000000000000000"),
        ("instance", "show", "nonsense"),
        ("host", "remove", "nosuchhost"),
        ("user", "create", "alice"),
        ("user", "create", "bad name!"),
        (
            "host",
            "add",
            "h2",
            "--hypervisor",
            "kvm",
            "--uri",
            "qemu+ssh://nobody@127.0.0.1:1/system",
        ),
        ("network", "create", "n1", "--cidr", "10.0.0.0/33"),
        ("instance", "stop", "i-0123456789abcdef0"),
    ]
    for args in bad:
        result = cli(cfg, *args, check=False)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr
    usage = cli(cfg, "flavor", "create", "x", "--vcpus", "two", "--memory", "1", check=False)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    missing = subprocess.run(
        [*CLI, "--config", str(tmp_path / "nope.toml"), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1 and "not found" in missing.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[broker]\ndata_dir = "x"\ncolour = "blue"\n')
    result = subprocess.run(
        [*CLI, "--config", str(unknown), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "colour" in result.stderr
    assert result.stderr.count("\n") == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[broker\n")
    result = subprocess.run(
        [*CLI, "--config", str(broken), "host", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    result = cli(cfg, "host", "list", check=False)
    assert result.returncode == 1 and "cannot reach the admin API" in result.stderr
    env = dict(os.environ, CLOUDBROKER_ADMIN_LISTEN="nonsense")
    result = subprocess.run(
        [*CLI, "--config", str(cfg), "host", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 1 and "host:port" in result.stderr


def test_image_import_streams_with_a_checksum(server: Server, tmp_path: Path) -> None:
    blob = tmp_path / "disk.img"
    blob.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    made = cli_json(server.cfg, "image", "import", "uploaded", str(blob))
    assert isinstance(made, dict) and made["state"] == "available"
    assert made["size_bytes"] == blob.stat().st_size
    import hashlib

    stored = Path(str(made["location"]))
    assert (
        hashlib.sha256(stored.read_bytes()).hexdigest()
        == hashlib.sha256(blob.read_bytes()).hexdigest()
    )
    again = cli(server.cfg, "image", "import", "x", str(tmp_path / "missing.img"), check=False)
    assert again.returncode == 2 and "Traceback" not in again.stderr


def test_cli_reservations_and_costs(server: Server) -> None:
    cfg = server.cfg
    host = cli_json(cfg, "host", "reserve", "local-simulated", "--cpu", "25%", "--memory", "512")
    assert isinstance(host, dict)
    assert (host["reserved_cpu_pct"], host["reserved_memory_mb"]) == (25, 512)
    host = cli_json(cfg, "host", "cost", "local-simulated", "--cpu-cost", "0.03")
    assert isinstance(host, dict) and host["cpu_cost"] == 0.03
    clusters = cli_json(cfg, "cluster", "list")
    assert isinstance(clusters, list) and clusters
    name = clusters[0]["name"]
    made = cli_json(cfg, "cluster", "reserve", name, "--cpu", "-50%")
    assert isinstance(made, dict) and made["reserved_cpu_pct"] == -50
    for args in (
        ("host", "reserve", "local-simulated", "--cpu", "lots"),
        ("host", "reserve", "local-simulated"),
        ("host", "reserve", "nosuchhost", "--cpu", "1"),
        ("host", "cost", "local-simulated", "--memory-cost", "-2"),
        ("cluster", "reserve", name, "--memory", "150%"),
        ("cluster", "show", "nosuchcluster"),
    ):
        result = cli(cfg, *args, check=False)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    shown = cli_json(cfg, "host", "show", "local-simulated")
    assert isinstance(shown, dict) and shown["reserved_cpu_pct"] == 25
