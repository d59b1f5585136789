"""A one-command local lab of libvirt hosts, each in its own network namespace.

``lab_up(workdir, hosts=2)`` installs what is missing (Debian packages), then makes a lab
network namespace with a bridge, and per host a network namespace bridged onto it with its own
address, sshd, private libvirtd (under a child subreaper) and a bridge ``br0`` for its guests.
The broker reaches each host as it reaches a real one, through ``LabHost.libvirt_uri``
(``qemu+ssh://USER@ADDR:PORT/system?socket=...&keyfile=...&no_verify=1``) and asyncssh to the
same sshd. ``lab_down`` leaves nothing running and nothing in the kernel; ``lab_status`` says
what is up. The pieces: ``model`` (names, addresses, state), ``net`` (namespaces, links),
``hostd`` (users, keys, daemon configs), ``reaper`` (the per-host anchor process), ``core``.
"""

from backends.libvirt.lab.core import HostStatus, LabStatus, lab_down, lab_status, lab_up
from backends.libvirt.lab.model import LabError, LabHost, LabState

__all__ = [
    "HostStatus",
    "LabError",
    "LabHost",
    "LabState",
    "LabStatus",
    "lab_down",
    "lab_status",
    "lab_up",
]
