"""govmomi's vSphere simulator, built offline from Debian's packages, for tests and benchmarks.

Decisions:

* The program is ``simulator/main.go`` beside this module (about ten lines around
  ``simulator.ESX()`` / ``simulator.VPX()``). It is built with Debian's ``golang-go`` against
  Debian's ``golang-github-vmware-govmomi-dev`` with ``GO111MODULE=off GOPROXY=off`` and a GOPATH
  of our own before ``/usr/share/gocode``: no network. The two packages are installed with
  ``apt-get install -y`` when missing (this needs root, as the test command has).
* The binary is cached under ``$CLOUDBROKER_VCSIM_CACHE`` (else ``~/.cache/cloudbroker/vcsim``),
  keyed by the source, the Go version and the govmomi package version, so it is built once;
  a file lock keeps concurrent builders from racing.
* A simulator listens on 127.0.0.1 on a port the kernel picks (free by construction), prints
  its URL, and is only handed out once it answers an HTTPS request. It is stopped by its pid.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path

SOURCE = Path(__file__).with_name("simulator") / "main.go"
GOCODE = Path("/usr/share/gocode")
GOVMOMI = GOCODE / "src/github.com/vmware/govmomi/simulator"
PACKAGES = ("golang-go", "golang-github-vmware-govmomi-dev")
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "a"}


class SimulatorError(RuntimeError):
    """The simulator could not be built or started (the message says which step and why)."""


def cache_dir() -> Path:
    env = os.environ.get("CLOUDBROKER_VCSIM_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cloudbroker" / "vcsim"


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SimulatorError(f"{' '.join(cmd[:3])}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise SimulatorError(f"{' '.join(cmd[:4])} failed ({done.returncode}): {tail}")
    return done.stdout


def ensure_packages() -> None:
    """Install golang-go and golang-github-vmware-govmomi-dev when they are missing."""
    if shutil.which("go") and GOVMOMI.is_dir():
        return
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    try:
        _run(install, 900, APT_ENV)
    except SimulatorError:
        _run(["apt-get", "update", "-q"], 600, APT_ENV)
        _run(install, 900, APT_ENV)
    if not shutil.which("go") or not GOVMOMI.is_dir():
        raise SimulatorError(f"apt-get installed {' '.join(PACKAGES)} but go or govmomi is missing")


def _key() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(_run(["go", "version"], 60).encode())
    pkg = _run(["dpkg-query", "-W", "-f", "${Version}", PACKAGES[1]], 60)
    digest.update(pkg.encode())
    return digest.hexdigest()[:16]


def build() -> Path:
    """The simulator binary, built now unless the cache has it."""
    ensure_packages()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    binary = root / _key() / "vcsim"
    if binary.is_file():
        return binary
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        gopath = root / "gopath"
        src = gopath / "src" / "cloudbroker-vcsim"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE, src / "main.go")
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        env = {
            "GO111MODULE": "off",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOPATH": f"{gopath}:{GOCODE}",
            "GOCACHE": str(root / "gocache"),
            "CGO_ENABLED": "0",
        }
        cmd = ["go", "build", "-o", str(partial), "."]
        try:
            done = subprocess.run(
                cmd,
                cwd=src,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
                env={**os.environ, **env},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SimulatorError(f"go build: {exc}") from exc
        if done.returncode != 0:
            raise SimulatorError(f"go build failed: {done.stderr.strip()[-2000:]}")
        partial.rename(binary)
    return binary


@dataclasses.dataclass
class Simulator:
    """A running simulator: ``url`` is ``https://127.0.0.1:PORT`` (no credentials in it)."""

    mode: str
    url: str
    host: str
    port: int
    pid: int
    process: subprocess.Popen[bytes]
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start(
    mode: str = "esx",
    *,
    vms: int = 2,
    user: str = "",
    password: str = "",
    timeout: float = 30.0,
    log: Path | None = None,
) -> Simulator:
    """Start a simulator in ESX (``esx``) or vCenter (``vpx``) mode and wait until it answers."""
    if mode not in ("esx", "vpx"):
        raise ValueError("mode is esx or vpx")
    binary = build()
    cmd = [str(binary), "-mode", mode, "-listen", "127.0.0.1:0", "-vm", str(vms)]
    if user:
        cmd += ["-user", user, "-password", password]
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
    if log:
        stderr.close()  # type: ignore[union-attr]
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    parsed = urllib.parse.urlsplit(line)
    if not parsed.hostname or not parsed.port:
        proc.kill()
        proc.wait()
        raise SimulatorError(f"the simulator did not print its URL (got {line!r})")
    sim = Simulator(
        mode,
        f"https://{parsed.hostname}:{parsed.port}",
        parsed.hostname,
        parsed.port,
        proc.pid,
        proc,
        user,
        password,
    )
    deadline = time.monotonic() + timeout
    while not _answers(sim):
        if proc.poll() is not None or time.monotonic() > deadline:
            sim.stop()
            raise SimulatorError(f"the simulator at {sim.url} does not answer")
        time.sleep(0.05)
    return sim


def _answers(sim: Simulator) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(sim.host, sim.port, timeout=2, context=ctx)
    try:
        conn.request("GET", "/sdk/vimServiceVersions.xml")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
