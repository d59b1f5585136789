"""Images: the central catalog, with owners, sharing (group, public, launch permissions)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import Caller, Ownership, authorize, require_admin
from broker.errors import InvalidRequest, InvalidState, NotFound
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service import quotas
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

KINDS = ("disk", "kernel")


@dataclasses.dataclass(frozen=True, slots=True)
class ImageView:
    id: str
    name: str
    description: str
    owner_id: str | None
    visibility: str
    state: str
    kind: str
    hypervisor: str
    arch: str
    location: str
    root_device: str
    size_bytes: int
    created_at: dt.datetime
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageSpec:
    name: str
    kind: str = "disk"
    location: str = ""
    kernel: str = ""
    ramdisk: str = ""
    cmdline: str = ""
    description: str = ""
    hypervisor: str = ""
    arch: str = "x86_64"
    root_device: str = "/dev/vda"
    visibility: str = "private"
    size_bytes: int = 0
    checksum: str = ""
    min_memory_mb: int = 0
    mappings: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageFilter:
    ids: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()  # user ids, or "self"
    executable_by: tuple[str, ...] = ()  # user ids, "self" or "all"
    names: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    visibility: tuple[str, ...] = ()
    tags: tuple[TagFilter, ...] = ()


_COLS = (
    m.Image.id,
    m.Image.name,
    m.Image.description,
    m.Image.owner_id,
    m.Image.visibility,
    m.Image.state,
    m.Image.kind,
    m.Image.hypervisor,
    m.Image.arch,
    m.Image.location,
    m.Image.root_device,
    m.Image.size_bytes,
    m.Image.created_at,
)


def _visible(caller: Caller) -> Any:
    if caller.is_admin:
        return m.Image.id.is_not(None)
    granted = select(m.LaunchPermission.image_id).where(
        m.LaunchPermission.grantee.in_([caller.user_id, caller.group_id, "all"])
    )
    return or_(
        m.Image.owner_id == caller.user_id,
        m.Image.visibility == "public",
        (m.Image.visibility == "group") & (m.Image.group_id == caller.group_id),
        m.Image.id.in_(granted),
    )


_ONE_IMAGE: Final = select(*_COLS).where(
    m.Image.id == bindparam("image_id"), m.Image.state != "deregistered"
)
#: an image a user may launch, as :func:`_visible` says, with the caller as binds (built once)
_ONE_VISIBLE: Final = _ONE_IMAGE.where(
    or_(
        m.Image.owner_id == bindparam("user"),
        m.Image.visibility == "public",
        (m.Image.visibility == "group") & (m.Image.group_id == bindparam("group")),
        m.Image.id.in_(
            select(m.LaunchPermission.image_id).where(
                m.LaunchPermission.grantee.in_(bindparam("grantees", expanding=True))
            )
        ),
    )
)


async def visible_image(conn: AsyncConnection, caller: Caller, image_id: str) -> ImageView:
    if caller.is_admin:
        found = await conn.execute(_ONE_IMAGE, {"image_id": image_id})
    else:
        found = await conn.execute(
            _ONE_VISIBLE,
            {
                "image_id": image_id,
                "user": caller.user_id,
                "group": caller.group_id,
                "grantees": [caller.user_id, caller.group_id, "all"],
            },
        )
    row = found.first()
    if row is None:
        raise NotFound(f"the image '{image_id}' does not exist", resource="image", field=image_id)
    return ImageView(*row)  # type: ignore[call-arg]


def _check_spec(spec: ImageSpec) -> None:
    if not spec.name or len(spec.name) > 128:
        raise InvalidRequest("an image needs a name of 1 to 128 characters", field="Name")
    if spec.kind not in KINDS:
        raise InvalidRequest(f"image kind must be one of {', '.join(KINDS)}", field="kind")
    if spec.kind == "kernel" and not spec.kernel:
        raise InvalidRequest("a kernel image needs a kernel", field="kernel")
    if spec.kind == "disk" and not spec.location:
        raise InvalidRequest("a disk image needs a location", field="ImageLocation")
    if spec.visibility not in ("private", "group", "public"):
        raise InvalidRequest("visibility must be private, group or public", field="visibility")
    if spec.hypervisor not in ("", "kvm", "xen", "vmware", "ec2"):
        raise InvalidRequest(f"unknown hypervisor '{spec.hypervisor}'", field="hypervisor")
    if spec.arch not in ("x86_64", "i386", "arm64", "aarch64"):
        raise InvalidRequest(f"unknown architecture '{spec.arch}'", field="Architecture")


async def register(
    rt: Runtime, caller: Caller, spec: ImageSpec, *, source_instance_id: str | None = None
) -> ImageView:
    _check_spec(spec)
    if spec.visibility == "public":
        require_admin(caller)
    iid = ids.new_id("image")
    async with rt.engine.begin() as conn:
        await quotas.admit(conn, caller, "images", 1, "image")
        await conn.execute(
            insert(m.Image).values(
                id=iid,
                owner_id=caller.user_id or None,
                group_id=caller.group_id or None,
                source_instance_id=source_instance_id,
                **dataclasses.asdict(spec),
            )
        )
        await record(conn, [audit(iid, caller.name, "image registered", name=spec.name)])
    return await get(rt, caller, iid)


async def get(rt: Runtime, caller: Caller, image_id: str) -> ImageView:
    check_ids("image", [image_id], "image")
    async with rt.engine.connect() as conn:
        view = await visible_image(conn, caller, image_id)
        tags = await tags_for(conn, [image_id])
    return dataclasses.replace(view, tags=tags.get(image_id, {}))


async def describe(
    rt: Runtime,
    caller: Caller,
    flt: ImageFilter = ImageFilter(),
    *,
    limit: int | None = None,
    token: str | None = None,
) -> Page[ImageView]:
    size = check_limit(limit)
    after = decode_token(token)
    conds: list[Any] = [_visible(caller), m.Image.state != "deregistered"]
    for name in ("ids", "owners", "executable_by", "names", "states", "architectures"):
        check_values(name, getattr(flt, name))
    if flt.ids:
        conds.append(m.Image.id.in_(flt.ids))
    if flt.owners:
        owners = [caller.user_id if o == "self" else o for o in flt.owners]
        conds.append(m.Image.owner_id.in_(owners))
    if flt.executable_by:
        who = {caller.user_id if e == "self" else e for e in flt.executable_by}
        grantees = who | {caller.group_id} if caller.user_id in who else who
        granted = select(m.LaunchPermission.image_id).where(
            m.LaunchPermission.grantee.in_(grantees)
        )
        parts: list[Any] = [m.Image.id.in_(granted)]
        if "all" in who:
            parts.append(m.Image.visibility == "public")
        if caller.user_id in who:
            parts.append(m.Image.owner_id == caller.user_id)
        conds.append(or_(*parts))
    pairs: tuple[tuple[Any, tuple[str, ...]], ...] = (
        (m.Image.name, flt.names),
        (m.Image.state, flt.states),
        (m.Image.arch, flt.architectures),
        (m.Image.visibility, flt.visibility),
    )
    for column, values in pairs:
        if values:
            conds.append(column.in_(values))
    conds.extend(tag_conditions(m.Image.id, flt.tags))
    if after is not None:
        conds.append(m.Image.id > after)
    stmt = select(*_COLS).where(*conds).order_by(m.Image.id).limit(size + 1)
    async with rt.engine.connect() as conn:
        rows, more = split_page(list((await conn.execute(stmt)).all()), size)
        tags = await tags_for(conn, [r[0] for r in rows])
    items = [ImageView(*r, tags=tags.get(r[0], {})) for r in rows]  # type: ignore[call-arg]
    return Page(items, encode_token(items[-1].id) if more else None)


async def _owned(conn: AsyncConnection, caller: Caller, image_id: str) -> tuple[str, str]:
    check_ids("image", [image_id], "image")
    row = (
        await conn.execute(
            select(m.Image.owner_id, m.Image.group_id, m.Image.visibility, m.Image.state).where(
                m.Image.id == image_id, m.Image.state != "deregistered"
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"the image '{image_id}' does not exist", resource="image", field=image_id)
    grantees = frozenset(
        (
            await conn.scalars(
                select(m.LaunchPermission.grantee).where(m.LaunchPermission.image_id == image_id)
            )
        ).all()
    )
    authorize(
        caller, Ownership(row[0], row[1], row[2], grantees), change=True, what="image", rid=image_id
    )
    return row[2], row[3]


async def deregister(rt: Runtime, caller: Caller, image_id: str) -> None:
    async with rt.engine.begin() as conn:
        await _owned(conn, caller, image_id)
        await conn.execute(
            update(m.Image).where(m.Image.id == image_id).values(state="deregistered")
        )
        await conn.execute(
            delete(m.LaunchPermission).where(m.LaunchPermission.image_id == image_id)
        )
        await record(conn, [audit(image_id, caller.name, "image deregistered")])


async def launch_permissions(rt: Runtime, caller: Caller, image_id: str) -> list[str]:
    async with rt.engine.connect() as conn:
        visibility, _ = await _owned(conn, caller, image_id)
        rows = (
            await conn.scalars(
                select(m.LaunchPermission.grantee).where(m.LaunchPermission.image_id == image_id)
            )
        ).all()
    grantees = sorted(rows)
    if visibility == "public" and "all" not in grantees:
        grantees.append("all")
    return grantees


async def modify_launch_permissions(
    rt: Runtime,
    caller: Caller,
    image_id: str,
    *,
    add: Sequence[str] = (),
    remove: Sequence[str] = (),
) -> None:
    """Grant or revoke launch permission to users (their ids), groups (g-...) or "all"."""
    async with rt.engine.begin() as conn:
        await _owned(conn, caller, image_id)
        for grantee in [*add, *remove]:
            if grantee == "all":
                continue
            if grantee.startswith("g-"):
                found = await conn.scalar(select(m.Group.id).where(m.Group.id == grantee))
            else:
                found = await conn.scalar(select(m.User.id).where(m.User.id == grantee))
            if found is None:
                raise InvalidRequest(f"unknown user or group '{grantee}'", field="UserId")
        if remove:
            await conn.execute(
                delete(m.LaunchPermission).where(
                    m.LaunchPermission.image_id == image_id, m.LaunchPermission.grantee.in_(remove)
                )
            )
            if "all" in remove:
                await conn.execute(
                    update(m.Image).where(m.Image.id == image_id).values(visibility="private")
                )
        existing = set(
            (
                await conn.scalars(
                    select(m.LaunchPermission.grantee).where(
                        m.LaunchPermission.image_id == image_id
                    )
                )
            ).all()
        )
        new = [g for g in dict.fromkeys(add) if g not in existing]
        if new:
            await conn.execute(
                insert(m.LaunchPermission), [{"image_id": image_id, "grantee": g} for g in new]
            )
        await record(
            conn,
            [
                audit(
                    image_id,
                    caller.name,
                    "launch permissions changed",
                    add=list(add),
                    remove=list(remove),
                )
            ],
        )


async def create_from_instance(
    rt: Runtime, caller: Caller, instance_id: str, name: str, description: str = ""
) -> ImageView:
    """Register an image from a powered-off instance (its disk becomes the image's source)."""
    check_ids("instance", [instance_id], "instance")
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    m.Instance.state,
                    m.Instance.owner_id,
                    m.Instance.group_id,
                    m.Image.kind,
                    m.Image.location,
                    m.Image.kernel,
                    m.Image.ramdisk,
                    m.Image.cmdline,
                    m.Image.hypervisor,
                    m.Image.arch,
                    m.Image.root_device,
                )
                .join(m.Image, m.Image.id == m.Instance.image_id)
                .where(m.Instance.id == instance_id)
            )
        ).first()
    if row is None:
        raise NotFound(
            f"the instance '{instance_id}' does not exist", resource="instance", field=instance_id
        )
    authorize(caller, Ownership(row[1], row[2]), change=True, what="instance", rid=instance_id)
    if row[0] not in ("poweroff", "stopped"):
        raise InvalidState(
            f"the instance '{instance_id}' is {row[0]}; it must be stopped",
            resource=instance_id,
            state=row[0],
        )
    spec = ImageSpec(
        name=name,
        description=description,
        kind=row[3],
        location=row[4],
        kernel=row[5],
        ramdisk=row[6],
        cmdline=row[7],
        hypervisor=row[8],
        arch=row[9],
        root_device=row[10],
    )
    return await register(rt, caller, spec, source_instance_id=instance_id)
