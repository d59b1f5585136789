"""Instances: launch (idempotent per client token), lifecycle actions, describe, console.

Launch validates everything first, then writes the instances as pending (with their interfaces,
leases, security groups and tags) in one transaction and wakes the scheduler. Actions move the
instance through :mod:`broker.states` and leave an ``intent`` for the scheduler to carry out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize
from broker.errors import InvalidRequest, InvalidState, NotFound
from broker.events import EventRecord, record, transition
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
    tags_for,
)
from broker.service.images import visible_image
from broker.states import ACTION_MOVES, Action, State, check_move

MAX_COUNT = 1000
MAX_USER_DATA = 16 * 1024
DONE_VISIBLE_FOR = dt.timedelta(hours=1)
MAX_TAGS = 50


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
)


_VIEW_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceView))[:22]


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
    """Record ``req`` as pending instances and return them; the same token returns the same set."""
    _validate_request(req)
    if req.client_token:
        existing = await _by_token(rt, caller, req.client_token)
        if existing:
            return existing
    try:
        rids = await _insert_launch(rt, caller, req)
    except IntegrityError:
        if req.client_token:
            existing = await _by_token(rt, caller, req.client_token)
            if existing:
                return existing
        raise
    rt.wake_scheduler()
    return (await describe(rt, caller, InstanceFilter(ids=tuple(rids)), limit=MAX_COUNT)).items


async def _by_token(rt: Runtime, caller: Caller, token: str) -> list[InstanceView]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(m.Instance.id).where(
                m.Instance.owner_id == caller.user_id, m.Instance.client_token == token
            )
        )
        rids = tuple(r[0] for r in rows)
    if not rids:
        return []
    page = await describe(rt, caller, InstanceFilter(ids=rids), limit=MAX_COUNT, include_old=True)
    return page.items


async def _insert_launch(rt: Runtime, caller: Caller, req: LaunchRequest) -> list[str]:
    async with rt.engine.begin() as conn:
        image = await visible_image(conn, caller, req.image_id)
        if image.state != "available":
            raise InvalidRequest(f"the image '{req.image_id}' is {image.state}", resource="image")
        flavor = (
            await conn.execute(
                select(m.Flavor.vcpus, m.Flavor.memory_mb, m.Flavor.disk_gb).where(
                    m.Flavor.name == req.flavor
                )
            )
        ).first()
        if flavor is None:
            raise InvalidRequest(f"the flavor '{req.flavor}' does not exist", field="flavor")
        key_name = await _check_key(conn, caller, req.key_name)
        groups = await _security_groups(conn, caller, req)
        zone = await _check_zone(conn, req.zone)
        net = await networks.pick_network(conn, caller, req.network_id, zone)
        count = await quotas.admit_instances(
            conn, caller, req.min_count, req.max_count, flavor[0], flavor[1]
        )
        reservation = ids.new_id("reservation")
        now = utcnow()
        rids = [ids.new_id("instance") for _ in range(count)]
        rows: list[dict[str, Any]] = []
        for index, rid in enumerate(rids):
            rows.append(
                {
                    "id": rid,
                    "owner_id": caller.user_id,
                    "group_id": caller.group_id,
                    "reservation_id": reservation,
                    "launch_index": index,
                    "client_token": req.client_token,
                    "image_id": req.image_id,
                    "flavor": req.flavor,
                    "vcpus": flavor[0],
                    "memory_mb": flavor[1],
                    "disk_gb": flavor[2],
                    "state": (State.HOLD if req.hold else State.PENDING).value,
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
                }
            )
        nics = await networks.plan_interfaces(conn, caller, net, rids, req.private_ip)
        for row in rows:
            row["private_ip"] = nics.addresses.get(row["id"])
        await conn.execute(insert(m.Instance), rows)
        await networks.insert_interfaces(conn, nics)
        if groups:
            await conn.execute(
                insert(m.InstanceSecurityGroup),
                [{"instance_id": rid, "group_id": g} for rid in rids for g in groups],
            )
        if req.tags:
            await conn.execute(
                insert(m.Tag),
                [
                    {
                        "resource_id": rid,
                        "key": k,
                        "value": v,
                        "owner_id": caller.user_id,
                        "resource_type": "instance",
                    }
                    for rid in rids
                    for k, v in req.tags.items()
                ],
            )
        state = (State.HOLD if req.hold else State.PENDING).value
        await record(
            conn, [transition(rid, "", state, caller.name, "launch requested") for rid in rids]
        )
    return rids


async def _check_key(conn: AsyncConnection, caller: Caller, name: str | None) -> str | None:
    if name is None:
        return None
    found = await conn.scalar(
        select(m.KeyPair.id).where(m.KeyPair.owner_id == caller.user_id, m.KeyPair.name == name)
    )
    if found is None:
        raise NotFound(f"the key pair '{name}' does not exist", resource="key_pair", field=name)
    return name


async def _security_groups(conn: AsyncConnection, caller: Caller, req: LaunchRequest) -> list[str]:
    wanted_ids = set(req.security_group_ids)
    out: list[str] = []
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
        by_id = {r[0] for r in rows}
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
    return sorted(set(out))


async def _check_zone(conn: AsyncConnection, zone: str | None) -> str | None:
    if zone is None:
        return None
    found = await conn.scalar(select(m.Cluster.id).where(m.Cluster.name == zone))
    if found is None:
        raise InvalidRequest(f"the availability zone '{zone}' does not exist", field="zone")
    return zone


def _conditions(
    caller: Caller, flt: InstanceFilter, include_old: bool, now: dt.datetime
) -> list[Any]:
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
    if not caller.is_admin:
        if caller.role == "groupadmin":
            conds.append(m.Instance.group_id == caller.group_id)
        else:
            conds.append(m.Instance.owner_id == caller.user_id)
    pairs = (
        (m.Instance.id, flt.ids),
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
    if not include_old:
        conds.append(
            or_(m.Instance.state != State.DONE.value, m.Instance.ended_at >= now - DONE_VISIBLE_FOR)
        )
    conds.extend(tag_conditions(m.Instance.id, flt.tags))
    return conds


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
    """One page of the caller's instances matching ``flt``, ordered by id."""
    size = check_limit(limit, MAX_COUNT)
    after = decode_token(token)
    conds = _conditions(caller, flt, include_old, utcnow())
    if after is not None:
        conds.append(m.Instance.id > after)
    stmt = (
        select(*_COLUMNS)
        .outerjoin(m.Target, m.Target.id == m.Instance.target_id)
        .where(*conds)
        .order_by(m.Instance.id)
        .limit(size + 1)
    )
    async with rt.reader.connect() as conn:
        rows, more = split_page(list((await conn.execute(stmt)).all()), size)
        rids = [r[0] for r in rows]
        tags = await tags_for(conn, rids)
        nics = await _interfaces(conn, rids)
        sgs = await _groups_of(conn, rids)
    items = [_view(r, tags, nics, sgs) for r in rows]
    return Page(items, encode_token(rids[-1]) if more and rids else None)


async def _interfaces(conn: AsyncConnection, rids: Sequence[str]) -> dict[str, list[InterfaceView]]:
    out: dict[str, list[InterfaceView]] = {}
    if not rids:
        return out
    stmt = (
        select(
            m.NetworkInterface.instance_id,
            m.NetworkInterface.id,
            m.NetworkInterface.network_id,
            m.NetworkInterface.device_index,
            m.NetworkInterface.mac,
            m.NetworkInterface.ip,
        )
        .where(m.NetworkInterface.instance_id.in_(rids))
        .order_by(m.NetworkInterface.device_index)
    )
    for iid, nid, net, index, mac, ip in await conn.execute(stmt):
        out.setdefault(str(iid), []).append(InterfaceView(nid, net, index, mac, ip))
    return out


async def _groups_of(
    conn: AsyncConnection, rids: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    if not rids:
        return out
    stmt = (
        select(m.InstanceSecurityGroup.instance_id, m.SecurityGroup.id, m.SecurityGroup.name)
        .join(m.SecurityGroup, m.SecurityGroup.id == m.InstanceSecurityGroup.group_id)
        .where(m.InstanceSecurityGroup.instance_id.in_(rids))
    )
    for iid, gid, name in await conn.execute(stmt):
        out.setdefault(iid, []).append((gid, name))
    return out


def _view(
    r: Any,
    tags: Mapping[str, Mapping[str, str]],
    nics: Mapping[str, list[InterfaceView]],
    sgs: Mapping[str, list[tuple[str, str]]],
) -> InstanceView:
    rid = r[0]
    base = dict(zip(_VIEW_FIELDS, r[:22], strict=True))
    base["state"] = State(base["state"])
    return InstanceView(
        **base,
        tags=tags.get(rid, {}),
        interfaces=tuple(nics.get(rid, ())),
        security_groups=tuple(sgs.get(rid, ())),
        target_kind=r[22],
        target_name=r[23],
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

