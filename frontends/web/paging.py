"""Paging for the list pages: what page a URL asks for, filling it, and the links around it.

A list page shows ``size`` rows after a position: the key (id or name) of the last row the
previous page showed, in the order the list is sorted by. Reads continue from there, so a
search or a filter sees every row the caller may see however many there are. Filters the
service evaluates in SQL narrow each read; a filter only Python can evaluate is applied to
reads of :data:`BATCH` rows at a time until the page is full or the rows run out. Positions
are keys, not offsets, so rows added or removed between two pages never make another row show
twice or be skipped. "Previous" follows a trail of earlier positions that the links carry.

Bad paging values (``size=-1``, ``size=abc``, ``start=10**30``, a position that cannot be a
key) are :class:`broker.errors.InvalidRequest`, which the app answers with a 400 page.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from aiohttp import web

from broker import errors
from broker.service.common import MAX_PAGE, Page, encode_token
from frontends.web.base import url

T = TypeVar("T")

DEFAULT_SIZE = 50
MAX_SIZE = 500
MAX_START = 1_000_000_000
MAX_KEY = 128
#: earlier positions a link carries for "Previous" (beyond them, "First page" remains)
MAX_TRAIL = 30
#: rows per read when a filter is evaluated in Python (the most one service read returns)
BATCH = MAX_PAGE
_DIGITS = re.compile(r"[0-9]{1,12}")

#: read up to ``n`` rows after the key (None: from the start); ``next_token`` None at the end
Fetch = Callable[[str | None, int], Awaitable[Page[T]]]


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    size: int
    after: str | None  # the key of the last row before this page (None: the first page)
    trail: tuple[str, ...]  # ``after`` of earlier pages, oldest first ("": the first page)
    start: int  # how many rows come before this page (shown, never trusted for reads)


@dataclasses.dataclass(frozen=True, slots=True)
class Window(Generic[T]):
    rows: list[T]
    more: bool  # at least one more row matches after these


@dataclasses.dataclass(frozen=True, slots=True)
class Pager:
    size: int
    summary: str
    first: str | None
    prev: str | None
    next: str | None
    default_size: int = DEFAULT_SIZE


def _number(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    value = request.query.get(key, "")
    if not value:
        return default
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise errors.InvalidRequest(
            f"'{key}' must be a whole number from {low} to {high:,}", field=key
        )
    return int(value)


def _key(value: str, name: str) -> str:
    if len(value) > MAX_KEY or not value.isprintable():
        raise errors.InvalidRequest(
            f"'{name}' is not a position in this list; start again from the first page",
            field=name,
        )
    return value


def position(request: web.Request) -> Position:
    """The page the query asks for: ``size``, ``after``, ``back`` (repeated) and ``start``."""
    size = _number(request, "size", DEFAULT_SIZE, 1, MAX_SIZE)
    start = _number(request, "start", 0, 0, MAX_START)
    after = _key(request.query.get("after", ""), "after") or None
    trail = tuple(_key(v, "back") for v in request.query.getall("back", []))
    if len(trail) > MAX_TRAIL:
        raise errors.InvalidRequest(
            f"'back' is limited to {MAX_TRAIL} positions; start again from the first page",
            field="back",
        )
    return Position(size, after, trail, start)


def token(after: str | None) -> str | None:
    """The service's page token for "after the id ``after``" (ids are short and ASCII)."""
    if after is None:
        return None
    if len(after) > 64 or not after.isascii():
        raise errors.InvalidRequest(
            "'after' is not a position in this list; start again from the first page",
            field="after",
        )
    return encode_token(after)


async def fill(
    fetch: Fetch[T],
    key: Callable[[T], str],
    keep: Callable[[T], bool],
    at: Position,
    batch: int = BATCH,
) -> Window[T]:
    """The first ``at.size`` rows after ``at.after`` that ``keep`` accepts, read ``batch`` at a
    time, and whether another accepted row follows them (looked for, never guessed)."""
    rows: list[T] = []
    after = at.after
    while True:
        page = await fetch(after, batch)
        for item in page.items:
            if not keep(item):
                continue
            if len(rows) == at.size:
                return Window(rows, True)
            rows.append(item)
        if page.next_token is None or not page.items:
            return Window(rows, False)
        after = key(page.items[-1])


def listed(items: Sequence[T], key: Callable[[T], str]) -> Fetch[T]:
    """A :data:`Fetch` over a list the service returns whole, sorted by ``key`` (unique)."""
    ordered = sorted(items, key=key)
    keys = [key(i) for i in ordered]

    async def fetch(after: str | None, n: int) -> Page[T]:
        first = 0 if after is None else bisect.bisect_right(keys, after)
        rest = first + n < len(ordered)
        return Page(ordered[first : first + n], "more" if rest else None)

    return fetch


def pager(
    request: web.Request,
    route: str,
    filters: Sequence[tuple[str, str]],
    at: Position,
    window: Window[T],
    key: Callable[[T], str],
) -> Pager:
    """The counts and the first, previous and next links of a page, keeping its filters."""
    base = [(k, v) for k, v in filters if v]
    if at.size != DEFAULT_SIZE:
        base.append(("size", str(at.size)))

    def link(after: str | None, trail: Sequence[str], start: int) -> str:
        pairs = list(base)
        if after is not None:
            pairs.append(("after", after))
        pairs.extend(("back", t) for t in trail)
        if start:
            pairs.append(("start", str(start)))
        return str(url(request, route).with_query(pairs))

    rows, first_page = window.rows, at.after is None
    nxt = prev = None
    if window.more and rows:
        trail = (*at.trail, at.after or "")[-MAX_TRAIL:]
        nxt = link(key(rows[-1]), trail, at.start + len(rows))
    if not first_page and at.trail:
        prev = link(at.trail[-1] or None, at.trail[:-1], max(0, at.start - at.size))
    if rows:
        end = "more follow" if window.more else "the end of the list"
        summary = f"Rows {at.start + 1:,}\u2013{at.start + len(rows):,}; {end}"
    else:
        summary = "" if first_page else "No more rows here."
    first = None if first_page else link(None, (), 0)
    return Pager(at.size, summary, first, prev, nxt)
