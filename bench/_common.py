"""Helpers shared by benchmarks that run ``cloudbroker serve`` as a real process.

A benchmark writes a config with :func:`write_config`, starts :class:`BrokerProcess`, drives it
with :func:`cli_json` (the CLI), :func:`admin` (the admin API) or :func:`ec2_client` (boto3), and
ends with :func:`emit`, which prints its figures as one JSON object on the last line.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "broker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, *, local_host: str = "none", monitor: float = 1.0,
                 scheduler: float = 0.2, extra: str = "") -> Path:  # fmt: skip
    """A broker.toml in ``folder`` with the data dir beside it and free loopback ports."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "broker.toml"
    cfg.write_text(
        f'[broker]\ndata_dir = "data"\nlocal_host = "{local_host}"\n'
        f'[ec2]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[occi]\nenabled = false\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[monitor]\ninterval = {monitor}\n[scheduler]\ninterval = {scheduler}\n{extra}"
    )
    return cfg


def cli(cfg: Path, *args: str, timeout: float = 600) -> str:
    """Run the CLI against ``cfg``'s broker; its stdout, or RuntimeError with its stderr."""
    proc = subprocess.run(
        [*CLI, "--config", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cloudbroker {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def cli_json(cfg: Path, *args: str, timeout: float = 600) -> Any:
    return json.loads(cli(cfg, "--json", *args, timeout=timeout))


class BrokerProcess:
    """``cloudbroker serve`` for ``cfg``, logging to ``serve.log`` beside it."""

    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.cfg.parent / "data"

    def listen(self, section: str) -> str:
        return self.cfg.read_text().split(f"[{section}]\n")[1].split('listen = "')[1].split('"')[0]

    def start(self, timeout: float = 60) -> None:
        with open(self.cfg.parent / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "--config", str(self.cfg), "serve"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.cfg.parent / "serve.log").read_text()[-3000:])
            try:
                cli(self.cfg, "--json", "host", "list", timeout=30)
                return
            except RuntimeError:
                time.sleep(0.2)
        raise RuntimeError("cloudbroker serve did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def admin(server: BrokerProcess) -> Any:
    """An admin API client with the operator's token."""
    from broker.client import AdminClient

    saved = json.loads((server.data / "operator.json").read_text())
    return AdminClient(saved["url"], saved["token"], timeout=300)


def ec2_client(server: BrokerProcess, keys: dict[str, Any]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "ec2",
        endpoint_url=f"http://{server.listen('ec2')}",
        region_name="cloudbroker-1",
        aws_access_key_id=keys["access_key"],
        aws_secret_access_key=keys["secret_key"],
        config=Config(retries={"max_attempts": 1}, read_timeout=300),
    )


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """p50, mean and max of ``values`` (seconds or any unit), rounded."""
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), digits),
        "mean": round(statistics.fmean(values), digits),
        "max": round(max(values), digits),
    }


def emit(figures: dict[str, Any]) -> None:
    """Print the figures as one JSON object on the last line."""
    print(json.dumps(figures), flush=True)


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy recording process ``pid`` and its children (worker processes) into ``out`` (raw
    stacks) while the block runs; nothing when ``out`` is None or py-spy is not installed."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if out is None or not Path(spy).exists():
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
            "--subprocesses",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attach
    try:
        yield
    finally:
        proc.send_signal(2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
