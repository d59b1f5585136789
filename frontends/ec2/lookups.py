"""Reads the service layer does not offer yet (the EC2 frontend's own, read-only).

Availability zones are the broker's clusters; this lists their names with one Core query.
The caller's ``default`` security group id is read on the reader, or made by
:func:`broker.service.security_groups.ensure_default` when it is missing, once per user:
:class:`DefaultGroups` keeps it, as a launch without groups asks for it every time and that
group can be neither deleted nor renamed.
Move them to ``broker/service`` when another frontend needs them.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from broker import model as m
from broker.auth import Caller
from broker.runtime import Runtime
from broker.service import security_groups as sg_svc


async def zone_names(rt: Runtime) -> list[str]:
    """Every cluster name, sorted (each is one availability zone)."""
    async with rt.engine.connect() as conn:
        return list((await conn.scalars(select(m.Cluster.name).order_by(m.Cluster.name))).all())


_DEFAULT_GROUP: Final = select(m.SecurityGroup.id).where(
    m.SecurityGroup.owner_id == bindparam("owner"), m.SecurityGroup.name == sg_svc.DEFAULT
)


async def default_group(rt: Runtime, caller: Caller) -> str:
    """The id of the caller's ``default`` security group, made on first use."""

    def read(conn: Connection) -> str | None:
        return conn.scalar(_DEFAULT_GROUP, {"owner": caller.user_id})

    found = await rt.reads.run(read) if caller.user_id else None
    return found if found is not None else await sg_svc.ensure_default(rt, caller)


class DefaultGroups:
    """Each user's ``default`` security group id, looked up once (at most ``size`` users kept;
    past that the memo starts again)."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: dict[str, str] = {}
        self._size = size

    async def get(self, rt: Runtime, caller: Caller) -> str:
        found = self._ids.get(caller.user_id)
        if found is None:
            found = await default_group(rt, caller)
            if caller.user_id:
                if len(self._ids) >= self._size:
                    self._ids.clear()
                self._ids[caller.user_id] = found
        return found
