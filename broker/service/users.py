"""Users, groups, access keys and tokens: creating principals and their credentials."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from broker import ids
from broker import model as m
from broker.auth import (
    ROLES,
    Caller,
    new_access_key,
    new_secret_key,
    new_token,
    require_admin,
    token_digest,
)
from broker.errors import AlreadyExists, InvalidRequest, NotFound
from broker.events import audit, record
from broker.model import utcnow
from broker.runtime import Runtime

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
ACCESS_KEY = re.compile(r"^[A-Za-z0-9_+/=.-]{8,128}$")


@dataclasses.dataclass(frozen=True, slots=True)
class UserView:
    id: str
    name: str
    group_id: str
    group: str
    role: str
    enabled: bool
    created_at: dt.datetime
    access_keys: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    user: UserView
    access_key: str
    secret_key: str


def _check_name(name: str, what: str) -> None:
    if not NAME.match(name):
        raise InvalidRequest(
            f"invalid {what} name '{name[:64]}': use letters, digits, '_', '.', '@', '-'",
            field="name",
        )


async def _group_id(conn: AsyncConnection, name: str, create: bool) -> str:
    gid = await conn.scalar(select(m.Group.id).where(m.Group.name == name))
    if gid is None:
        if not create:
            raise NotFound(f"the group '{name}' does not exist", resource="group", field=name)
        gid = ids.new_id("group")
        await conn.execute(insert(m.Group).values(id=gid, name=name))
    return gid


async def create_user(
    rt: Runtime,
    caller: Caller,
    name: str,
    *,
    role: str = "user",
    group: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> Credentials:
    """Create a user (with a group of the same name unless one is given) and one access key."""
    require_admin(caller)
    _check_name(name, "user")
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", field="role")
    if (access_key is None) != (secret_key is None):
        raise InvalidRequest("give both an access key and a secret key, or neither")
    if access_key is not None and not ACCESS_KEY.match(access_key):
        raise InvalidRequest("the access key must be 8 to 128 letters, digits or _+/=.-")
    if secret_key is not None and not 8 <= len(secret_key) <= 256:
        raise InvalidRequest("the secret key must be 8 to 256 characters")
    access_key = access_key or new_access_key()
    secret_key = secret_key or new_secret_key()
    uid = ids.new_id("user")
    async with rt.engine.begin() as conn:
        if await conn.scalar(select(m.User.id).where(m.User.name == name)):
            raise AlreadyExists(f"a user named '{name}' exists", resource="user")
        if await conn.scalar(
            select(m.AccessKey.user_id).where(m.AccessKey.access_key == access_key)
        ):
            raise AlreadyExists("that access key is already in use", resource="access_key")
        if group is not None:
            _check_name(group, "group")
        gid = await _group_id(conn, group or name, create=True)
        await conn.execute(insert(m.User).values(id=uid, name=name, group_id=gid, role=role))
        await conn.execute(
            insert(m.AccessKey).values(
                access_key=access_key, user_id=uid, secret_enc=rt.box.seal(secret_key)
            )
        )
        await record(conn, [audit(uid, caller.name, "user created", name=name, role=role)])
    return Credentials(await get_user(rt, caller, name), access_key, secret_key)


async def get_user(rt: Runtime, caller: Caller, name_or_id: str) -> UserView:
    users = await list_users(rt, caller, name_or_id)
    if not users:
        raise NotFound(f"the user '{name_or_id}' does not exist", resource="user", field=name_or_id)
    return users[0]


async def list_users(rt: Runtime, caller: Caller, name_or_id: str | None = None) -> list[UserView]:
    stmt = (
        select(
            m.User.id,
            m.User.name,
            m.User.group_id,
            m.Group.name,
            m.User.role,
            m.User.enabled,
            m.User.created_at,
        )
        .join(m.Group, m.Group.id == m.User.group_id)
        .order_by(m.User.name)
    )
    if not caller.is_admin:
        stmt = stmt.where(m.User.id == caller.user_id)
    if name_or_id is not None:
        stmt = stmt.where((m.User.name == name_or_id) | (m.User.id == name_or_id))
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
        keys: dict[str, list[str]] = {}
        for uid, key in await conn.execute(
            select(m.AccessKey.user_id, m.AccessKey.access_key).where(
                m.AccessKey.user_id.in_([r[0] for r in rows])
            )
        ):
            keys.setdefault(uid, []).append(key)
    return [UserView(*r, access_keys=tuple(keys.get(r[0], ()))) for r in rows]


async def set_enabled(rt: Runtime, caller: Caller, name: str, enabled: bool) -> UserView:
    require_admin(caller)
    user = await get_user(rt, caller, name)
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.User).where(m.User.id == user.id).values(enabled=enabled))
        await record(
            conn, [audit(user.id, caller.name, "user enabled" if enabled else "user disabled")]
        )
    rt.forget_credentials(user.id)
    return await get_user(rt, caller, name)


async def delete_user(rt: Runtime, caller: Caller, name: str) -> None:
    require_admin(caller)
    user = await get_user(rt, caller, name)
    if user.id == caller.user_id:
        raise InvalidRequest("you cannot delete yourself")
    async with rt.engine.begin() as conn:
        live = await conn.scalar(
            select(m.Instance.id)
            .where(m.Instance.owner_id == user.id, m.Instance.state != "done")
            .limit(1)
        )
        if live is not None:
            raise InvalidRequest(f"the user '{name}' still has instances (e.g. {live})")
        await conn.execute(update(m.User).where(m.User.id == user.id).values(enabled=False))
        await conn.execute(delete(m.AccessKey).where(m.AccessKey.user_id == user.id))
        await conn.execute(delete(m.Token).where(m.Token.user_id == user.id))
        await record(conn, [audit(user.id, caller.name, "user deleted")])
    rt.forget_credentials(user.id)


async def issue_token(
    rt: Runtime,
    caller: Caller,
    name: str | None = None,
    ttl: dt.timedelta | None = dt.timedelta(hours=12),
) -> str:
    """A new bearer token for ``name`` (admins) or the caller; ``ttl`` None never expires."""
    if name is not None and name != caller.name:
        require_admin(caller)
        uid = (await get_user(rt, caller, name)).id
    else:
        uid = caller.user_id
    token = new_token()
    async with rt.engine.begin() as conn:
        await conn.execute(
            insert(m.Token).values(
                digest=token_digest(token),
                user_id=uid,
                expires_at=None if ttl is None else utcnow() + ttl,
            )
        )
        await record(conn, [audit(uid, caller.name, "token issued")])
    return token
