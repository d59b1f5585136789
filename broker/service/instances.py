"""Instances: launch (idempotent per client token), lifecycle actions, describe, console.

Launch validates everything first, then writes the instances as pending (with their interfaces,
leases, security groups and tags) in one transaction and wakes the scheduler. Actions move the
instance through :mod:`broker.states` and leave an ``intent`` for the scheduler to carry out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import itertools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from sqlalchemy import (
    Executable,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    exists,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import BindParameter

from broker import bulk, ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import BrokerError, InvalidRequest, InvalidState, NotFound
from broker.events import EventRecord, record, transition
from broker.groupcommit import COMMIT_DELAY, GroupCommit
from broker.model import utcnow
from broker.runtime import Runtime
from broker.service import networks, quotas
from broker.service.common import (
    Page,
    TagFilter,
    check_ids,
    check_limit,
    check_values,
    decode_token,
    encode_token,
    split_page,
    tag_conditions,
)
from broker.service.images import ImageView, visible_image
from broker.service.networks import NetworkView
from broker.states import ACTION_MOVES, Action, State, check_move

MAX_COUNT = 1000
MAX_USER_DATA = 16 * 1024
DONE_VISIBLE_FOR = dt.timedelta(hours=1)
MAX_TAGS = 50
MAX_TEXT = 256


@dataclasses.dataclass(frozen=True, slots=True)
class LaunchRequest:
    image_id: str
    flavor: str
    min_count: int = 1
    max_count: int = 1
    key_name: str | None = None
    user_data: bytes | None = None
    security_group_ids: tuple[str, ...] = ()
    security_group_names: tuple[str, ...] = ()
    zone: str | None = None
    network_id: str | None = None
    private_ip: str | None = None
    client_token: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    requirements: str = ""
    rank: str = ""
    hostname: str = ""
    hops: int = 0
    origin: str = ""
    hold: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceView:
    id: str
    network_id: str
    device_index: int
    mac: str
    ip: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceView:
    id: str
    owner_id: str
    group_id: str
    reservation_id: str
    launch_index: int
    client_token: str | None
    image_id: str
    flavor: str
    vcpus: int
    memory_mb: int
    state: State
    state_reason: str
    intent: str | None
    target_id: str | None
    key_name: str | None
    zone: str | None
    hostname: str
    private_ip: str | None
    public_ip: str | None
    created_at: dt.datetime
    launched_at: dt.datetime | None
    updated_at: dt.datetime
    tags: Mapping[str, str]
    interfaces: tuple[InterfaceView, ...]
    security_groups: tuple[tuple[str, str], ...]
    target_kind: str | None = None
    target_name: str | None = None
    target_zone: str | None = None  # the cluster of the target it is placed on


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceFilter:
    ids: tuple[str, ...] = ()
    states: tuple[State, ...] = ()
    image_ids: tuple[str, ...] = ()
    flavors: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    reservation_ids: tuple[str, ...] = ()
    key_names: tuple[str, ...] = ()
    private_ips: tuple[str, ...] = ()
    target_ids: tuple[str, ...] = ()
    owner_ids: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()
    #: a case-insensitive substring of the id, hostname, image, flavor, an address, the target's
    #: name, or a tag's key or value (letters compare case-insensitively only in ASCII on SQLite)
    text: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class StateChange:
    id: str
    previous: State
    current: State


_COLUMNS = (
    m.Instance.id,
    m.Instance.owner_id,
    m.Instance.group_id,
    m.Instance.reservation_id,
    m.Instance.launch_index,
    m.Instance.client_token,
    m.Instance.image_id,
    m.Instance.flavor,
    m.Instance.vcpus,
    m.Instance.memory_mb,
    m.Instance.state,
    m.Instance.state_reason,
    m.Instance.intent,
    m.Instance.target_id,
    m.Instance.key_name,
    m.Instance.zone,
    m.Instance.hostname,
    m.Instance.private_ip,
    m.Instance.public_ip,
    m.Instance.created_at,
    m.Instance.launched_at,
    m.Instance.updated_at,
    m.Target.kind,
    m.Target.name,
    m.Cluster.name,
)


def _validate_request(req: LaunchRequest) -> None:
    if not 1 <= req.min_count <= req.max_count:
        raise InvalidRequest("MinCount must be at least 1 and at most MaxCount", field="count")
    if req.max_count > MAX_COUNT:
        raise InvalidRequest(f"MaxCount must be at most {MAX_COUNT}", field="count")
    if req.user_data is not None and len(req.user_data) > MAX_USER_DATA:
        raise InvalidRequest("user data is limited to 16384 bytes", field="UserData")
    if req.client_token is not None and not 0 < len(req.client_token) <= 64:
        raise InvalidRequest("the client token must be 1 to 64 characters", field="ClientToken")
    if len(req.tags) > MAX_TAGS:
        raise InvalidRequest(f"at most {MAX_TAGS} tags per resource", field="Tag")
    for key, value in req.tags.items():
        if not 0 < len(key) <= 128 or len(value) > 256 or key.lower().startswith("aws:"):
            raise InvalidRequest(f"invalid tag key or value: '{key[:40]}'", field="Tag")
    if len(req.requirements) > 4096 or len(req.rank) > 4096:
        raise InvalidRequest("placement expressions are limited to 4096 characters")
    check_ids("image", [req.image_id], "image")
    check_ids("security_group", req.security_group_ids, "security group")


async def launch(rt: Runtime, caller: Caller, req: LaunchRequest) -> list[InstanceView]:
    """Record ``req`` as pending instances and return them; the same token returns the same set.

    Launches that arrive together are written in one transaction (:class:`_Launches`), each
    checked and admitted in turn exactly as it would be alone.
    """
    _validate_request(req)
    if (req.requirements or req.rank) and rt.policy_factory is not None:
        rt.policy_factory.check_expressions(req.requirements, req.rank)  # refused, not stuck
    if req.client_token:
        existing = await _by_token(rt, caller, req.client_token)
        if existing:
            return existing
    try:
        made = await _launches(rt).launch(caller, req)
    except IntegrityError:
        if req.client_token:
            existing = await _by_token(rt, caller, req.client_token)
            if existing:
                return existing
        raise
    rt.wake_scheduler()
    return made


_BY_TOKEN: Final = select(m.Instance.id).where(
    m.Instance.owner_id == bindparam("owner"), m.Instance.client_token == bindparam("token")
)


async def _by_token(rt: Runtime, caller: Caller, token: str) -> list[InstanceView]:
    def read(conn: Connection) -> tuple[str, ...]:
        return tuple(conn.scalars(_BY_TOKEN, {"owner": caller.user_id, "token": token}))

    rids = await rt.reads.run(read)
    if not rids:
        return []
    page = await describe(rt, caller, InstanceFilter(ids=rids), limit=MAX_COUNT, include_old=True)
    return page.items


@dataclasses.dataclass(slots=True)
class _Ask:
    """One launch waiting for its batch: who asks, what, and (after the commit) what it made."""

    caller: Caller
    req: LaunchRequest
    outcome: list[InstanceView] | BrokerError | None = None


class _Launches:
    """Group commit of launches: one transaction for all that arrive while one is written.

    Each launch is checked, admitted against its quotas and written in turn inside the
    transaction, so quotas stay exact (a launch counts what the ones before it wrote). A launch
    whose checks fail gets its own error and writes nothing; the others go on. If the
    transaction itself fails, every launch in it is tried again alone, as before batching.
    """

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._commit: GroupCommit[_Ask] = GroupCommit(
            self._write, max_batch=100, delay=COMMIT_DELAY
        )

    async def launch(self, caller: Caller, req: LaunchRequest) -> list[InstanceView]:
        ask = _Ask(caller, req)
        try:
            await self._commit.submit(ask)
        except Exception:
            return await _insert_launch(self._rt, caller, req)
        if isinstance(ask.outcome, BrokerError):
            raise ask.outcome
        assert ask.outcome is not None
        return ask.outcome

    async def _write(self, asks: list[_Ask]) -> None:
        done: list[tuple[_Ask, list[InstanceView] | BrokerError]] = []
        async with self._rt.engine.begin() as conn:
            batch = _Batch(
                limited=await _limited(conn, [a.caller for a in asks]),
                leasing=networks.Leasing(expected=sum(a.req.max_count for a in asks)),
            )
            # a consistent lock order (groups, then users) across concurrent transactions
            for ask in sorted(asks, key=lambda a: (a.caller.group_id, a.caller.user_id)):
                try:
                    done.append((ask, await _launch_in(conn, ask.caller, ask.req, batch)))
                except BrokerError as exc:
                    done.append((ask, exc))
            await batch.flush(conn)
        for ask, outcome in done:
            ask.outcome = outcome


def _launches(rt: Runtime) -> _Launches:
    """The runtime's launch batcher (made on first use; one per runtime)."""
    found = rt.batchers.get("launch")
    if not isinstance(found, _Launches):
        found = rt.batchers["launch"] = _Launches(rt)
    return found


_LIMITED: Final = select(m.Quota.subject_id).where(
    m.Quota.subject_id.in_(bindparam("subjects", expanding=True))
)
_LOCK_USERS: Final = (
    select(m.User.id).where(m.User.id.in_(bindparam("ids", expanding=True))).with_for_update()
)
_LOCK_GROUPS: Final = (
    select(m.Group.id).where(m.Group.id.in_(bindparam("ids", expanding=True))).with_for_update()
)


async def _limited(conn: AsyncConnection, callers: Sequence[Caller]) -> frozenset[str]:
    """Which of the callers' users and groups have any quota, with all of them locked first.

    The locks are the ones :func:`broker.service.quotas.lock` takes for one launch, taken for
    the whole batch (users, then groups, each in id order, so batches never deadlock): a
    launch elsewhere that counts this user's instances waits for this batch to commit, and a
    quota made meanwhile cannot let it miss what this batch writes.
    """
    users = sorted({c.user_id for c in callers if c.user_id})
    groups = sorted({c.group_id for c in callers if c.user_id and c.group_id})
    if not users:
        return frozenset()
    if conn.dialect.name != "sqlite":  # SQLite has no row locks: its one writer is the lock
        await conn.execute(_LOCK_USERS, {"ids": users})
        if groups:
            await conn.execute(_LOCK_GROUPS, {"ids": groups})
    found = await conn.scalars(_LIMITED, {"subjects": [*users, *groups]})
    return frozenset(found.all())


@dataclasses.dataclass(slots=True)
class _Batch:
    """What the launches of one transaction share: lookups made once, rows written together.

    ``limited`` holds the users and groups with quotas (None: not looked up, check each one);
    a launch by anyone else is admitted without counting (no limit applies, as
    :func:`broker.service.quotas.admit_instances` would find; :func:`_limited` has locked
    their rows as it would). Instances are inserted together at the end, or before a launch
    whose quota must count them (quotas count instances, not interfaces or leases); their
    interfaces and leases after them at the end: ``leasing`` knows which addresses the
    transaction took, so the next launch's address plan needs no rows to see them.
    """

    limited: frozenset[str] | None = None
    images: dict[tuple[Caller, str], ImageView] = dataclasses.field(default_factory=dict)
    flavors: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
    nets: dict[tuple[Caller, str | None, str | None], NetworkView | None] = dataclasses.field(
        default_factory=dict
    )
    checked: dict[tuple[Any, ...], Any] = dataclasses.field(default_factory=dict)
    leasing: networks.Leasing = dataclasses.field(default_factory=networks.Leasing)
    tokens: dict[tuple[str, str], list[InstanceView]] = dataclasses.field(default_factory=dict)
    instances: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    groups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tags: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    events: list[EventRecord] = dataclasses.field(default_factory=list)

    def unlimited(self, caller: Caller) -> bool:
        return self.limited is not None and not (
            caller.user_id in self.limited or caller.group_id in self.limited
        )

    async def flush(self, conn: AsyncConnection) -> None:
        if self.instances:
            await bulk.insert_rows(conn, m.Instance, self.instances)
        await self.leasing.write(conn)  # interfaces and leases: after their instances
        if self.groups:
            await bulk.insert_rows(conn, m.InstanceSecurityGroup, self.groups)
        if self.tags:
            await bulk.insert_rows(conn, m.Tag, self.tags)
        await record(conn, self.events)


async def _insert_launch(rt: Runtime, caller: Caller, req: LaunchRequest) -> list[InstanceView]:
    """One launch in a transaction of its own."""
    async with rt.engine.begin() as conn:
        batch = _Batch()
        made = await _launch_in(conn, caller, req, batch)
        await batch.flush(conn)
    return made


async def _image(conn: AsyncConnection, caller: Caller, image_id: str, batch: _Batch) -> ImageView:
    image = batch.images.get((caller, image_id))
    if image is None:
        image = batch.images[caller, image_id] = await visible_image(conn, caller, image_id)
    if image.state != "available":
        raise InvalidRequest(f"the image '{image_id}' is {image.state}", resource="image")
    return image


_FLAVOR_SIZE: Final = select(m.Flavor.vcpus, m.Flavor.memory_mb, m.Flavor.disk_gb).where(
    m.Flavor.name == bindparam("name")
)


async def _flavor(conn: AsyncConnection, name: str, batch: _Batch) -> tuple[int, int, int]:
    found = batch.flavors.get(name)
    if found is None:
        row = (await conn.execute(_FLAVOR_SIZE, {"name": name})).first()
        if row is None:
            raise InvalidRequest(f"the flavor '{name}' does not exist", field="flavor")
        found = batch.flavors[name] = (row[0], row[1], row[2])
    return found


async def _launch_in(
    conn: AsyncConnection, caller: Caller, req: LaunchRequest, batch: _Batch
) -> list[InstanceView]:
    """Check, admit and write one launch in ``conn``'s transaction; its instance ids.

    Everything that can refuse the launch runs before its first write, so a refusal leaves
    the transaction as it found it (other launches of the batch go on).
    """
    if req.client_token:
        earlier = batch.tokens.get((caller.user_id, req.client_token))
        if earlier is not None:  # the same launch twice in one batch: the first one's ids
            return earlier
    await _image(conn, caller, req.image_id, batch)
    vcpus, memory_mb, disk_gb = await _flavor(conn, req.flavor, batch)
    key: tuple[Any, ...] = ("key", caller.user_id, req.key_name)
    if key not in batch.checked:
        batch.checked[key] = await _check_key(conn, caller, req.key_name)
    key_name: str | None = batch.checked[key]
    key = ("groups", caller.user_id, req.security_group_ids, req.security_group_names)
    if key not in batch.checked:
        batch.checked[key] = await _security_groups(conn, caller, req)
    groups: list[tuple[str, str]] = batch.checked[key]
    key = ("zone", req.zone)
    if key not in batch.checked:
        batch.checked[key] = await _check_zone(conn, req.zone)
    zone: str | None = batch.checked[key]
    where = (caller, req.network_id, zone)
    if where not in batch.nets:
        batch.nets[where] = await networks.pick_network(conn, caller, req.network_id, zone)
    net = batch.nets[where]
    if not caller.user_id or batch.unlimited(caller):
        count = req.max_count
    else:
        if batch.instances:  # what this batch admitted so far must count against the quota
            await bulk.insert_rows(conn, m.Instance, batch.instances)
            batch.instances.clear()
        count = await quotas.admit_instances(
            conn, caller, req.min_count, req.max_count, vcpus, memory_mb
        )
    reservation = ids.new_id("reservation")
    now = utcnow()
    rids = [ids.new_id("instance") for _ in range(count)]
    nics = await networks.plan_interfaces(conn, caller, net, rids, req.private_ip, batch.leasing)
    state = (State.HOLD if req.hold else State.PENDING).value
    rows: list[dict[str, Any]] = [
        {
            "id": rid,
            "owner_id": caller.user_id,
            "group_id": caller.group_id,
            "reservation_id": reservation,
            "launch_index": index,
            "client_token": req.client_token,
            "image_id": req.image_id,
            "flavor": req.flavor,
            "vcpus": vcpus,
            "memory_mb": memory_mb,
            "disk_gb": disk_gb,
            "state": state,
            "key_name": key_name,
            "user_data": req.user_data,
            "zone": zone,
            "hostname": req.hostname or rid,
            "requirements": req.requirements,
            "rank": req.rank,
            "hops": req.hops,
            "origin": req.origin,
            "created_at": now,
            "updated_at": now,
            "private_ip": nics.addresses.get(rid),
        }
        for index, rid in enumerate(rids)
    ]
    batch.instances.extend(rows)
    batch.groups.extend({"instance_id": rid, "group_id": g} for rid in rids for g, _ in groups)
    batch.tags.extend(
        {
            "resource_id": rid,
            "key": k,
            "value": v,
            "owner_id": caller.user_id,
            "resource_type": "instance",
        }
        for rid in rids
        for k, v in req.tags.items()
    )
    batch.events.extend(transition(rid, "", state, caller.name, "launch requested") for rid in rids)
    made = _written(rows, nics, tuple(groups), req.tags)
    if req.client_token:
        batch.tokens[caller.user_id, req.client_token] = made
    return made


def _written(
    rows: Sequence[Mapping[str, Any]],
    nics: networks.PlannedInterfaces,
    groups: tuple[tuple[str, str], ...],
    tags: Mapping[str, str],
) -> list[InstanceView]:
    """The launched instances as a describe reads them back (pending, not placed, by id)."""
    interfaces: dict[str, list[InterfaceView]] = {}
    for nic in nics.nics:
        view = InterfaceView(
            str(nic["id"]),
            str(nic["network_id"]),
            int(str(nic["device_index"])),
            str(nic["mac"]),
            str(nic["ip"]) if nic["ip"] is not None else None,
        )
        interfaces.setdefault(str(nic["instance_id"]), []).append(view)
    return [
        InstanceView(
            id=row["id"],
            owner_id=row["owner_id"],
            group_id=row["group_id"],
            reservation_id=row["reservation_id"],
            launch_index=row["launch_index"],
            client_token=row["client_token"],
            image_id=row["image_id"],
            flavor=row["flavor"],
            vcpus=row["vcpus"],
            memory_mb=row["memory_mb"],
            state=State(row["state"]),
            state_reason="",
            intent=None,
            target_id=None,
            key_name=row["key_name"],
            zone=row["zone"],
            hostname=row["hostname"],
            private_ip=row["private_ip"],
            public_ip=None,
            created_at=row["created_at"],
            launched_at=None,
            updated_at=row["updated_at"],
            tags=dict(tags),
            interfaces=tuple(interfaces.get(row["id"], ())),
            security_groups=groups,
        )
        for row in sorted(rows, key=lambda row: str(row["id"]))
    ]


async def _check_key(conn: AsyncConnection, caller: Caller, name: str | None) -> str | None:
    if name is None:
        return None
    found = await conn.scalar(
        select(m.KeyPair.id).where(m.KeyPair.owner_id == caller.user_id, m.KeyPair.name == name)
    )
    if found is None:
        raise NotFound(f"the key pair '{name}' does not exist", resource="key_pair", field=name)
    return name


async def _security_groups(
    conn: AsyncConnection, caller: Caller, req: LaunchRequest
) -> list[tuple[str, str]]:
    """(id, name) of each group the launch names, by id."""
    wanted_ids = set(req.security_group_ids)
    out: list[str] = []
    by_id: dict[str, str] = {}
    if wanted_ids or req.security_group_names:
        rows = (
            await conn.execute(
                select(m.SecurityGroup.id, m.SecurityGroup.name).where(
                    m.SecurityGroup.owner_id == caller.user_id,
                    or_(
                        m.SecurityGroup.id.in_(wanted_ids),
                        m.SecurityGroup.name.in_(req.security_group_names),
                    ),
                )
            )
        ).all()
        by_id = {r[0]: r[1] for r in rows}
        by_name = {r[1]: r[0] for r in rows}
        for gid in req.security_group_ids:
            if gid not in by_id:
                raise NotFound(
                    f"the security group '{gid}' does not exist",
                    resource="security_group",
                    field=gid,
                )
            out.append(gid)
        for name in req.security_group_names:
            if name not in by_name:
                raise NotFound(
                    f"the security group '{name}' does not exist",
                    resource="security_group",
                    field=name,
                )
            out.append(by_name[name])
    return [(gid, by_id[gid]) for gid in sorted(set(out))]


async def _check_zone(conn: AsyncConnection, zone: str | None) -> str | None:
    if zone is None:
        return None
    found = await conn.scalar(select(m.Cluster.id).where(m.Cluster.name == zone))
    if found is None:
        raise InvalidRequest(f"the availability zone '{zone}' does not exist", field="zone")
    return zone


def _conditions(flt: InstanceFilter) -> list[Any]:
    """Conditions for what ``flt`` asks beyond ids (the prepared statements hold the rest)."""
    if len(flt.ids) > MAX_COUNT:  # as many ids as one launch makes (launch reads them back)
        raise InvalidRequest(f"too many values for ids (at most {MAX_COUNT})")
    for name in (
        "image_ids",
        "flavors",
        "zones",
        "reservation_ids",
        "key_names",
        "private_ips",
        "target_ids",
        "owner_ids",
    ):
        check_values(name, getattr(flt, name))
    conds: list[Any] = []
    pairs = (
        (m.Instance.image_id, flt.image_ids),
        (m.Instance.flavor, flt.flavors),
        (m.Instance.reservation_id, flt.reservation_ids),
        (m.Instance.key_name, flt.key_names),
        (m.Instance.private_ip, flt.private_ips),
        (m.Instance.target_id, flt.target_ids),
        (m.Instance.owner_id, flt.owner_ids),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    if flt.zones:
        conds.append(_in_zones(flt.zones))
    if flt.states:
        conds.append(m.Instance.state.in_([s.value for s in flt.states]))
    conds.extend(tag_conditions(m.Instance.id, flt.tags))
    if flt.text:
        conds.append(_text_matches(flt.text))
    return conds


def _text_matches(text: str) -> Any:
    """Instances where ``text`` occurs in a searchable column, the target's name or a tag (the
    page statements join the target, so its name is a column here)."""
    if len(text) > MAX_TEXT:
        raise InvalidRequest(f"the search text is limited to {MAX_TEXT} characters", field="text")

    def has(column: Any) -> Any:
        return column.icontains(text, autoescape=True)

    columns = (
        m.Instance.id,
        m.Instance.hostname,
        m.Instance.image_id,
        m.Instance.flavor,
        m.Instance.private_ip,
        m.Instance.public_ip,
        m.Target.name,
    )
    tagged = exists().where(
        m.Tag.resource_id == m.Instance.id, or_(has(m.Tag.key), has(m.Tag.value))
    )
    return or_(*(has(c) for c in columns), tagged)


def _scope(caller: Caller) -> str:
    """Whose instances a caller sees: all (admin), the group's (group admin), their own."""
    if caller.is_admin:
        return "all"
    return "group" if caller.role == "groupadmin" else "owner"


_Page = Select[*tuple[Any, ...]]


def _page_statement(scope: str, by_ids: int, include_old: bool, after: bool) -> _Page:
    """A page query with its parameters as binds, built once (compiled once, cached keys)."""
    stmt = (
        select(*_COLUMNS)
        .outerjoin(m.Target, m.Target.id == m.Instance.target_id)
        .outerjoin(m.Cluster, m.Cluster.id == m.Target.cluster_id)
    )
    if scope == "group":
        stmt = stmt.where(m.Instance.group_id == bindparam("scope"))
    elif scope == "owner":
        stmt = stmt.where(m.Instance.owner_id == bindparam("scope"))
    if by_ids == 1:  # one id: a plain bind (an expanding one is re-rendered each time)
        stmt = stmt.where(m.Instance.id == bindparam("id"))
    elif by_ids:
        stmt = stmt.where(m.Instance.id.in_(bindparam("ids", expanding=True)))
    if not include_old:
        stmt = stmt.where(
            or_(m.Instance.state != State.DONE.value, m.Instance.ended_at >= bindparam("since"))
        )
    if after:
        stmt = stmt.where(m.Instance.id > bindparam("after"))
    return stmt.order_by(m.Instance.id).limit(bindparam("size"))


_PAGES: Final = MappingProxyType(
    {
        (scope, by_ids, old, after): _page_statement(scope, by_ids, old, after)
        for scope in ("all", "group", "owner")
        for by_ids in (0, 1, 2)
        for old, after in itertools.product((False, True), repeat=2)
    }
)


def _in_zones(zones: Sequence[str]) -> Any:
    """The zone asked for at launch, or else the cluster of the target it was placed on."""
    placed_in = (
        select(m.Target.id)
        .join(m.Cluster, m.Cluster.id == m.Target.cluster_id)
        .where(m.Cluster.name.in_(zones))
    )
    return or_(
        m.Instance.zone.in_(zones),
        and_(m.Instance.zone.is_(None), m.Instance.target_id.in_(placed_in)),
    )


async def describe(
    rt: Runtime,
    caller: Caller,
    flt: InstanceFilter = InstanceFilter(),
    *,
    limit: int | None = None,
    token: str | None = None,
    include_old: bool = False,
) -> Page[InstanceView]:
    """One page of the caller's instances matching ``flt``, ordered by id.

    One read: the page (with each instance's target and the cluster it is in), then its tags,
    interfaces and security groups, one statement each, all in one hand-off to the reader.
    """
    size = check_limit(limit, MAX_COUNT)
    after = decode_token(token)
    extra = _conditions(flt)
    scope = _scope(caller)
    stmt = _PAGES[scope, min(len(flt.ids), 2), include_old, after is not None]
    if extra:
        stmt = stmt.where(*extra)
    params: dict[str, Any] = {"size": size + 1}
    if scope != "all":
        params["scope"] = caller.group_id if scope == "group" else caller.user_id
    if len(flt.ids) == 1:
        params["id"] = flt.ids[0]
    elif flt.ids:
        params["ids"] = list(flt.ids)
    if not include_old:
        params["since"] = utcnow() - DONE_VISIBLE_FOR
    if after is not None:
        params["after"] = after
    items, more = await rt.reads.run(functools.partial(_read_page, stmt, params, size))
    return Page(items, encode_token(items[-1].id) if more and items else None)


def _related(one: bool) -> Executable:
    """Tags, interfaces and security groups of the instances in ``:rids``, as one statement.

    Each row is (what, instance id, a, b, c, d, n): a tag (key, value), an interface (id,
    network, mac, ip, device index) or a group (id, name).
    """
    rids: BindParameter[Any] = bindparam("rids", expanding=not one)

    def of(column: Any) -> Any:
        return column == rids if one else column.in_(rids)

    text, number = null().cast(String), null().cast(Integer)
    nic = m.NetworkInterface
    return union_all(
        select(literal("t"), m.Tag.resource_id, m.Tag.key, m.Tag.value, text, text, number).where(
            of(m.Tag.resource_id)
        ),
        select(
            literal("n"), nic.instance_id, nic.id, nic.network_id, nic.mac, nic.ip, nic.device_index
        ).where(of(nic.instance_id)),
        select(
            literal("g"),
            m.InstanceSecurityGroup.instance_id,
            m.SecurityGroup.id,
            m.SecurityGroup.name,
            text,
            text,
            number,
        )
        .join(m.SecurityGroup, m.SecurityGroup.id == m.InstanceSecurityGroup.group_id)
        .where(of(m.InstanceSecurityGroup.instance_id)),
    )


_RELATED: Final = _related(one=False)
_RELATED_ONE: Final = _related(one=True)


def _read_page(
    stmt: Executable, params: dict[str, Any], size: int, conn: Connection
) -> tuple[list[InstanceView], bool]:
    """The page ``stmt`` selects, with what belongs to each instance (runs on a reader)."""
    rows, more = split_page(list(conn.execute(stmt, params).all()), size)
    if not rows:
        return [], more
    tags: dict[str, dict[str, str]] = {}
    nics: dict[str, list[InterfaceView]] = {}
    sgs: dict[str, list[tuple[str, str]]] = {}
    if len(rows) == 1:
        related = conn.execute(_RELATED_ONE, {"rids": rows[0][0]})
    else:
        related = conn.execute(_RELATED, {"rids": [r[0] for r in rows]})
    for what, rid, a, b, c, d, n in related:
        if what == "t":
            tags.setdefault(rid, {})[a] = b
        elif what == "n":
            nics.setdefault(rid, []).append(InterfaceView(a, b, n, c, d))
        else:
            sgs.setdefault(rid, []).append((a, b))
    for found in nics.values():
        found.sort(key=lambda nic: nic.device_index)
    return [_view(r, tags, nics, sgs) for r in rows], more


def _addressed(
    found: Sequence[InterfaceView], kind: str | None, ip: str | None
) -> tuple[InterfaceView, ...]:
    """An instance on a peer or in a public-cloud region has the address that target gave it
    (the instance's private_ip, as the monitor observes it) on its primary interface, not the
    lease made here at launch."""
    if kind not in ("peer", "region") or not ip:
        return tuple(found)
    return tuple(dataclasses.replace(nic, ip=ip) if nic.device_index == 0 else nic for nic in found)


def _view(
    r: Any,
    tags: Mapping[str, Mapping[str, str]],
    nics: Mapping[str, list[InterfaceView]],
    sgs: Mapping[str, list[tuple[str, str]]],
) -> InstanceView:
    rid = r[0]
    return InstanceView(
        rid,
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        State(r[10]),
        r[11],
        r[12],
        r[13],
        r[14],
        r[15],
        r[16],
        r[17],
        r[18],
        r[19],
        r[20],
        r[21],
        tags=tags.get(rid, {}),
        interfaces=_addressed(nics.get(rid, ()), r[22], r[17]),
        security_groups=tuple(sgs.get(rid, ())),
        target_kind=r[22],
        target_name=r[23],
        target_zone=r[24],
    )


async def get(rt: Runtime, caller: Caller, rid: str) -> InstanceView:
    check_ids("instance", [rid], "instance")
    page = await describe(rt, caller, InstanceFilter(ids=(rid,)), limit=1)
    if not page.items:
        raise NotFound(f"the instance '{rid}' does not exist", resource="instance", field=rid)
    return page.items[0]


async def _owned(
    conn: AsyncConnection, caller: Caller, rids: Sequence[str]
) -> dict[str, tuple[State, str | None, str | None, str]]:
    """state, target, backend ref and owner of each id, after checking the caller may act."""
    check_ids("instance", rids, "instance")
    rows = (
        await conn.execute(
            select(
                m.Instance.id,
                m.Instance.state,
                m.Instance.target_id,
                m.Instance.backend_ref,
                m.Instance.owner_id,
                m.Instance.group_id,
            )
            .where(m.Instance.id.in_(rids))
            .with_for_update()
        )
    ).all()
    found = {r[0]: r for r in rows}
    out: dict[str, tuple[State, str | None, str | None, str]] = {}
    for rid in rids:
        row = found.get(rid)
        if row is None:
            raise NotFound(f"the instance '{rid}' does not exist", resource="instance", field=rid)
        authorize(caller, Ownership(row[4], row[5]), change=True, what="instance", rid=rid)
        out[rid] = (State(row[1]), row[2], row[3], row[4])
    return out


async def act(
    rt: Runtime, caller: Caller, rids: Sequence[str], action: Action, *, force: bool = False
) -> list[StateChange]:
    """Ask for ``action`` on every instance in ``rids``: all of them change, or none does."""
    if not rids:
        raise InvalidRequest("at least one instance id is needed", field="InstanceId")
    if action is Action.TERMINATE:
        return await terminate(rt, caller, rids)
    if action not in ACTION_MOVES:  # launch and migrate have their own service functions
        raise InvalidRequest(f"'{action.value}' is not an action on an instance", field="action")
    allowed, moving_to = ACTION_MOVES[action]
    intent = Action.POWEROFF if action is Action.STOP and force else action
    changes: list[StateChange] = []
    events: list[EventRecord] = []
    now = utcnow()
    async with rt.engine.begin() as conn:
        current = await _owned(conn, caller, rids)
        for rid in dict.fromkeys(rids):
            state = current[rid][0]
            if _already(action, state):
                changes.append(StateChange(rid, state, state))
                continue
            restart = action is Action.START and state is State.STOPPED
            if state not in allowed and not restart:
                raise InvalidState(
                    f"the instance '{rid}' is {state.value}; it cannot be asked to {action.value}",
                    resource=rid,
                    state=state.value,
                )
            new = moving_to or state
            values: dict[str, Any] = {"intent": intent.value, "intent_at": now, "updated_at": now}
            if restart:
                new, values = (
                    State.PENDING,
                    {"intent": None, "target_id": None, "backend_ref": None, "updated_at": now},
                )
            check_move(state, new, resource=rid)
            values["state"] = new.value
            await conn.execute(update(m.Instance).where(m.Instance.id == rid).values(**values))
            events.append(transition(rid, state.value, new.value, caller.name, action.value))
            changes.append(StateChange(rid, state, new))
        await record(conn, events)
    rt.wake_scheduler()
    return changes


def _already(action: Action, state: State) -> bool:
    """Asking a stopped instance to stop (or a running one to start) changes nothing."""
    return (
        action in (Action.STOP, Action.POWEROFF) and state in (State.POWEROFF, State.STOPPED)
    ) or (action is Action.START and state in (State.RUNNING, State.BOOT))


async def terminate(rt: Runtime, caller: Caller, rids: Sequence[str]) -> list[StateChange]:
    changes: list[StateChange] = []
    events: list[EventRecord] = []
    now = utcnow()
    async with rt.engine.begin() as conn:
        current = await _owned(conn, caller, rids)
        finished: list[str] = []
        for rid in dict.fromkeys(rids):
            state, target, ref, _owner = current[rid]
            if state is State.DONE:
                changes.append(StateChange(rid, state, state))
                continue
            if state is State.EPILOG:
                changes.append(StateChange(rid, state, state))
                continue
            if target is None or (
                ref is None and state in (State.PENDING, State.HOLD, State.FAILED, State.STOPPED)
            ):
                new = State.DONE
                finished.append(rid)
                values: dict[str, Any] = {"state": new.value, "intent": None, "ended_at": now}
            else:
                new = State.EPILOG
                values = {"state": new.value, "intent": Action.TERMINATE.value, "intent_at": now}
            check_move(state, new, resource=rid)
            await conn.execute(
                update(m.Instance).where(m.Instance.id == rid).values(updated_at=now, **values)
            )
            events.append(transition(rid, state.value, new.value, caller.name, "terminate"))
            changes.append(StateChange(rid, state, new))
        if finished:
            await release(conn, finished)
        await record(conn, events)
    rt.wake_scheduler()
    return changes


async def release(conn: AsyncConnection, rids: Sequence[str]) -> None:
    """Free what finished instances held: leases, addresses, attached volumes."""
    await networks.release_interfaces(conn, rids)
    await conn.execute(
        update(m.Address)
        .where(m.Address.instance_id.in_(rids))
        .values(instance_id=None, association_id=None)
    )
    await conn.execute(
        update(m.Volume)
        .where(m.Volume.instance_id.in_(rids), m.Volume.delete_on_termination)
        .values(state="deleting", instance_id=None, attach_state=None)
    )
    await conn.execute(
        update(m.Volume)
        .where(m.Volume.instance_id.in_(rids))
        .values(state="available", instance_id=None, attach_state=None, device=None)
    )


async def console(rt: Runtime, caller: Caller, rid: str) -> tuple[str, dt.datetime]:
    """The instance's console output, read from its target (empty before it first boots)."""
    view = await get(rt, caller, rid)
    async with rt.engine.connect() as conn:
        ref = await conn.scalar(select(m.Instance.backend_ref).where(m.Instance.id == rid))
        saved = await conn.scalar(select(m.Instance.console).where(m.Instance.id == rid))
    text = saved or ""
    if view.target_id and ref and rt.backends is not None and view.state is not State.DONE:
        try:
            backend = await rt.backends.get(view.target_id)
            text = await asyncio.wait_for(backend.console(ref), timeout=10)
        except Exception:
            text = saved or ""
    return text, utcnow()


async def user_data(rt: Runtime, caller: Caller, rid: str) -> bytes | None:
    await get(rt, caller, rid)
    async with rt.engine.connect() as conn:
        return await conn.scalar(select(m.Instance.user_data).where(m.Instance.id == rid))


async def modify(
    rt: Runtime,
    caller: Caller,
    rid: str,
    *,
    flavor: str | None = None,
    user_data: bytes | None = None,
) -> None:
    """Change the flavor or user data of a powered-off instance."""
    if user_data is not None and len(user_data) > MAX_USER_DATA:
        raise InvalidRequest("user data is limited to 16384 bytes", field="UserData")
    async with rt.engine.begin() as conn:
        state = (await _owned(conn, caller, [rid]))[rid][0]
        if state not in (State.POWEROFF, State.STOPPED):
            raise InvalidState(
                f"the instance '{rid}' is {state.value}; it must be stopped",
                resource=rid,
                state=state.value,
            )
        values: dict[str, Any] = {"updated_at": utcnow()}
        if flavor is not None:
            row = (
                await conn.execute(
                    select(m.Flavor.vcpus, m.Flavor.memory_mb, m.Flavor.disk_gb).where(
                        m.Flavor.name == flavor
                    )
                )
            ).first()
            if row is None:
                raise InvalidRequest(f"the flavor '{flavor}' does not exist", field="flavor")
            values.update(flavor=flavor, vcpus=row[0], memory_mb=row[1], disk_gb=row[2])
        if user_data is not None:
            values["user_data"] = user_data
        await conn.execute(update(m.Instance).where(m.Instance.id == rid).values(**values))
        await record(
            conn,
            [
                EventRecord(
                    rid,
                    "audit",
                    caller.name,
                    message="modified",
                    detail={k: v for k, v in values.items() if k in ("flavor",)} or None,
                )
            ],
        )
