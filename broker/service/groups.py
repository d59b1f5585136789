"""Groups as first-class principals: who may create, see and delete them, and who may move users.

Decides:

* A group's name follows the user name rules (:data:`broker.service.users.NAME`).
* Only an admin creates, deletes, moves a user to another group or changes a role. A group
  admin may *see* their own group and its members, but not change membership or roles: moving
  a user crosses two groups (it hands the user's resources to the other group's admins and
  counts them against its quota), and promoting someone is a grant of power, so both are the
  operator's decisions. A plain user sees only their own group, without the member list.
* A group is deleted only when empty: no user (enabled or not: a deleted user keeps its row,
  move it first) and no resource recorded against it. Its quotas and the launch permissions
  granted to it go with it.
* Moving a user moves everything the user owns (instances, volumes, images) to the new group,
  so group quotas, group visibility and group admins follow the owner; usage already recorded
  keeps the group it was recorded under. A move is an operator's act and is not quota-checked:
  quotas stop new launches, they never take running work away.
* Nobody changes their own role, so the last admin cannot lock everyone out by mistake.

Every change is an audit event written in the same transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import ROLES, Caller, require_admin
from broker.errors import AlreadyExists, InvalidRequest, InvalidState, NotFound
from broker.events import audit, record
from broker.runtime import Runtime
from broker.service.users import NAME, UserView, get_user


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    id: str
    name: str
    role: str
    enabled: bool


@dataclasses.dataclass(frozen=True, slots=True)
class GroupView:
    id: str
    name: str
    created_at: dt.datetime
    members: int
    users: tuple[Member, ...] = ()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest(
            f"invalid group name '{str(name)[:64]}': use letters, digits, '_', '.', '@', '-'",
            field="name",
        )


def _not_found(name: str) -> NotFound:
    return NotFound(f"the group '{name[:64]}' does not exist", resource="group", field=name[:64])


async def _find(conn: AsyncConnection, name_or_id: str) -> tuple[str, str, dt.datetime]:
    row = (
        await conn.execute(
            select(m.Group.id, m.Group.name, m.Group.created_at).where(
                (m.Group.name == name_or_id) | (m.Group.id == name_or_id)
            )
        )
    ).first()
    if row is None:
        raise _not_found(name_or_id)
    return row[0], row[1], row[2]


async def create_group(rt: Runtime, caller: Caller, name: str) -> GroupView:
    require_admin(caller)
    _check_name(name)
    gid = ids.new_id("group")
    async with rt.engine.begin() as conn:
        if await conn.scalar(select(m.Group.id).where(m.Group.name == name)):
            raise AlreadyExists(f"a group named '{name}' exists", resource="group")
        await conn.execute(insert(m.Group).values(id=gid, name=name))
        await record(conn, [audit(gid, caller.name, "group created", name=name)])
    return await get_group(rt, caller, gid)


async def list_groups(rt: Runtime, caller: Caller) -> list[GroupView]:
    """Every group with its member count (admins); others get only their own group."""
    counts = (
        select(m.User.group_id, func.count().label("n"))
        .where(m.User.enabled.is_(True))
        .group_by(m.User.group_id)
        .subquery()
    )
    stmt = (
        select(m.Group.id, m.Group.name, m.Group.created_at, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.group_id == m.Group.id)
        .order_by(m.Group.name)
    )
    if not caller.is_admin:
        stmt = stmt.where(m.Group.id == caller.group_id)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [GroupView(r[0], r[1], r[2], int(r[3])) for r in rows]


async def get_group(rt: Runtime, caller: Caller, name_or_id: str) -> GroupView:
    """One group; admins and the group's own group admins also see its members."""
    async with rt.engine.connect() as conn:
        gid, name, created = await _find(conn, name_or_id)
        if not caller.is_admin and gid != caller.group_id:
            raise _not_found(name_or_id)
        rows = (
            await conn.execute(
                select(m.User.id, m.User.name, m.User.role, m.User.enabled)
                .where(m.User.group_id == gid)
                .order_by(m.User.name)
            )
        ).all()
    members = tuple(Member(*r) for r in rows)
    count = sum(1 for u in members if u.enabled)
    if not (caller.is_admin or caller.role == "groupadmin"):
        members = ()
    return GroupView(gid, name, created, count, members)


async def delete_group(rt: Runtime, caller: Caller, name_or_id: str) -> None:
    require_admin(caller)
    async with rt.engine.begin() as conn:
        gid, name, _ = await _find(conn, name_or_id)
        users = (
            await conn.scalars(
                select(m.User.name).where(m.User.group_id == gid).order_by(m.User.name).limit(4)
            )
        ).all()
        if users:
            shown = ", ".join(users[:3]) + (", ..." if len(users) > 3 else "")
            raise InvalidState(
                f"the group '{name}' is not empty: it has users ({shown}); "
                "move them to another group first",
                resource="group",
                state="not-empty",
            )
        for table, what in ((m.Instance, "instances"), (m.Volume, "volumes"), (m.Image, "images")):
            held = await conn.scalar(select(table.id).where(table.group_id == gid).limit(1))
            if held is not None:
                raise InvalidState(
                    f"the group '{name}' still holds {what} (e.g. {held})",
                    resource="group",
                    state="not-empty",
                )
        await conn.execute(delete(m.Quota).where(m.Quota.subject_id == gid))
        await conn.execute(delete(m.LaunchPermission).where(m.LaunchPermission.grantee == gid))
        await conn.execute(delete(m.Group).where(m.Group.id == gid))
        await record(conn, [audit(gid, caller.name, "group deleted", name=name)])


async def set_user_group(rt: Runtime, caller: Caller, user: str, group: str) -> UserView:
    """Move a user, and everything they own, to another existing group (admins only)."""
    require_admin(caller)
    found = await get_user(rt, caller, user)
    async with rt.engine.begin() as conn:
        gid, gname, _ = await _find(conn, group)
        if gid != found.group_id:
            await conn.execute(update(m.User).where(m.User.id == found.id).values(group_id=gid))
            for table in (m.Instance, m.Volume, m.Image):
                await conn.execute(
                    update(table).where(table.owner_id == found.id).values(group_id=gid)
                )
            await record(
                conn,
                [
                    audit(
                        found.id,
                        caller.name,
                        "user group changed",
                        old=found.group,
                        new=gname,
                    )
                ],
            )
    rt.forget_credentials(found.id)
    return await get_user(rt, caller, found.id)


async def set_user_role(rt: Runtime, caller: Caller, user: str, role: str) -> UserView:
    """Give a user the admin, groupadmin or user role (admins only, never their own)."""
    require_admin(caller)
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", field="role")
    found = await get_user(rt, caller, user)
    if found.id == caller.user_id:
        raise InvalidRequest("you cannot change your own role", field="role")
    if found.role != role:
        async with rt.engine.begin() as conn:
            await conn.execute(update(m.User).where(m.User.id == found.id).values(role=role))
            await record(
                conn,
                [audit(found.id, caller.name, "user role changed", old=found.role, new=role)],
            )
        rt.forget_credentials(found.id)
    return await get_user(rt, caller, found.id)
