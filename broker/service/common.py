"""Helpers the service modules share: paging, tag queries, ownership reads, id checks."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import and_, bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from broker import ids
from broker import model as m
from broker.errors import InvalidRequest

T = TypeVar("T")

MAX_PAGE = 1000
MAX_FILTER_VALUES = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TagFilter:
    """``key`` with any of ``values`` (None: the key is present with any value)."""

    key: str
    values: tuple[str, ...] | None = None


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_token(token: str | None) -> str | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the pagination token is not valid", field="NextToken") from None
    if not raw or len(raw) > 64 or not raw.isascii():
        raise InvalidRequest("the pagination token is not valid", field="NextToken")
    return raw


def check_limit(limit: int | None, default: int = MAX_PAGE) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"the page size must be between 1 and {MAX_PAGE}", field="MaxResults")
    return limit


def check_values(name: str, values: Sequence[str]) -> None:
    if len(values) > MAX_FILTER_VALUES:
        raise InvalidRequest(f"too many values for {name} (at most {MAX_FILTER_VALUES})")


def check_ids(kind: str, values: Iterable[str], what: str) -> list[str]:
    out = []
    for v in values:
        if not ids.is_valid(kind, v):
            raise InvalidRequest(f"invalid id for {what}: '{v}'", resource=what, field="malformed")
        out.append(v)
    return out


def tag_conditions(id_column: Any, filters: Sequence[TagFilter]) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    for f in filters:
        check_values(f"tag:{f.key}", f.values or ())
        where = [m.Tag.resource_id == id_column, m.Tag.key == f.key]
        if f.values is not None:
            where.append(m.Tag.value.in_(f.values))
        conds.append(exists().where(and_(*where)))
    return conds


_TAGS_OF: Final = select(m.Tag.resource_id, m.Tag.key, m.Tag.value).where(
    m.Tag.resource_id.in_(bindparam("rids", expanding=True))
)


async def tags_for(conn: AsyncConnection, rids: Sequence[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if not rids:
        return out
    for rid, key, value in await conn.execute(_TAGS_OF, {"rids": list(rids)}):
        out.setdefault(rid, {})[key] = value
    return out


def split_page(rows: list[T], limit: int) -> tuple[list[T], bool]:
    """The first ``limit`` rows and whether there were more (queries fetch ``limit + 1``)."""
    return rows[:limit], len(rows) > limit
