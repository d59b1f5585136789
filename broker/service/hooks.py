"""Hooks as operators manage them: add (validated in full first), list, show, enable, disable,
remove, and the log of their runs.

Decides what a valid hook is: a name; ``script`` with an absolute path to an executable file
on the broker's machine, or ``webhook`` with an http(s) URL (no credentials in it); one or more
event names of :data:`broker.hooks.EVENTS`; filters on :data:`broker.hooks.FILTERS`, each a
string or a list of strings; a timeout above 0 and at most :data:`MAX_TIMEOUT` seconds. Bad
input raises :class:`~broker.errors.InvalidRequest` naming the field and changes nothing.
Hooks run commands on the broker's machine, so every operation is for admins only, and
adding and removing are written to the event log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update

from broker import ids
from broker import model as m
from broker.auth import Caller, require_admin
from broker.errors import AlreadyExists, InvalidRequest, NotFound
from broker.events import audit, record
from broker.hooks import EVENTS, FILTERS
from broker.runtime import Runtime

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = ("script", "webhook")
RUN_STATUSES = ("ok", "failed", "timeout")
MAX_TIMEOUT = 300.0
MAX_COMMAND = 2048
MAX_FILTER_VALUES = 50
MAX_LOG = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class HookView:
    id: str
    name: str
    kind: str
    command: str
    events: list[str]
    filters: dict[str, list[str]]
    timeout_s: float
    enabled: bool
    created_by: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class HookRunView:
    id: int
    hook: str
    event_id: int
    started_at: dt.datetime
    duration_ms: int
    status: str
    exit_code: int | None
    output: str


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidRequest(
            f"invalid hook name '{str(name)[:64]}': letters, digits, '.', '_' and '-', "
            "at most 64, starting with a letter or digit",
            field="name",
        )
    return name


def check_script(path: str) -> str:
    if not path or "\x00" in path or len(path) > MAX_COMMAND:
        raise InvalidRequest("a script hook needs the path of an executable", field="command")
    if not os.path.isabs(path):
        raise InvalidRequest(f"the script path must be absolute, got '{path}'", field="command")
    if not os.path.isfile(path):
        raise InvalidRequest(f"the script '{path}' is not a file on this broker", field="command")
    if not os.access(path, os.X_OK):
        raise InvalidRequest(f"the script '{path}' is not executable", field="command")
    return path


def check_url(url: str) -> str:
    bad = f"'{url[:200]}' is not a webhook URL"
    if not url or len(url) > MAX_COMMAND or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidRequest(f"{bad}: expected http(s)://host[:port]/path", field="command")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"{bad}: {exc}", field="command") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(f"{bad}: the scheme must be http or https", field="command")
    if not parts.hostname:
        raise InvalidRequest(f"{bad}: it names no host", field="command")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(
            f"{bad}: credentials in the URL would be shown to every admin; "
            "put a token in the path or query instead",
            field="command",
        )
    if port == 0:
        raise InvalidRequest(f"{bad}: port 0", field="command")
    if parts.fragment:
        raise InvalidRequest(f"{bad}: a fragment is never sent", field="command")
    return url


def check_events(events: Any) -> list[str]:
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, Sequence) or not events:
        raise InvalidRequest(
            f"a hook needs at least one event: {', '.join(EVENTS)}", field="events"
        )
    out: list[str] = []
    for e in events:
        if not isinstance(e, str) or e not in EVENTS:
            raise InvalidRequest(
                f"unknown event '{str(e)[:64]}'; events are {', '.join(EVENTS)}", field="events"
            )
        if e not in out:
            out.append(e)
    return out


def check_filters(filters: Any) -> dict[str, list[str]]:
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise InvalidRequest("filters must be an object of name: value(s)", field="filters")
    out: dict[str, list[str]] = {}
    for key, value in filters.items():
        if key not in FILTERS:
            raise InvalidRequest(
                f"unknown filter '{str(key)[:64]}'; filters are {', '.join(FILTERS)}",
                field="filters",
            )
        values = [value] if isinstance(value, str) else value
        if (
            not isinstance(values, list)
            or not values
            or len(values) > MAX_FILTER_VALUES
            or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in values)
        ):
            raise InvalidRequest(
                f"filter '{key}' wants a string or a list of 1 to {MAX_FILTER_VALUES} strings",
                field="filters",
            )
        out[key] = list(dict.fromkeys(values))
    return out


def check_timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise InvalidRequest("the timeout must be a number of seconds", field="timeout")
    if not math.isfinite(timeout_s) or not 0 < timeout_s <= MAX_TIMEOUT:
        raise InvalidRequest(
            f"the timeout must be above 0 and at most {MAX_TIMEOUT:g} seconds, got {timeout_s}",
            field="timeout",
        )
    return float(timeout_s)


_COLS = (
    m.Hook.id,
    m.Hook.name,
    m.Hook.kind,
    m.Hook.command,
    m.Hook.events,
    m.Hook.filters,
    m.Hook.timeout_s,
    m.Hook.enabled,
    m.Hook.created_by,
    m.Hook.created_at,
)


def _view(row: Any) -> HookView:
    return HookView(
        row[0],
        row[1],
        row[2],
        row[3],
        list(row[4] or []),
        {k: list(v) for k, v in (row[5] or {}).items()},
        float(row[6]),
        bool(row[7]),
        row[8],
        row[9],
    )


async def add(
    rt: Runtime,
    caller: Caller,
    *,
    name: str,
    kind: str,
    command: str,
    events: Any,
    filters: Any = None,
    timeout_s: Any = 10.0,
    enabled: bool = True,
) -> HookView:
    """Register a hook; everything is checked before anything is written."""
    require_admin(caller)
    check_name(name)
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not isinstance(command, str):
        raise InvalidRequest("command must be a string", field="command")
    command = check_script(command) if kind == "script" else check_url(command)
    event_names = check_events(events)
    flt = check_filters(filters)
    timeout = check_timeout(timeout_s)
    hid = ids.new_id("hook")
    async with rt.engine.begin() as conn:
        if await conn.scalar(select(m.Hook.id).where(m.Hook.name == name)):
            raise AlreadyExists(f"a hook named '{name}' exists", resource="hook")
        await conn.execute(
            insert(m.Hook).values(
                id=hid,
                name=name,
                kind=kind,
                command=command,
                events=event_names,
                filters=flt,
                timeout_s=timeout,
                enabled=enabled,
                created_by=caller.name,
            )
        )
        await record(
            conn,
            [audit(hid, caller.name, "hook added", name=name, kind=kind, events=event_names)],
        )
    return await get(rt, caller, name)


async def describe(rt: Runtime, caller: Caller) -> list[HookView]:
    require_admin(caller)
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(select(*_COLS).order_by(m.Hook.name))).all()
    return [_view(r) for r in rows]


async def get(rt: Runtime, caller: Caller, name: str) -> HookView:
    """One hook by name or id."""
    require_admin(caller)
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidRequest("a hook is named by its name or id", field="name")
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(select(*_COLS).where((m.Hook.name == name) | (m.Hook.id == name)))
        ).first()
    if row is None:
        raise NotFound(f"the hook '{name}' does not exist", resource="hook", field=name)
    return _view(row)


async def set_enabled(rt: Runtime, caller: Caller, name: str, enabled: bool) -> HookView:
    """Pause a hook (it keeps its log) or run it again, from the next event on."""
    hook = await get(rt, caller, name)
    async with rt.engine.begin() as conn:
        await conn.execute(update(m.Hook).where(m.Hook.id == hook.id).values(enabled=enabled))
        verb = "enabled" if enabled else "disabled"
        await record(conn, [audit(hook.id, caller.name, f"hook {verb}", name=hook.name)])
    return await get(rt, caller, hook.id)


async def remove(rt: Runtime, caller: Caller, name: str) -> HookView:
    """Remove a hook and its log; a run in progress ends unrecorded."""
    hook = await get(rt, caller, name)
    async with rt.engine.begin() as conn:
        await conn.execute(delete(m.HookRun).where(m.HookRun.hook_id == hook.id))
        await conn.execute(delete(m.Hook).where(m.Hook.id == hook.id))
        await record(conn, [audit(hook.id, caller.name, "hook removed", name=hook.name)])
    return hook


async def runs(
    rt: Runtime,
    caller: Caller,
    name: str | None = None,
    *,
    status: str | None = None,
    limit: int = 50,
) -> list[HookRunView]:
    """The newest runs, of one hook or of all, optionally only those that ended ``status``."""
    require_admin(caller)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LOG:
        raise InvalidRequest(f"the limit must be between 1 and {MAX_LOG}", field="limit")
    if status is not None and status not in RUN_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(RUN_STATUSES)}", field="status")
    stmt = (
        select(
            m.HookRun.id,
            m.Hook.name,
            m.HookRun.event_id,
            m.HookRun.started_at,
            m.HookRun.duration_ms,
            m.HookRun.status,
            m.HookRun.exit_code,
            m.HookRun.output,
        )
        .join(m.Hook, m.Hook.id == m.HookRun.hook_id)
        .order_by(m.HookRun.id.desc())
        .limit(limit)
    )
    if name is not None:
        stmt = stmt.where(m.HookRun.hook_id == (await get(rt, caller, name)).id)
    if status is not None:
        stmt = stmt.where(m.HookRun.status == status)
    async with rt.engine.connect() as conn:
        return [HookRunView(*r) for r in await conn.execute(stmt)]
