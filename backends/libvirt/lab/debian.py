"""Which Debian packages the lab and the tiny guest need, and installing the missing ones.

Decides: a package counts as present when dpkg says "install ok installed"; missing ones are
installed with apt-get, non-interactively and without recommends, running ``apt-get update``
once and retrying when the first attempt fails (a fresh machine has stale or no lists).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

LAB_PACKAGES: tuple[str, ...] = (
    "qemu-system-x86",
    "qemu-utils",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "openssh-server",
    "openssh-client",
    "iproute2",
    "netcat-openbsd",
    "cpio",
    "busybox-static",
)
"""Everything ``lab_up`` needs on the machine (netcat-openbsd is the ssh transport's helper)."""

APT_TIMEOUT_S = 900.0


class PackageError(RuntimeError):
    """apt-get could not install what the lab needs."""


def apt_env() -> dict[str, str]:
    """The environment for apt and dpkg: no prompts, no locale surprises."""
    env = dict(os.environ)
    env.update(DEBIAN_FRONTEND="noninteractive", LC_ALL="C", APT_LISTCHANGES_FRONTEND="none")
    return env


def missing_packages(names: Sequence[str]) -> list[str]:
    """The subset of ``names`` that dpkg does not report as installed."""
    if not names:
        return []
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *names],
        capture_output=True,
        text=True,
        env=apt_env(),
        check=False,
    )
    installed = {
        line.split(" ", 1)[0]
        for line in proc.stdout.splitlines()
        if line.endswith("install ok installed")
    }
    return [name for name in names if name not in installed]


def _apt(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "-q", "-y", "-o", "Dpkg::Options::=--force-confold", *args],
        capture_output=True,
        text=True,
        env=apt_env(),
        timeout=APT_TIMEOUT_S,
        check=False,
    )


def ensure_packages(names: Sequence[str] = LAB_PACKAGES) -> list[str]:
    """Install whichever of ``names`` are missing; return the ones that were installed."""
    missing = missing_packages(names)
    if not missing:
        return []
    install = ["install", "--no-install-recommends", *missing]
    proc = _apt(install)
    if proc.returncode != 0:
        _apt(["update"])
        proc = _apt(install)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PackageError(f"apt-get install {' '.join(missing)} failed: {' | '.join(tail)}")
    return missing
