"""Public addresses (EC2's Elastic IPs): which address an owner gets, and where it points.

Addresses come from a pool, :data:`POOL` unless the caller of :func:`allocate` passes another
(the frontends will pass the operator's configured pool once the configuration has one); the
default is the RFC 5737 documentation range, so nothing here routes to the internet by accident.
The lowest free host address of the pool is taken; the unique index on ``public_ip`` makes a
concurrent allocation retry with the next one. An owner holds at most :data:`MAX_PER_OWNER`.

An address is associated with one of its owner's instances (not one that is terminating or
done, or failed); the instance's ``public_ip`` follows. Moving an address that is associated
elsewhere, or giving an instance that has an address another one, needs ``allow_reassociation``.
An address is released only once disassociated (EC2's InvalidIPAddress.InUse).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import InvalidRequest, InvalidState, NotFound, QuotaExceeded
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service import quotas
from broker.service.common import TagFilter, check_ids, check_values, tag_conditions, tags_for
from broker.service.tags import check_tags, drop_tags, insert_tags

#: The default pool public addresses are allocated from (RFC 5737 TEST-NET-2).
POOL = "198.51.100.0/24"
MAX_PER_OWNER = 5
#: Instance states that cannot take an address.
UNASSOCIABLE = ("epilog", "done", "failed")
_RETRIES = 5


@dataclasses.dataclass(frozen=True, slots=True)
class AddressView:
    id: str
    owner_id: str
    public_ip: str
    instance_id: str | None
    association_id: str | None
    private_ip: str | None
    created_at: dt.datetime
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class AddressFilter:
    """``ids`` and ``public_ips`` must all exist (AllocationId.N, PublicIp.N); the rest filter."""

    ids: tuple[str, ...] = ()
    public_ips: tuple[str, ...] = ()
    instance_ids: tuple[str, ...] = ()
    association_ids: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()


_COLS = (
    m.Address.id,
    m.Address.owner_id,
    m.Address.public_ip,
    m.Address.instance_id,
    m.Address.association_id,
    m.Instance.private_ip,
    m.Address.created_at,
)


def _pool(pool: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(pool, strict=True)
    except ValueError:
        raise InvalidRequest(
            f"the address pool '{pool[:64]}' is not a CIDR block", resource="address", field="pool"
        ) from None
    if net.num_addresses > 1 << 24:
        raise InvalidRequest(
            "the address pool is larger than a /8", resource="address", field="pool"
        )
    return net


async def _free_address(
    conn: AsyncConnection, net: ipaddress.IPv4Network | ipaddress.IPv6Network
) -> str:
    used = set((await conn.scalars(select(m.Address.public_ip))).all())
    for host in net.hosts():
        if str(host) not in used:
            return str(host)
    raise QuotaExceeded(
        f"the address pool {net} has no free addresses", resource="address", field="pool"
    )


async def allocate(
    rt: Runtime, caller: Caller, *, pool: str = POOL, tags: Mapping[str, str] | None = None
) -> AddressView:
    """A new public address for the caller, the lowest free one of ``pool``."""
    net = _pool(pool)
    check_tags(tags or {})
    aid = ids.new_id("address")
    for attempt in range(_RETRIES):
        try:
            async with rt.engine.begin() as conn:
                held = await conn.scalar(
                    select(func.count())
                    .select_from(m.Address)
                    .where(m.Address.owner_id == caller.user_id)
                )
                if int(held or 0) >= MAX_PER_OWNER:
                    raise QuotaExceeded(
                        f"you hold {MAX_PER_OWNER} addresses already",
                        resource="address",
                        field="AddressLimitExceeded",
                    )
                await quotas.admit(conn, caller, "addresses", 1, "address")
                ip = await _free_address(conn, net)
                await conn.execute(
                    insert(m.Address).values(id=aid, owner_id=caller.user_id, public_ip=ip)
                )
                await insert_tags(conn, caller.user_id, aid, "address", tags or {})
                await record(conn, [audit(aid, caller.name, "address allocated", public_ip=ip)])
            break
        except IntegrityError:
            if attempt == _RETRIES - 1:
                raise
    return await get(rt, caller, aid)


def _scope(caller: Caller) -> list[Any]:
    return [] if caller.is_admin else [m.Address.owner_id == caller.user_id]


async def describe(
    rt: Runtime, caller: Caller, flt: AddressFilter = AddressFilter()
) -> list[AddressView]:
    """The caller's addresses matching ``flt``, ordered by address id."""
    for name in ("ids", "public_ips", "instance_ids", "association_ids"):
        check_values(name, getattr(flt, name))
    check_ids("address", flt.ids, "address")
    conds = _scope(caller)
    pairs = (
        (m.Address.id, flt.ids),
        (m.Address.public_ip, flt.public_ips),
        (m.Address.instance_id, flt.instance_ids),
        (m.Address.association_id, flt.association_ids),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    conds.extend(tag_conditions(m.Address.id, flt.tags))
    stmt = (
        select(*_COLS)
        .outerjoin(m.Instance, m.Instance.id == m.Address.instance_id)
        .where(*conds)
        .order_by(m.Address.id)
    )
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        tags = await tags_for(conn, [r[0] for r in rows])
    found_ids = {r[0] for r in rows}
    found_ips = {r[2] for r in rows}
    for aid in flt.ids:
        if aid not in found_ids:
            raise NotFound(f"the address '{aid}' does not exist", resource="address", field=aid)
    for ip in flt.public_ips:
        if ip not in found_ips:
            raise NotFound(f"the address '{ip}' does not exist", resource="address", field=ip)
    return [AddressView(*r, tags=tags.get(r[0], {})) for r in rows]


async def get(rt: Runtime, caller: Caller, allocation_id: str) -> AddressView:
    (view,) = await describe(rt, caller, AddressFilter(ids=(allocation_id,)))
    return view


async def _address(
    conn: AsyncConnection, caller: Caller, allocation_id: str | None, public_ip: str | None
) -> tuple[str, str, str, str | None, str | None]:
    """id, owner, address, instance and association, locked, of an address the caller holds."""
    stmt = select(
        m.Address.id,
        m.Address.owner_id,
        m.Address.public_ip,
        m.Address.instance_id,
        m.Address.association_id,
    )
    if allocation_id is not None:
        check_ids("address", [allocation_id], "address")
        stmt = stmt.where(m.Address.id == allocation_id)
    elif public_ip is not None:
        stmt = stmt.where(m.Address.public_ip == public_ip, *_scope(caller))
    else:
        raise InvalidRequest(
            "give an allocation id or a public address", resource="address", field="AllocationId"
        )
    rid = allocation_id or public_ip or ""
    row = (await conn.execute(stmt.with_for_update())).first()
    if row is None:
        raise NotFound(f"the address '{rid}' does not exist", resource="address", field=rid)
    authorize(caller, Ownership(row[1], None), change=True, what="address", rid=rid)
    return row[0], row[1], row[2], row[3], row[4]


async def _unlink(conn: AsyncConnection, caller: Caller, aid: str, instance_id: str) -> None:
    await conn.execute(
        update(m.Address).where(m.Address.id == aid).values(instance_id=None, association_id=None)
    )
    await conn.execute(
        update(m.Instance).where(m.Instance.id == instance_id).values(public_ip=None)
    )
    await record(
        conn,
        [
            audit(aid, caller.name, "address disassociated", instance=instance_id),
            audit(instance_id, caller.name, "address disassociated", address=aid),
        ],
    )


async def associate(
    rt: Runtime,
    caller: Caller,
    instance_id: str,
    *,
    allocation_id: str | None = None,
    public_ip: str | None = None,
    allow_reassociation: bool = False,
) -> str:
    """Point an address at one of the caller's instances; return the ``eipassoc-`` id.

    Asking again for the same pair returns the same association.
    """
    check_ids("instance", [instance_id], "instance")
    async with rt.engine.begin() as conn:
        aid, _owner, ip, current, assoc = await _address(conn, caller, allocation_id, public_ip)
        inst = (
            await conn.execute(
                select(m.Instance.owner_id, m.Instance.group_id, m.Instance.state)
                .where(m.Instance.id == instance_id)
                .with_for_update()
            )
        ).first()
        if inst is None:
            raise NotFound(
                f"the instance '{instance_id}' does not exist",
                resource="instance",
                field=instance_id,
            )
        authorize(
            caller, Ownership(inst[0], inst[1]), change=True, what="instance", rid=instance_id
        )
        if inst[2] in UNASSOCIABLE:
            raise InvalidState(
                f"the instance '{instance_id}' is {inst[2]}", resource="instance", state=inst[2]
            )
        if current == instance_id and assoc is not None:
            return assoc
        other = await conn.scalar(
            select(m.Address.id).where(m.Address.instance_id == instance_id, m.Address.id != aid)
        )
        if (current is not None or other is not None) and not allow_reassociation:
            raise InvalidState(
                f"the address {ip} or the instance '{instance_id}' is already associated; "
                "allow reassociation to move it",
                resource="address",
                state="associated",
            )
        if current is not None:
            await _unlink(conn, caller, aid, current)
        if other is not None:
            await _unlink(conn, caller, other, instance_id)
        new_assoc = ids.new_id("association")
        await conn.execute(
            update(m.Address)
            .where(m.Address.id == aid)
            .values(instance_id=instance_id, association_id=new_assoc)
        )
        await conn.execute(
            update(m.Instance).where(m.Instance.id == instance_id).values(public_ip=ip)
        )
        await record(
            conn,
            [
                audit(aid, caller.name, "address associated", instance=instance_id),
                audit(instance_id, caller.name, "address associated", public_ip=ip),
            ],
        )
    return new_assoc


async def disassociate(
    rt: Runtime,
    caller: Caller,
    *,
    association_id: str | None = None,
    public_ip: str | None = None,
) -> None:
    """Take an address off its instance, by association id or by address."""
    async with rt.engine.begin() as conn:
        if association_id is not None:
            check_ids("association", [association_id], "association")
            aid = await conn.scalar(
                select(m.Address.id).where(m.Address.association_id == association_id)
            )
            missing = NotFound(
                f"the association '{association_id}' does not exist",
                resource="association",
                field=association_id,
            )
            if aid is None:
                raise missing
            try:
                _aid, _o, _ip, current, _a = await _address(conn, caller, aid, None)
            except NotFound:
                raise missing from None
        else:
            _aid, _o, _ip, current, _a = await _address(conn, caller, None, public_ip)
            aid = _aid
            if current is None:
                raise NotFound(
                    f"the address {public_ip} is not associated",
                    resource="association",
                    field=public_ip or "",
                )
        assert current is not None
        await _unlink(conn, caller, aid, current)


async def release(
    rt: Runtime,
    caller: Caller,
    *,
    allocation_id: str | None = None,
    public_ip: str | None = None,
) -> None:
    """Give an address back to the pool; it must be disassociated first."""
    async with rt.engine.begin() as conn:
        aid, _owner, ip, current, _assoc = await _address(conn, caller, allocation_id, public_ip)
        if current is not None:
            raise InvalidState(
                f"the address {ip} is associated with '{current}'; disassociate it first",
                resource="address",
                state="in-use",
            )
        await conn.execute(sql_delete(m.Address).where(m.Address.id == aid))
        await drop_tags(conn, [aid])
        await record(conn, [audit(aid, caller.name, "address released", public_ip=ip)])
