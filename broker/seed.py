"""First start: the operator account, the usual flavors, a zone, a network, the local host.

Runs once per database (it looks for the operator user). The operator's token is written to
``<data_dir>/operator.json`` (mode 0600), as OpenNebula's one_auth, for the CLI to pick up.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sqlalchemy import insert, select

from broker import model as m
from broker.auth import SYSTEM
from broker.runtime import Runtime
from broker.service import networks, targets, users

log = logging.getLogger(__name__)

OPERATOR = "operator"

#: name, vCPUs, MiB, disk GiB, USD per hour (EC2's on-demand us-east-1 list prices, Linux)
FLAVORS: tuple[tuple[str, int, int, int, float], ...] = (
    ("t3.nano", 2, 512, 0, 0.0052),
    ("t3.micro", 2, 1024, 0, 0.0104),
    ("t3.small", 2, 2048, 0, 0.0208),
    ("t3.medium", 2, 4096, 0, 0.0416),
    ("t3.large", 2, 8192, 0, 0.0832),
    ("m5.large", 2, 8192, 0, 0.096),
    ("m5.xlarge", 4, 16384, 0, 0.192),
    ("m5.2xlarge", 8, 32768, 0, 0.384),
    ("c5.large", 2, 4096, 0, 0.085),
    ("c5.xlarge", 4, 8192, 0, 0.17),
    ("r5.large", 2, 16384, 0, 0.126),
)


def operator_file(rt: Runtime) -> Path:
    return rt.config.data_path / "operator.json"


async def seed(rt: Runtime) -> bool:
    """Seed an empty database; return False when it was seeded already."""
    async with rt.engine.connect() as conn:
        if await conn.scalar(select(m.User.id).where(m.User.name == OPERATOR)):
            return False
    await users.create_user(rt, SYSTEM, OPERATOR, role="admin", group="oneadmin")
    token = await users.issue_token(rt, SYSTEM, OPERATOR, ttl=None)
    write_operator_file(rt, token)
    if not rt.config.broker.seed:
        return True
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(m.Flavor),
            [
                {"name": n, "vcpus": c, "memory_mb": mem, "disk_gb": d, "price_per_hour": p}
                for n, c, mem, d, p in FLAVORS
            ],
        )
        await targets.ensure_cluster(conn, zone_name(rt))
    await networks.create(rt, SYSTEM, name="default", cidr="10.11.0.0/24", is_default=True, zone="")
    return True


def zone_name(rt: Runtime) -> str:
    return f"{rt.config.broker.region}a"


def admin_url(rt: Runtime) -> str:
    scheme = "https" if rt.config.admin.tls_cert else "http"
    return f"{scheme}://{rt.config.admin.listen}"


def write_operator_file(rt: Runtime, token: str) -> None:
    path = operator_file(rt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": admin_url(rt), "token": token}, fh)
    tmp.replace(path)


def refresh_operator_file(rt: Runtime) -> None:
    """Point the saved credential at the admin listener as configured now (its address or TLS
    may have changed since the first start); the token stays."""
    try:
        saved = json.loads(operator_file(rt).read_text())
    except (OSError, ValueError):
        return
    if isinstance(saved, dict) and saved.get("token") and saved.get("url") != admin_url(rt):
        write_operator_file(rt, str(saved["token"]))
