"""A libvirt host's shell and files over SSH (asyncssh): commands, SFTP copies, probes.

Decides how the broker touches a host's own filesystem when the host does not share one with
the broker (host setting ``store = "ssh"``), and how it probes a host over SSH:

- one SSH connection per host, opened on first use and opened again after it dropped (any
  failed call closes it, so the next call reconnects); keepalives notice a silent peer;
- every call has a timeout; failures become the broker's errors here and nowhere else
  (connect or disconnect: BackendUnavailable, timeout: BackendTimeout, a failed command:
  BackendError with its stderr);
- commands are argument lists joined with ``shlex.join``, never formatted strings;
- a copy goes to ``<final>.part`` (continued from its size when ``resume``), its SHA-256 is
  computed on the host with ``sha256sum`` and compared, and only a matching copy is renamed
  into place; a mismatch removes the partial copy. A final file therefore is always verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from broker.errors import BackendError, BackendTimeout, BackendUnavailable

CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 30.0
COPY_TIMEOUT = 1800.0
CHUNK = 256 * 1024
WINDOW = 16  # SFTP writes in flight
KEEPALIVE = 5.0

# asyncssh logs every channel at INFO: a probe a second would fill the broker's log.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

# One command for a probe: load, MemAvailable, and df of the nearest existing folder of $1.
PROBE_SCRIPT = (
    'read l _ < /proc/loadavg; echo "load $l"; grep "^MemAvailable:" /proc/meminfo; '
    'd=$1; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | tail -n 1'
)


@dataclasses.dataclass(frozen=True, slots=True)
class SshTarget:
    """Where and as whom to log in: parsed from the host settings ``ssh``, ``ssh_key``,
    ``known_hosts``."""

    host: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    known_hosts: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SshTarget | None:
        text = str(settings.get("ssh") or "")
        if not text:
            return None
        user, _, rest = text.rpartition("@")
        host, port = rest, 22
        if rest.startswith("["):  # [v6addr]:port
            host, _, tail = rest[1:].partition("]")
            port = int(tail.lstrip(":") or 22)
        elif rest.count(":") == 1:
            host, _, p = rest.partition(":")
            port = int(p)
        return cls(
            host=host,
            port=port,
            user=user or None,
            key=str(settings.get("ssh_key") or "") or None,
            known_hosts=str(settings.get("known_hosts") or "") or None,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class HostLoad:
    """What one probe command printed."""

    load: float
    free_memory_mb: int
    free_disk_gb: float
    total_disk_gb: float


def parse_probe(text: str) -> HostLoad:
    """Read PROBE_SCRIPT's output (raises ValueError when it is not what the script prints)."""
    load = mem_kb = None
    df: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["load"]:
            load = float(words[1])
        elif words[:1] == ["MemAvailable:"]:
            mem_kb = int(words[1])
        elif len(words) >= 6 and words[1].isdigit():
            df = words
    if load is None or mem_kb is None or not df:
        raise ValueError(f"unexpected probe output: {text[:200]!r}")
    return HostLoad(load, mem_kb // 1024, int(df[3]) / 2**20, int(df[1]) / 2**20)


class HostShell:
    """One host's SSH connection: run, put, sha256, remove, df, probe."""

    def __init__(self, target: SshTarget, *, name: str = "", timeout: float = CALL_TIMEOUT):
        self.target = target
        self.name = name or target.host
        self.timeout = timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    # --- the connection ---------------------------------------------------------------------

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._drop()
            t = self.target
            options: dict[str, Any] = {}
            if t.key:
                options["client_keys"] = [t.key]
            if t.known_hosts:
                options["known_hosts"] = t.known_hosts
            try:
                self._conn = await asyncio.wait_for(
                    asyncssh.connect(
                        t.host,
                        port=t.port,
                        username=t.user,
                        connect_timeout=CONNECT_TIMEOUT,
                        keepalive_interval=KEEPALIVE,
                        keepalive_count_max=3,
                        **options,
                    ),
                    CONNECT_TIMEOUT + 1,
                )
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise BackendUnavailable(
                    f"cannot reach {self.name} over ssh ({t.host}:{t.port}): {exc}"
                ) from exc
            return self._conn

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self._connection()
        if self._sftp is None:
            self._sftp = await asyncio.wait_for(conn.start_sftp_client(), self.timeout)
        return self._sftp

    def _drop(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def aclose(self) -> None:
        conn = self._conn
        self._drop()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2)

    def _fail(self, what: str, exc: BaseException) -> BackendError:
        """The one place asyncssh errors become the broker's. An SFTP status (no such file,
        permission denied) is the host's answer; anything else drops the connection."""
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, asyncssh.SFTPError):
            return BackendError(f"{what} on {self.name}: {exc.reason}")
        self._drop()
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"{what} on {self.name}: timed out")
        return BackendUnavailable(f"{what} on {self.name}: {exc}")

    # --- commands ---------------------------------------------------------------------------

    async def run(self, *argv: str, seconds: float | None = None, check: bool = True) -> str:
        """Run one command (an argument list, quoted here); return its stdout."""
        command = shlex.join(argv)
        conn = await self._connection()
        try:
            result = await conn.run(command, check=False, timeout=seconds or self.timeout)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise self._fail(argv[0], exc) from exc
        if check and result.exit_status != 0:
            err = str(result.stderr or result.stdout or "").strip()[:300]
            raise BackendError(f"{argv[0]} on {self.name} failed ({result.exit_status}): {err}")
        return str(result.stdout or "")

    async def sha256(self, path: str) -> str:
        out = await self.run("sha256sum", "--", path, seconds=COPY_TIMEOUT)
        return out.split()[0].lower()

    async def remove(self, paths: Sequence[str]) -> None:
        if paths:
            await self.run("rm", "-rf", "--", *paths)

    async def mkdir(self, *paths: str) -> None:
        await self.run("mkdir", "-p", "--", *paths)

    async def exists(self, path: str) -> bool:
        return (await self.size(path)) is not None

    async def size(self, path: str) -> int | None:
        sftp = await self._sftp_client()
        try:
            attrs = await asyncio.wait_for(sftp.stat(path), self.timeout)
        except asyncssh.SFTPNoSuchFile:
            return None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise self._fail("stat", exc) from exc
        return int(attrs.size or 0)

    async def df(self, path: str) -> HostLoad:
        return await self.probe(path)

    async def probe(self, path: str) -> HostLoad:
        """Load, free memory and free disk of ``path`` (its nearest existing folder): one
        command."""
        out = await self.run("sh", "-c", PROBE_SCRIPT, "probe", path)
        try:
            return parse_probe(out)
        except ValueError as exc:
            raise BackendError(f"probe of {self.name}: {exc}") from exc

    async def read_tail(self, path: str, limit: int) -> bytes:
        """The last ``limit`` bytes of a file ("" when it does not exist)."""
        sftp = await self._sftp_client()
        try:
            async with sftp.open(path, "rb") as fh:
                size = int((await fh.stat()).size or 0)
                data: Any = await asyncio.wait_for(fh.read(limit, max(0, size - limit)), 30)
                return bytes(data)
        except asyncssh.SFTPNoSuchFile:
            return b""
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise self._fail("read", exc) from exc

    # --- copies -----------------------------------------------------------------------------

    async def put(self, local: Path, remote: str, *, resume: bool = True) -> int:
        """Copy ``local`` to ``remote``; with ``resume`` an existing shorter remote file is
        continued from its size. Return the number of bytes sent."""
        try:
            total = (await asyncio.to_thread(local.stat)).st_size
        except OSError as exc:
            raise BackendError(f"{local} is not on the broker: {exc.strerror}") from exc
        start = 0
        if resume:
            have = await self.size(remote)
            if have is not None and have <= total:
                start = have
        sftp = await self._sftp_client()
        try:
            return await asyncio.wait_for(
                self._copy(sftp, local, remote, start, total), COPY_TIMEOUT
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise self._fail(f"copy to {remote}", exc) from exc

    @staticmethod
    async def _copy(
        sftp: asyncssh.SFTPClient, local: Path, remote: str, start: int, total: int
    ) -> int:
        async with sftp.open(remote, "r+b" if start else "wb") as dst:
            with local.open("rb") as src:
                offset = start
                pending: set[asyncio.Task[int]] = set()
                while offset < total:
                    src.seek(offset)
                    data = await asyncio.to_thread(src.read, CHUNK)
                    if not data:
                        break
                    pending.add(asyncio.ensure_future(dst.write(data, offset)))
                    offset += len(data)
                    if len(pending) >= WINDOW:
                        done, pending = await asyncio.wait(
                            pending, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            task.result()
                if pending:
                    for outcome in await asyncio.gather(*pending, return_exceptions=True):
                        if isinstance(outcome, BaseException):
                            raise outcome
        return total - start

    async def put_verified(
        self, local: Path, final: str, sha256_hex: str, *, resume: bool = True
    ) -> bool:
        """Copy ``local`` to ``final`` through ``final.part`` and check its SHA-256 on the host.

        Return False when ``final`` is already there (copied and verified before), True when
        it was copied now. A mismatch removes the partial copy and raises BackendError.
        """
        if await self.exists(final):
            return False
        part = final + ".part"
        await self.mkdir(str(Path(final).parent))
        await self.put(local, part, resume=resume)
        got = await self.sha256(part)
        if got != sha256_hex.lower():
            await self.remove([part])
            raise BackendError(
                f"the copy of {local.name} on {self.name} has sha256 {got}, expected "
                f"{sha256_hex.lower()}: the copy was removed"
            )
        await self.run("mv", "-f", "--", part, final)
        return True
