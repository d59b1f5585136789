"""The anchor process of one lab host: namespaces, cgroups, its daemons, and their reaping.

Run as a script (standard library only): ``python reaper.py CONFIG.json``. It decides how a lab
host is put together and torn down:

- it moves itself into a cgroup of its own in every mounted hierarchy (``<mount>/<cgroup>``),
  then enters the host's network namespace and unshares mount, cgroup and UTS namespaces, so the
  cgroup file systems it re-mounts under a fresh ``/sys`` show only that host's subtree (two hosts'
  libvirtds never share ``machine/qemu-1-x`` cgroups) and the host has its own hostname;
- it bind-mounts the host's state folders over /etc/libvirt, /run/libvirt, /var/lib/libvirt, ...;
- it becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``) so the qemu processes that
  libvirtd daemonises are reaped at once (destroy takes 0.2 s instead of 1-2 s);
- it starts the host's daemons (sshd, libvirtd) in the foreground as its children, reports
  "ok" to the launcher once their sockets accept, and writes their pids to ``state_file``;
- on SIGTERM, or when one of its daemons dies, it stops them, kills whatever is left in its
  cgroup (qemu guests, ssh sessions), reaps everything, and exits.

The launching process returns when the host is ready (exit 0) or failed (exit 1, reason on
stderr); the daemons live on under the forked anchor.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_MOUNT_FLAGS = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "seclabel"}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None
        ),
        f"mount {fstype} {source} on {target}",
    )


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """``(mountpoint, fstype, options)`` of every cgroup hierarchy mounted here."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _src, target, fstype, options, *_ = line.split()
        if fstype in ("cgroup", "cgroup2"):
            keep = [opt for opt in options.split(",") if opt not in _MOUNT_FLAGS]
            out.append((target, fstype, ",".join(keep)))
    return out


def join_cgroups(mounts: list[tuple[str, str, str]], name: str) -> None:
    """Create ``<mount>/<name>`` in every hierarchy and move this process into it."""
    for target, _fstype, _options in mounts:
        group = Path(target) / name
        group.mkdir(exist_ok=True)
        for key in ("cpuset.cpus", "cpuset.mems"):
            mine, parent = group / key, Path(target) / key
            if mine.exists() and not mine.read_text().strip():
                mine.write_text(parent.read_text())
        (group / "cgroup.procs").write_text(str(os.getpid()))


def enter_host(config: dict[str, Any], mounts: list[tuple[str, str, str]]) -> None:
    """Network namespace, private mounts, own cgroup view, own hostname, bind-mounted state."""
    fd = os.open(config["netns_path"], os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns")
    finally:
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS), "unshare")
    _mount("none", "/", "", MS_REC | MS_PRIVATE)
    socket.sethostname(config["hostname"])
    _mount("sysfs", "/sys", "sysfs")
    if any(target == "/sys/fs/cgroup" for target, _f, _o in mounts):
        for target, fstype, options in mounts:
            if target == "/sys/fs/cgroup":
                _mount(fstype, target, fstype, 0, options)
    else:
        _mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "mode=755")
        for target, fstype, options in mounts:
            if target.startswith("/sys/fs/cgroup/"):
                Path(target).mkdir(parents=True, exist_ok=True)
                _mount(fstype, target, fstype, 0, options)
    for source, target in config["binds"]:
        if Path(source).is_dir():
            Path(target).mkdir(parents=True, exist_ok=True)
        elif not Path(target).is_file():
            continue  # a file is bound only over a file that is there
        _mount(source, target, "", MS_BIND)


def spawn(argv: list[str], log_path: str) -> int:
    """Fork and exec ``argv`` with stdin from /dev/null and output to ``log_path``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs
        try:
            null = os.open("/dev/null", os.O_RDONLY)
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, 65536)
            os.execv(argv[0], argv)  # noqa: S606 - an argument list from our own config
        finally:
            os._exit(127)
    return pid


def wait_ready(ready: dict[str, Any], children: dict[str, int], timeout: float) -> None:
    """Until every unix socket and tcp address in ``ready`` accepts, or a daemon dies."""
    deadline = time.monotonic() + timeout
    pending_unix = list(ready.get("unix", []))
    pending_tcp = [tuple(item) for item in ready.get("tcp", [])]
    while pending_unix or pending_tcp:
        for name, pid in children.items():
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                raise RuntimeError(f"{name} exited during start-up (status {status})")
        pending_unix = [path for path in pending_unix if not _connects(socket.AF_UNIX, path)]
        pending_tcp = [addr for addr in pending_tcp if not _connects(socket.AF_INET, addr)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:.0f} s: {pending_unix + pending_tcp}")
        time.sleep(0.02)


def _connects(family: int, address: Any) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def cgroup_pids() -> set[int]:
    """Every process in this host's cgroup subtree (one hierarchy is enough)."""
    roots = [p for p in Path("/sys/fs/cgroup").iterdir() if (p / "cgroup.procs").exists()]
    if (Path("/sys/fs/cgroup") / "cgroup.procs").exists():
        roots = [Path("/sys/fs/cgroup")]
    pids: set[int] = set()
    if roots:
        for procs in roots[0].rglob("cgroup.procs"):
            try:
                pids.update(int(pid) for pid in procs.read_text().split())
            except OSError:
                continue
    return pids


def reap() -> list[int]:
    """Collect every exited child; return their pids."""
    done: list[int] = []
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append(pid)


def shutdown(children: dict[str, int], grace: float = 5.0) -> None:
    """Stop the daemons, then kill and reap whatever else is left in the cgroup."""
    alive = set(children.values())
    for pid in alive:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive -= set(reap())
        time.sleep(0.02)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        others = (cgroup_pids() | alive) - {os.getpid()}
        if not others:
            break
        for pid in others:
            _kill(pid, signal.SIGKILL)
        alive -= set(reap())
        time.sleep(0.02)
    reap()


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def serve(config: dict[str, Any], report: int) -> int:
    """The anchor's life: set up, start the daemons, report, reap until told to stop."""
    mounts = cgroup_mounts()
    join_cgroups(mounts, config["cgroup"])
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl")
    enter_host(config, mounts)
    children = {
        name: spawn(argv, config["logs"][name]) for name, argv in config["children"].items()
    }
    signal.pthread_sigmask(signal.SIG_BLOCK, [*STOP_SIGNALS, signal.SIGCHLD])
    try:
        wait_ready(config["ready"], children, float(config.get("timeout", 20)))
    except (RuntimeError, TimeoutError) as exc:
        shutdown(children)
        os.write(report, f"error: {exc}\n".encode())
        return 1
    state = {"reaper": os.getpid(), "children": children, "started": time.time()}
    tmp = Path(config["state_file"] + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(config["state_file"])
    os.write(report, b"ok\n")
    os.close(report)
    while True:
        info = signal.sigtimedwait([*STOP_SIGNALS, signal.SIGCHLD], 1.0)
        dead = set(reap()) & set(children.values())
        if dead:
            names = [name for name, pid in children.items() if pid in dead]
            print(f"reaper: {', '.join(names)} exited; stopping the host", flush=True)
            break
        if info is not None and info.si_signo in STOP_SIGNALS:
            print(f"reaper: signal {info.si_signo}; stopping the host", flush=True)
            break
    shutdown({name: pid for name, pid in children.items() if pid not in dead})
    return 0


def main() -> int:
    """Fork the anchor; exit when it has reported ready or failed."""
    config = json.loads(Path(sys.argv[1]).read_text())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        log = os.open(config["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 1
        try:
            code = serve(config, write_end)
        except Exception as exc:  # report any set-up failure to the launcher
            with contextlib.suppress(OSError):
                os.write(write_end, f"error: {type(exc).__name__}: {exc}\n".encode())
            print(f"reaper: {type(exc).__name__}: {exc}", flush=True)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        answer = report.read().strip()
    if answer == "ok":
        return 0
    print(answer or "error: the anchor died without a word", file=sys.stderr)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return 1


if __name__ == "__main__":
    sys.exit(main())
