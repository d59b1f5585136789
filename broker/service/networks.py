"""Networks and address leases: which network an instance joins and which address it gets.

A network is bound to a host bridge and leases addresses from its range, lowest free first,
or a fixed address a caller asks for. Leases are taken in the launch transaction and released
when the instance is done, so an address is never given twice.

A launch does not read every lease: ``networks.free_from`` says where free addresses may start
(every address of the range below it is leased), allocation reads only windows of candidates
from there up and moves it past what it takes, and releasing an address moves it back down. On
PostgreSQL an allocation locks the network's row first, so transactions on one network take turns.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import socket
from collections.abc import Sequence
from typing import Final

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import bulk, ids
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
    """An address as a number; IPv4's dotted quads the fast way."""
    if ":" in ip:
        return int(ipaddress.ip_address(ip))
    return int.from_bytes(socket.inet_aton(ip), "big")


def _as_text(n: int, version: int) -> str:
    """An address as leases store it (``str(ipaddress.ip_address(...))``); IPv4 the fast way."""
    if version == 4:
        return socket.inet_ntoa(n.to_bytes(4, "big"))
    return str(ipaddress.IPv6Address(n))


def _range(net: NetworkView) -> tuple[int, int]:
    return int(ipaddress.ip_address(net.range_start)), int(ipaddress.ip_address(net.range_end))


#: the least number of candidate addresses one look-up reads (or twice the addresses asked)
WINDOW: Final = 16
#: the most candidate addresses one look-up reads (windows double up to it while all are taken)
MAX_WINDOW: Final = 1024

_FREE_FROM: Final = select(m.Network.free_from).where(m.Network.id == bindparam("net"))
#: FOR NO KEY UPDATE on PostgreSQL: allocations and releases on one network take turns, while
#: the foreign keys of leases and interfaces inserted meanwhile (KEY SHARE) do not wait
_LOCKED_FREE_FROM: Final = _FREE_FROM.with_for_update(key_share=True)
_ALL_LEASES: Final = select(m.Lease.ip).where(m.Lease.network_id == bindparam("net"))
_LEASED_AMONG: Final = select(m.Lease.ip).where(
    m.Lease.network_id == bindparam("net"), m.Lease.ip.in_(bindparam("ips", expanding=True))
)


@dataclasses.dataclass(slots=True)
class _Pool:
    """One network's addresses as one transaction knows them (numbers, not text)."""

    first: int
    last: int
    version: int
    stored: int | None  # networks.free_from as read (an offset from first); None: NULL
    free_from: int  # every address of the range below it is leased (or taken here)
    used: set[int]  # addresses known to be leased: read, or taken in this transaction
    known_to: int  # each address from free_from up to (not including) this is in used or free
    complete: bool  # used holds every lease of the network (read them all)
    window: int = WINDOW  # candidates the next look-up reads (it doubles after each)

    def advance(self) -> None:
        while self.free_from in self.used:
            self.free_from += 1


class Leasing:
    """The address leases of one transaction, written together by :meth:`write`.

    The first plan on a network locks its row (PostgreSQL) and reads ``free_from``; plans then
    read only windows of candidates above it (each twice the one before, the first as large
    as the addresses the transaction expects to take), and remember what they read and took,
    since nothing else writes the network's leases until the transaction ends. A network whose
    ``free_from`` is NULL (not known yet) has all its leases read once instead.
    """

    def __init__(self, expected: int = 0) -> None:
        #: addresses the transaction is expected to take: its first look-up on a network reads
        #: that many candidates at least, so a batch of launches reads once
        self.expected = expected
        self._pools: dict[str, _Pool] = {}
        self._nics: list[dict[str, object]] = []
        self._leases: list[dict[str, object]] = []

    async def pool(self, conn: AsyncConnection, net: NetworkView) -> _Pool:
        found = self._pools.get(net.id)
        if found is None:
            found = self._pools[net.id] = await _load(conn, net)
            found.window = max(WINDOW, self.expected)
        return found

    def add(self, plan: PlannedInterfaces) -> None:
        self._nics.extend(plan.nics)
        self._leases.extend(plan.leases)

    async def write(self, conn: AsyncConnection) -> None:
        """Insert the planned interfaces and leases (after their instances), then ``free_from``.

        ``free_from`` is only set if it still holds what was read: if another writer changed it
        meanwhile (another process on SQLite), its value stays, which is safe: this
        transaction's leases only add to the addresses below it that are leased.
        """
        if self._nics:
            await bulk.insert_rows(conn, m.NetworkInterface, self._nics)
            await bulk.insert_rows(conn, m.Lease, self._leases)
        for nid, pool in sorted(self._pools.items()):
            offset = pool.free_from - pool.first
            if offset == pool.stored:
                continue
            was = (
                m.Network.free_from.is_(None)
                if pool.stored is None
                else m.Network.free_from == pool.stored
            )
            await conn.execute(
                update(m.Network).where(m.Network.id == nid, was).values(free_from=offset)
            )
        self._pools.clear()
        self._nics.clear()
        self._leases.clear()


async def _load(conn: AsyncConnection, net: NetworkView) -> _Pool:
    """``net``'s row locked (SQLite has one writer, its lock) and what is known of its leases."""
    first, last = _range(net)
    version = ipaddress.ip_address(net.range_start).version
    stmt = _FREE_FROM if conn.dialect.name == "sqlite" else _LOCKED_FREE_FROM
    stored = await conn.scalar(stmt, {"net": net.id})
    if stored is None:
        used = {_as_int(ip) for ip in await conn.scalars(_ALL_LEASES, {"net": net.id})}
        pool = _Pool(first, last, version, None, first, used, last + 1, True)
        pool.advance()
        return pool
    start = first + max(stored, 0)
    return _Pool(first, last, version, stored, start, set(), start, False)


async def _lowest_free(conn: AsyncConnection, nid: str, pool: _Pool, count: int) -> list[int]:
    """Up to ``count`` free addresses of the range, lowest first, reading windows as needed."""
    chosen: list[int] = []
    candidate = pool.free_from
    pool.window = max(pool.window, 2 * count)
    while len(chosen) < count and candidate <= pool.last:
        if candidate >= pool.known_to:
            end = min(pool.last + 1, candidate + pool.window)
            ips = [_as_text(n, pool.version) for n in range(candidate, end)]
            found = await conn.scalars(_LEASED_AMONG, {"net": nid, "ips": ips})
            pool.used.update(_as_int(ip) for ip in found)
            pool.known_to = end
            pool.window = min(2 * pool.window, MAX_WINDOW)
        if candidate not in pool.used:
            chosen.append(candidate)
        candidate += 1
    return chosen


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
    leasing: Leasing,
) -> PlannedInterfaces:
    """An interface and a lease on ``net`` for each instance (lowest free addresses first).

    What it plans joins ``leasing``, which writes it (after the instances); a plan that raises
    takes nothing, so the launches after it in the transaction go on as if it never came.
    """
    if net is None or not rids:
        return PlannedInterfaces([], [], {})
    if fixed_ip is not None and len(rids) > 1:
        raise InvalidRequest(
            "a private address can be given to one instance only", field="PrivateIpAddress"
        )
    pool = await leasing.pool(conn, net)
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
        if want not in pool.used and not pool.complete:
            ips = [_as_text(want, pool.version)]
            if await conn.scalar(_LEASED_AMONG, {"net": net.id, "ips": ips}) is not None:
                pool.used.add(want)
        if want in pool.used:
            raise InvalidRequest(f"the address {fixed_ip} is in use", field="PrivateIpAddress")
        chosen.append(want)
    else:
        chosen = await _lowest_free(conn, net.id, pool, len(rids))
        if len(chosen) < len(rids):
            raise InvalidRequest(
                f"the network '{net.id}' has no free addresses left",
                resource="network",
                field="InsufficientFreeAddresses",
            )
        pool.free_from = chosen[-1] + 1  # the ones skipped on the way are leased
    pool.used.update(chosen)
    pool.advance()
    plan = PlannedInterfaces([], [], {})
    for rid, ip_int in zip(rids, chosen, strict=True):
        ip, mac, nic = _as_text(ip_int, pool.version), new_mac(), ids.new_id("interface")
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
    leasing.add(plan)
    return plan


_LOWER_FREE_FROM: Final = (
    update(m.Network)
    .where(m.Network.id == bindparam("net"), m.Network.free_from > bindparam("offset"))
    .values(free_from=bindparam("offset"))
)


async def release_interfaces(conn: AsyncConnection, rids: Sequence[str]) -> None:
    """Delete the instances' interfaces and (unless fixed) leases; lower each ``free_from``.

    A network's ``free_from`` goes down to its lowest address released in the range, so the
    next allocation gives that one first.
    """
    nic_ids = select(m.NetworkInterface.id).where(m.NetworkInterface.instance_id.in_(rids))
    freed = await conn.execute(
        delete(m.Lease)
        .where(m.Lease.interface_id.in_(nic_ids), m.Lease.fixed.is_(False))
        .returning(m.Lease.network_id, m.Lease.ip)
    )
    released: dict[str, list[int]] = {}
    for nid, ip in freed.all():
        released.setdefault(nid, []).append(_as_int(ip))
    await conn.execute(delete(m.NetworkInterface).where(m.NetworkInterface.instance_id.in_(rids)))
    if not released:
        return
    ranges = await conn.execute(
        select(m.Network.id, m.Network.range_start, m.Network.range_end).where(
            m.Network.id.in_(sorted(released))
        )
    )
    lower: list[dict[str, object]] = []
    for nid, start, end in ranges.all():
        first, last = int(ipaddress.ip_address(start)), int(ipaddress.ip_address(end))
        inside = [n for n in released[nid] if first <= n <= last]
        if inside:
            lower.append({"net": nid, "offset": min(inside) - first})
    for values in sorted(lower, key=lambda v: str(v["net"])):  # one lock order for all
        await conn.execute(_LOWER_FREE_FROM, values)


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
                free_from=0,  # nothing leased yet
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
        leased = select(m.Lease.network_id, func.count()).group_by(m.Lease.network_id)
        counts: dict[str, int] = {nid: n for nid, n in await conn.execute(leased)}
    return [dataclasses.replace(NetworkView(*r), leased=counts.get(r[0], 0)) for r in rows]
