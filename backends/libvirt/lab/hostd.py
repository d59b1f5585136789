"""One lab host's daemons: its users, keys and config files, and starting them under the reaper.

Decides how each host looks to the broker, the same as a real one:

- sshd of its own on the host's address (own host key kept in the workdir, key-only login for the
  lab user, ``MaxSessions 100``, internal sftp); the user has a clean home and ``/bin/sh``;
- a private libvirtd (own ``host_uuid``, kept across restarts; unix socket in the public runtime
  folder, group-owned by the lab user, no auth on it; root qemu, no security driver, no virtlogd)
  with its state folders in the workdir, bind-mounted by the reaper;
- libvirt's ssh transport reaches that socket with ``nc -U`` (netcat-openbsd) on the host: given a
  ``socket=`` parameter libvirt always picks netcat mode over virt-ssh-helper.

``libvirt-qemu`` (user and group) must exist even though qemu runs as root: libvirtd resolves its
compiled-in default before it reads qemu.conf, and Debian creates them only in
libvirt-daemon-system, which the lab does not install.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends.libvirt.lab.model import LabError, LabPlan

REAPER = Path(__file__).with_name("reaper.py")
SSHD = "/usr/sbin/sshd"
LIBVIRTD = "/usr/sbin/libvirtd"
LIBVIRT_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
HOME_ROOT = Path("/var/lib/cloudbroker-lab")
USER_MARK = ".made-by-cloudbroker-lab"
START_TIMEOUT_S = 30.0


def _run(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def ensure_users(user: str) -> bool:
    """Create ``libvirt-qemu`` and the lab user when missing; True when the lab user was made."""
    try:
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        _run(["groupadd", "--system", "libvirt-qemu"])
    if not _user_exists("libvirt-qemu"):
        _run(["useradd", "--system", "--gid", "libvirt-qemu", "--no-create-home", "--home-dir",
              "/var/lib/libvirt", "--shell", "/usr/sbin/nologin", "libvirt-qemu"])  # fmt: skip
    if _user_exists(user):
        return lab_made_user(user)
    home = HOME_ROOT / user
    _run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
          "--user-group", user])  # fmt: skip
    _run(["usermod", "-p", "*", user])  # a locked account ("!") is refused by sshd
    home.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o755)
    (home / USER_MARK).write_text("made by the cloudbroker lab; removed by lab_down\n")
    return True


def lab_made_user(user: str) -> bool:
    """Whether a lab made this user (its home carries the mark), even if lab.json was lost."""
    return _user_exists(user) and (HOME_ROOT / user / USER_MARK).is_file()


def remove_user(user: str) -> None:
    """Delete the lab user and its home (only called for a user the lab created)."""
    if _user_exists(user):
        subprocess.run(["userdel", user], capture_output=True, check=False)
    shutil.rmtree(HOME_ROOT / user, ignore_errors=True)
    if HOME_ROOT.is_dir() and not any(HOME_ROOT.iterdir()):
        HOME_ROOT.rmdir()


def ensure_keypair(path: Path, comment: str) -> str:
    """An ed25519 key pair at ``path`` (kept across runs); return the public key line."""
    if not path.is_file() or not path.with_suffix(".pub").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (path, path.with_suffix(".pub")):
            stale.unlink(missing_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def host_uuid(plan: LabPlan, name: str) -> str:
    """The host's libvirt host_uuid, made once and kept (two daemons must differ to migrate)."""
    path = plan.host_dir(name) / "host_uuid"
    try:
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        value = str(uuid.uuid4())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        return value


def _conf(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            lines.append(f"{key} = [ {', '.join(json.dumps(v) for v in value)} ]")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_host_files(plan: LabPlan, name: str, uuid_: str) -> Path:
    """Write the host's sshd and libvirtd configuration and the reaper's; return the latter."""
    hdir = plan.host_dir(name)
    for sub in LIBVIRT_DIRS:  # every lab_up starts with empty libvirt state (logs included)
        path = hdir / "libvirt" / sub
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
    sock_dir = plan.host_socket(name).parent
    sock_dir.mkdir(parents=True, exist_ok=True)
    sock_dir.chmod(0o755)
    (hdir / "libvirt" / "etc" / "libvirtd.conf").write_text(
        _conf({
            "unix_sock_dir": str(sock_dir),
            "unix_sock_group": grp.getgrgid(pwd.getpwnam(plan.user).pw_gid).gr_name,
            "unix_sock_ro_perms": "0770",
            "unix_sock_rw_perms": "0770",
            "unix_sock_admin_perms": "0700",
            "auth_unix_ro": "none",
            "auth_unix_rw": "none",
            "host_uuid": uuid_,
            "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
            "max_clients": 200,
            "max_anonymous_clients": 200,
            "max_client_requests": 20,
        })
    )  # fmt: skip
    (hdir / "libvirt" / "etc" / "qemu.conf").write_text(
        _conf({
            "user": "root",
            "group": "root",
            "dynamic_ownership": 0,
            "remember_owner": 0,
            "security_driver": "none",
            "stdio_handler": "file",
        })
    )  # fmt: skip
    address = plan.host_address(name)
    (hdir / "sshd_config").write_text(
        "\n".join([
            f"ListenAddress {address}:{plan.ssh_port}",
            f"HostKey {hdir / 'ssh_host_ed25519_key'}",
            "PidFile none",
            f"AuthorizedKeysFile {plan.runtime_dir / 'authorized_keys'}",
            f"AllowUsers {plan.user}",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "MaxSessions 100",
            "MaxStartups 100:30:200",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "Subsystem sftp internal-sftp",
            "",
        ])
    )  # fmt: skip
    config = {
        "netns_path": f"/run/netns/{plan.host_namespace(name)}",
        "hostname": plan.hostname(name),
        "cgroup": plan.cgroup(name),
        "binds": [
            *([str(hdir / "libvirt" / sub), target] for sub, target in LIBVIRT_DIRS.items()),
            # names resolve from files only: a DNS lookup would time out after 10 s
            [str(plan.workdir / "etc-hosts"), "/etc/hosts"],
            [str(plan.workdir / "resolv.conf"), "/etc/resolv.conf"],
        ],
        "children": {
            "sshd": [SSHD, "-D", "-e", "-f", str(hdir / "sshd_config")],
            "libvirtd": [
                LIBVIRTD,
                "--config",
                "/etc/libvirt/libvirtd.conf",
                "--pid-file",
                "/run/libvirt/libvirtd.pid",
            ],
        },
        "logs": {"sshd": str(hdir / "sshd.log"), "libvirtd": str(hdir / "libvirtd.out")},
        "ready": {"unix": [str(plan.host_socket(name))], "tcp": [[address, plan.ssh_port]]},
        "state_file": str(hdir / "daemons.json"),
        "log": str(hdir / "reaper.log"),
        "timeout": START_TIMEOUT_S,
    }
    (hdir / "daemons.json").unlink(missing_ok=True)
    path = hdir / "reaper.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def start_hosts(configs: Sequence[Path]) -> None:
    """Start every host's reaper at once; return when all are ready, raise if one is not."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-I", str(REAPER), str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for config in configs
    ]
    errors = []
    for config, proc in zip(configs, procs, strict=True):
        out, _ = proc.communicate(timeout=START_TIMEOUT_S + 10)
        if proc.returncode != 0:
            errors.append(f"{config.parent.name}: {out.strip()} (see {config.parent}/*.log)")
    if errors:
        raise LabError("lab hosts failed to start: " + "; ".join(errors))


def daemon_pids(plan: LabPlan, name: str) -> dict[str, int]:
    """The pids the host's reaper recorded: reaper, sshd, libvirtd."""
    try:
        data = json.loads((plan.host_dir(name) / "daemons.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"reaper": int(data["reaper"]), **{k: int(v) for k, v in data["children"].items()}}


def check_hosts(plan: LabPlan, names: Sequence[str]) -> None:
    """Log in to every host over ssh and ask its libvirtd for its hostname (all at once).

    This proves the whole path the broker takes: the address, sshd, the key, the user's access
    to the socket, and a working qemu driver. Host keys are checked against the lab's file.
    """
    procs = {}
    for name in names:
        argv = [
            "ssh", "-p", str(plan.ssh_port), "-i", str(plan.key_path), "-T",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={plan.known_hosts}", "-o", "ConnectTimeout=10",
            f"{plan.user}@{plan.host_address(name)}", "--",
            "virsh", "-c", f"qemu:///system?socket={plan.host_socket(name)}", "hostname",
        ]  # fmt: skip
        procs[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
    errors = []
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        if proc.returncode != 0 or out.strip() != plan.hostname(name):
            errors.append(f"{name}: {err.strip() or out.strip()}")
    if errors:
        raise LabError("lab hosts do not answer over ssh+libvirt: " + "; ".join(errors))
