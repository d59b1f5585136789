"""Resource ids in EC2's long shape, shared by every frontend.

An id is a prefix, a dash, a ``0`` and 16 lowercase hex digits (``i-0123456789abcdef0``), so
one instance has one id in EC2, OCCI, the admin API and the CLI alike.
"""

from __future__ import annotations

import re
import secrets

PREFIXES: dict[str, str] = {
    "instance": "i",
    "image": "ami",
    "volume": "vol",
    "snapshot": "snap",
    "security_group": "sg",
    "security_group_rule": "sgr",
    "key_pair": "key",
    "address": "eipalloc",
    "association": "eipassoc",
    "network": "subnet",
    "vpc": "vpc",
    "interface": "eni",
    "reservation": "r",
    "attachment": "eni-attach",
    "request": "req",
    "user": "u",
    "group": "g",
    "target": "t",
    "cluster": "c",
    "hook": "hook",
}

_ID = re.compile(r"^(?P<prefix>[a-z]+(?:-[a-z]+)?)-(?P<hex>[0-9a-f]{8}|[0-9a-f]{17})$")


def new_id(kind: str) -> str:
    """Return a fresh id for a resource of ``kind`` (a key of :data:`PREFIXES`)."""
    return f"{PREFIXES[kind]}-0{secrets.token_hex(8)}"


def is_valid(kind: str, value: str) -> bool:
    """True when ``value`` has the shape of an id of ``kind`` (short 8-hex ids are accepted too)."""
    m = _ID.match(value)
    return m is not None and m.group("prefix") == PREFIXES[kind]
