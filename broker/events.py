"""The event log: every lifecycle transition and every operator change, written in the same
transaction as the change itself, so the log and the state never disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from broker import bulk
from broker import model as m
from broker.model import utcnow


@dataclasses.dataclass(frozen=True, slots=True)
class EventRecord:
    resource_id: str
    kind: str  # transition | audit | placement | error
    actor: str = ""
    from_state: str = ""
    to_state: str = ""
    message: str = ""
    detail: dict[str, Any] | None = None


async def record(conn: AsyncConnection, events: Iterable[EventRecord]) -> None:
    """Insert events in one statement (no-op for an empty batch)."""
    now = utcnow()
    rows = [
        {
            "resource_id": e.resource_id,
            "kind": e.kind,
            "actor": e.actor,
            "from_state": e.from_state,
            "to_state": e.to_state,
            "message": e.message,
            "detail": e.detail,
            "at": now,
        }
        for e in events
    ]
    await bulk.insert_rows(conn, m.Event, rows)


def transition(
    rid: str, old: str, new: str, actor: str, message: str = "", **detail: Any
) -> EventRecord:
    return EventRecord(rid, "transition", actor, old, new, message, detail or None)


def audit(rid: str, actor: str, message: str, **detail: Any) -> EventRecord:
    return EventRecord(rid, "audit", actor, message=message, detail=detail or None)
