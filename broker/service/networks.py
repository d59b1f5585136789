"""Networks and address leases: which network an instance joins and which address it gets.

A network is bound to a host bridge and leases addresses from its range, lowest free first,
or a fixed address a caller asks for. Leases are taken in the launch transaction and released
when the instance is done, so an address is never given twice.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import socket
from collections.abc import Sequence
from typing import Final

from sqlalchemy import bindparam, delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import AlreadyExists, InvalidRequest, NotFound
from broker.events import audit, record
from broker.runtime import Runtime


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkView:
    id: str
    name: str
    bridge: str
    cidr: str
    gateway: str
    dns: str
    range_start: str
    range_end: str
    zone: str
    state: str
    is_default: bool
    leased: int = 0


_COLS = (
    m.Network.id,
    m.Network.name,
    m.Network.bridge,
    m.Network.cidr,
    m.Network.gateway,
    m.Network.dns,
    m.Network.range_start,
    m.Network.range_end,
    m.Network.zone,
    m.Network.state,
    m.Network.is_default,
)


def new_mac() -> str:
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


_USABLE: Final = select(*_COLS)
#: a network the caller may join: shared (no owner) or their own
_NETWORK: Final = _USABLE.where(
    or_(m.Network.owner_id.is_(None), m.Network.owner_id == bindparam("user")),
    m.Network.id == bindparam("id"),
)

#: the first default network the caller may join, in any zone / in a zone or zone-less
_DEFAULT_NETWORK: Final = (
    _USABLE.where(
        or_(m.Network.owner_id.is_(None), m.Network.owner_id == bindparam("user")),
        m.Network.is_default.is_(True),
    )
    .order_by(m.Network.id)
    .limit(1)
)
_ZONE_DEFAULT_NETWORK: Final = (
    _USABLE.where(
        or_(m.Network.owner_id.is_(None), m.Network.owner_id == bindparam("user")),
        m.Network.is_default.is_(True),
        or_(m.Network.zone == bindparam("zone"), m.Network.zone == ""),
    )
    .order_by(m.Network.id)
    .limit(1)
)


async def pick_network(
    conn: AsyncConnection, caller: Caller, network_id: str | None, zone: str | None
) -> NetworkView | None:
    """The network a launch joins: the one asked for, else the zone's default, else none."""
    if network_id is not None:
        row = (await conn.execute(_NETWORK, {"user": caller.user_id, "id": network_id})).first()
        if row is None:
            raise NotFound(
                f"the network '{network_id}' does not exist", resource="network", field=network_id
            )
    else:
        if zone is None:
            found = await conn.execute(_DEFAULT_NETWORK, {"user": caller.user_id})
        else:
            found = await conn.execute(
                _ZONE_DEFAULT_NETWORK, {"user": caller.user_id, "zone": zone}
            )
        row = found.first()
        if row is None:
            return None
    view = NetworkView(*row)
    if view.state != "available":
        raise InvalidRequest(f"the network '{view.id}' is {view.state}", resource="network")
    return view


def _as_int(ip: str) -> int:
    """An address as a number; IPv4's dotted quads the fast way (a launch reads every lease)."""
    if ":" in ip:
        return int(ipaddress.ip_address(ip))
    return int.from_bytes(socket.inet_aton(ip), "big")


def _range(net: NetworkView) -> tuple[int, int]:
    return int(ipaddress.ip_address(net.range_start)), int(ipaddress.ip_address(net.range_end))


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedInterfaces:
    """Interfaces and leases for a launch, worked out before anything is written."""

    nics: list[dict[str, object]]
    leases: list[dict[str, object]]
    addresses: dict[str, str]


async def plan_interfaces(
    conn: AsyncConnection,
    caller: Caller,
    net: NetworkView | None,
    rids: Sequence[str],
    fixed_ip: str | None,
    leased: dict[str, set[int]] | None = None,
) -> PlannedInterfaces:
    """An interface and a lease on ``net`` for each instance (lowest free addresses first).

    ``leased`` carries the addresses in use per network between launches of one transaction:
    read once, then kept up to date with what each plan takes.
    """
    if net is None or not rids:
        return PlannedInterfaces([], [], {})
    if fixed_ip is not None and len(rids) > 1:
        raise InvalidRequest(
            "a private address can be given to one instance only", field="PrivateIpAddress"
        )
    first, last = _range(net)
    used = None if leased is None else leased.get(net.id)
    if used is None:
        rows = await conn.scalars(select(m.Lease.ip).where(m.Lease.network_id == net.id))
        used = {_as_int(ip) for ip in rows.all()}
        if leased is not None:
            leased[net.id] = used
    chosen: list[int] = []
    if fixed_ip is not None:
        try:
            want = int(ipaddress.ip_address(fixed_ip))
        except ValueError:
            raise InvalidRequest(
                f"'{fixed_ip}' is not an address", field="PrivateIpAddress"
            ) from None
        if ipaddress.ip_address(fixed_ip) not in ipaddress.ip_network(net.cidr):
            raise InvalidRequest(f"{fixed_ip} is not in {net.cidr}", field="PrivateIpAddress")
        if want in used:
            raise InvalidRequest(f"the address {fixed_ip} is in use", field="PrivateIpAddress")
        chosen.append(want)
    else:
        candidate = first
        while len(chosen) < len(rids) and candidate <= last:
            if candidate not in used:
                chosen.append(candidate)
            candidate += 1
        if len(chosen) < len(rids):
            raise InvalidRequest(
                f"the network '{net.id}' has no free addresses left",
                resource="network",
                field="InsufficientFreeAddresses",
            )
    used.update(chosen)
    plan = PlannedInterfaces([], [], {})
    for rid, ip_int in zip(rids, chosen, strict=True):
        ip, mac, nic = str(ipaddress.ip_address(ip_int)), new_mac(), ids.new_id("interface")
        plan.nics.append(
            {
                "id": nic,
                "instance_id": rid,
                "owner_id": caller.user_id,
                "network_id": net.id,
                "device_index": 0,
                "mac": mac,
                "ip": ip,
            }
        )
        plan.leases.append({"network_id": net.id, "ip": ip, "mac": mac, "interface_id": nic})
        plan.addresses[rid] = ip
    return plan


async def insert_interfaces(conn: AsyncConnection, plan: PlannedInterfaces) -> None:
    """Write what :func:`plan_interfaces` worked out (after the instances exist)."""
    if plan.nics:
        await conn.execute(insert(m.NetworkInterface), plan.nics)
        await conn.execute(insert(m.Lease), plan.leases)


async def release_interfaces(conn: AsyncConnection, rids: Sequence[str]) -> None:
    nic_ids = select(m.NetworkInterface.id).where(m.NetworkInterface.instance_id.in_(rids))
    await conn.execute(
        delete(m.Lease).where(m.Lease.interface_id.in_(nic_ids), m.Lease.fixed.is_(False))
    )
    await conn.execute(delete(m.NetworkInterface).where(m.NetworkInterface.instance_id.in_(rids)))


async def create(
    rt: Runtime,
    caller: Caller,
    *,
    name: str,
    cidr: str,
    bridge: str = "",
    gateway: str = "",
    dns: str = "",
    range_start: str = "",
    range_end: str = "",
    zone: str = "",
    is_default: bool = False,
) -> NetworkView:
    require_admin(caller)
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"invalid CIDR '{cidr}': {exc}", field="cidr") from None
    hosts = list(net.hosts()) if net.num_addresses <= 65536 else []
    if len(hosts) < 3:
        raise InvalidRequest("the network is too small (or over /16)", field="cidr")
    gateway = gateway or str(hosts[0])
    start = ipaddress.ip_address(range_start or str(hosts[1]))
    end = ipaddress.ip_address(range_end or str(hosts[-1]))
    if start not in net or end not in net or int(start) > int(end):
        raise InvalidRequest(
            "the address range must lie inside the network, start <= end", field="range"
        )
    nid = ids.new_id("network")
    async with rt.engine.begin() as conn:
        if await conn.scalar(select(m.Network.id).where(m.Network.name == name)):
            raise AlreadyExists(f"a network named '{name}' exists", resource="network")
        await conn.execute(
            insert(m.Network).values(
                id=nid,
                name=name,
                bridge=bridge,
                cidr=str(net),
                gateway=gateway,
                dns=dns,
                range_start=str(start),
                range_end=str(end),
                zone=zone,
                is_default=is_default,
            )
        )
        await record(conn, [audit(nid, caller.name, "network created", name=name, cidr=str(net))])
    return (await describe(rt, caller, ids_=(nid,)))[0]


async def describe(rt: Runtime, caller: Caller, ids_: Sequence[str] = ()) -> list[NetworkView]:
    del caller  # networks without an owner are visible to every user
    stmt = select(*_COLS).order_by(m.Network.name)
    if ids_:
        stmt = stmt.where(m.Network.id.in_(ids_))
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        counts: dict[str, int] = {}
        for (nid,) in await conn.execute(select(m.Lease.network_id)):
            counts[nid] = counts.get(nid, 0) + 1
    return [dataclasses.replace(NetworkView(*r), leased=counts.get(r[0], 0)) for r in rows]
