"""Reading JSON request fields with clear errors, and the admin API's composite answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from broker import model as m
from broker.auth import Caller
from broker.errors import InvalidRequest
from broker.runtime import Runtime
from broker.scheduler import explain
from broker.service import instances
from broker.service.targets import TargetView

_MISSING = object()


def text(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = data.get(key, default)
    if value is _MISSING:
        raise InvalidRequest(f"'{key}' is required", field=key)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be a string", field=key)
    return value


def opt_text(data: Mapping[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else text(data, key)


def number(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> float:
    value = data.get(key, default)
    if value is _MISSING:
        raise InvalidRequest(f"'{key}' is required", field=key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"'{key}' must be a number", field=key)
    return float(value)


def opt_number(data: Mapping[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else number(data, key)


def amount(data: Mapping[str, Any], key: str) -> str | None:
    """A reservation: a number, or a string such as "2" or "25%"."""
    value = data.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return opt_text(data, key)


def flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{key}' must be true or false", field=key)
    return value


def mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{key}' must be an object", field=key)
    return value


def query_int(q: Mapping[str, str], key: str) -> int | None:
    if key not in q:
        return None
    try:
        return int(q[key])
    except ValueError:
        raise InvalidRequest(f"'{key}' must be an integer", field=key) from None


def target(view: TargetView) -> dict[str, Any]:
    """A target as the API shows it: settings without anything that looks like a secret."""
    out = {f: getattr(view, f) for f in view.__slots__}
    out["settings"] = {
        k: v
        for k, v in view.settings.items()
        if not any(s in k.lower() for s in ("secret", "password", "token"))
    }
    return out


async def explanation(rt: Runtime, caller: Caller, rid: str) -> dict[str, Any]:
    view = await instances.get(rt, caller, rid)
    found = await explain(rt, rid) or {}
    waiting = ""
    if view.state.value == "pending":
        waiting = view.state_reason or "waiting for the next scheduler cycle"
    return {
        "instance": rid,
        "state": view.state.value,
        "target": view.target_name,
        "target_id": found.get("target"),
        "reason": found.get("reason", ""),
        "considered": found.get("considered", {}),
        "decided_at": found.get("at"),
        "waiting_for": waiting,
    }


async def events(rt: Runtime, caller: Caller, rid: str) -> list[dict[str, Any]]:
    await instances.get(rt, caller, rid)
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            select(
                m.Event.id,
                m.Event.at,
                m.Event.kind,
                m.Event.actor,
                m.Event.from_state,
                m.Event.to_state,
                m.Event.message,
            )
            .where(m.Event.resource_id == rid)
            .order_by(m.Event.id)
        )
        return [
            {
                "id": r[0],
                "at": r[1],
                "kind": r[2],
                "actor": r[3],
                "from": r[4],
                "to": r[5],
                "message": r[6],
            }
            for r in rows
        ]
