"""List pages over more rows than one service read returns: search, filters and paging.

One tenant owns 1,600 instances written straight into the model (stopped, no backend ref, no
intent, so neither the scheduler nor the monitor touches them): every third placed on host h1,
every third on the region us-east-1, the rest not placed. Only row 1,500 (in id order, which
is the list's order) has the hostname and the tags searched for, so a search that stops at the
first thousand rows cannot find it.
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
from aiohttp import ClientSession, ClientTimeout, CookieJar
from sqlalchemy import insert, select

from broker import ids
from broker import model as m
from broker.auth import SYSTEM
from broker.service import users
from tests.frontends.web.conftest import Server, Tenant, new_tenant

T = TypeVar("T")
COUNT = 1600
NEEDLE = 1500  # the row (1-based, in id order) the searches look for
ROW = re.compile(r'<tr data-instance="(i-[0-9a-f]+)"')
NEXT = re.compile(r'<a href="([^"]+)" rel="next">')
PREV = re.compile(r'<a href="([^"]+)" rel="prev">')
LISTS = ("instances", "targets", "images", "networks", "volumes", "users")


async def on_server(server: Server, coro: Coroutine[Any, Any, T]) -> T:
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, server.loop))


class Seeded:
    """The tenant and its instance ids in list order, with where each one is."""

    def __init__(self, tenant: Tenant, rows: list[str], where: dict[str, str]) -> None:
        self.tenant = tenant
        self.rows = rows
        self.where = where

    @property
    def needle(self) -> str:
        return self.rows[NEEDLE - 1]


def _place(n: int, h1: str, region: str) -> tuple[str | None, str]:
    if n % 3 == 0:
        return h1, "local"
    if n % 3 == 1:
        return region, "region us-east-1"
    return None, "(not placed)"


async def _seed(server: Server, tenant: Tenant) -> Seeded:
    user = await users.get_user(server.rt, SYSTEM, tenant.name)
    prefix = secrets.token_hex(4)
    rows = [f"i-0{prefix}{n:08x}" for n in range(1, COUNT + 1)]
    assert all(ids.is_valid("instance", r) for r in rows) and rows == sorted(rows)
    where: dict[str, str] = {}
    async with server.rt.engine.begin() as conn:
        h1 = await conn.scalar(select(m.Target.id).where(m.Target.name == "h1"))
        region = await conn.scalar(select(m.Target.id).where(m.Target.name == "us-east-1"))
        assert h1 is not None and region is not None
        values = []
        for n, rid in enumerate(rows, start=1):
            target, where[rid] = _place(n, h1, region)
            values.append(
                {
                    "id": rid,
                    "owner_id": user.id,
                    "group_id": user.group_id,
                    "reservation_id": ids.new_id("reservation"),
                    "image_id": server.image_id,
                    "flavor": "t3.micro",
                    "vcpus": 1,
                    "memory_mb": 512,
                    "state": "stopped",
                    "target_id": target,
                    "hostname": "Needle-Host" if n == NEEDLE else f"node-{n}",
                }
            )
        await conn.execute(insert(m.Instance), values)
        tag = {"resource_id": rows[NEEDLE - 1], "owner_id": user.id, "resource_type": "instance"}
        await conn.execute(
            insert(m.Tag),
            [{**tag, "key": "colour", "value": "Zebra"}, {**tag, "key": "note", "value": "ΩMEGA"}],
        )
    return Seeded(tenant, rows, where)


@pytest.fixture(scope="module")
def seeded(server: Server) -> Seeded:
    tenant = new_tenant(server, "pager")
    return server.run(_seed(server, tenant))


class Client:
    def __init__(self, server: Server, session: ClientSession) -> None:
        self.server, self.session = server, session

    async def get(self, path: str) -> tuple[int, str]:
        target = self.server.admin + path if path.startswith("/") else self.server.ui + path
        async with self.session.get(target, allow_redirects=False) as resp:
            return resp.status, await resp.text()

    async def page(self, path: str) -> str:
        status, text = await self.get(path)
        assert status == 200, (path, status, text[:500])
        return text

    async def walk(self, path: str) -> tuple[list[list[str]], list[str]]:
        """Every page from ``path`` on by the "Next" links: rows of each, and the pages' paths."""
        pages, paths = [], [path]
        while True:
            text = await self.page(paths[-1])
            pages.append(ROW.findall(text))
            found = NEXT.search(text)
            if found is None:
                assert "the end of the list" in text or not pages[-1]
                return pages, paths
            assert "more follow" in text
            paths.append(html.unescape(found.group(1)))
            assert len(paths) <= COUNT, "the Next links go round in circles"


@pytest.fixture
async def client(server: Server, seeded: Seeded) -> AsyncIterator[Client]:
    async with ClientSession(
        cookie_jar=CookieJar(unsafe=True), timeout=ClientTimeout(total=60)
    ) as session:
        form = {"access_key": seeded.tenant.access_key, "secret": seeded.tenant.secret_key}
        async with session.post(server.ui + "login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        yield Client(server, session)


@pytest.mark.parametrize(
    "q",
    [
        "needle-host",  # the hostname, in SQL
        "NEEDLE",  # any case
        "zebr",  # a tag value
        "colou",  # a tag key
        "ωmega",  # not ASCII: Python decides, over reads of a thousand rows
    ],
)
async def test_a_search_finds_the_only_match_at_row_1500(
    client: Client, seeded: Seeded, q: str
) -> None:
    text = await client.page(f"instances?q={q}")
    assert ROW.findall(text) == [seeded.needle]
    assert "the end of the list" in text and 'rel="next"' not in text


async def test_filters_see_rows_past_the_first_thousand(client: Client, seeded: Seeded) -> None:
    assert ROW.findall(await client.page("instances?q=needle&where=local")) == [seeded.needle]
    text = await client.page("instances?q=needle&where=region+us-east-1")
    assert ROW.findall(text) == [] and "No instances match" in text
    text = await client.page("instances?q=needle&state=stopped")
    assert ROW.findall(text) == [seeded.needle]
    text = await client.page("instances?q=needle&state=running")
    assert ROW.findall(text) == []
    status, text = await client.get("instances?where=planet+mars")
    assert status == 400 and "unknown place" in text


@pytest.mark.parametrize(
    "where",
    ["", "local", "region us-east-1", "(not placed)"],  # the last only Python can evaluate
)
async def test_paging_walks_every_row_exactly_once(
    client: Client, seeded: Seeded, where: str
) -> None:
    query = urlencode({"size": 500, **({"where": where} if where else {})})
    pages, paths = await client.walk(f"instances?{query}")
    walked = [rid for page in pages for rid in page]
    expected = [r for r in seeded.rows if not where or seeded.where[r] == where]
    assert walked == expected  # each row once, in order, none missing
    assert all(len(page) == 500 for page in pages[:-1]) and 0 < len(pages[-1]) <= 500
    assert len(pages) == -(-len(expected) // 500)
    # and back again by "Previous", page by page, to the first
    for back in range(len(paths) - 1, 0, -1):
        found = PREV.search(await client.page(paths[back]))
        assert found is not None
        assert ROW.findall(await client.page(html.unescape(found.group(1)))) == pages[back - 1]


async def test_the_default_page_says_there_is_more(client: Client, seeded: Seeded) -> None:
    text = await client.page("instances")
    assert ROW.findall(text) == seeded.rows[:50]
    assert "Rows 1\u201350; more follow" in text and 'rel="next"' in text
    assert 'rel="prev"' not in text and 'rel="first"' not in text


async def test_the_dashboard_counts_every_instance(client: Client, seeded: Seeded) -> None:
    text = await client.page("")
    assert f"({COUNT})" in text and f"<b>{COUNT}</b>" in text


async def test_a_list_the_service_returns_whole_is_paged_too(client: Client) -> None:
    pages, paths = await client.walk("targets?size=1")
    names = [re.findall(r'<tr data-target="([^"]+)"', await client.page(p)) for p in paths]
    assert pages == [[]] * 4  # no instance rows on the targets page
    assert names == [["h1"], ["h2"], ["site-b"], ["us-east-1"]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("size=-1", "'size' must be a whole number from 1 to 500"),
        ("size=0", "'size' must be a whole number from 1 to 500"),
        ("size=abc", "'size' must be a whole number from 1 to 500"),
        ("size=1.5", "'size' must be a whole number from 1 to 500"),
        ("size=501", "'size' must be a whole number from 1 to 500"),
        ("size=" + "9" * 40, "'size' must be a whole number from 1 to 500"),
        ("size=%D9%A5", "'size' must be a whole number from 1 to 500"),  # an Arabic-Indic 5
        ("start=-3", "'start' must be a whole number from 0 to"),
        ("start=" + "9" * 40, "'start' must be a whole number from 0 to"),
        ("after=" + "x" * 200, "'after' is not a position in this list"),
        ("after=%0A", "'after' is not a position in this list"),
        ("back=%00", "'back' is not a position in this list"),
        ("&".join(["back=i-0"] * 31), "'back' is limited to 30 positions"),
    ],
)
@pytest.mark.parametrize("path", LISTS)
async def test_bad_paging_parameters_answer_400(
    client: Client, path: str, params: str, message: str
) -> None:
    status, text = await client.get(f"{path}?{params}")
    assert status == 400, (path, params, status)
    assert "Bad request" in html.unescape(text) and message in html.unescape(text)


async def test_a_position_that_cannot_be_an_id_answers_400(client: Client) -> None:
    status, text = await client.get("instances?after=%C3%A9t%C3%A9")  # "été"
    assert status == 400 and "is not a position in this list" in html.unescape(text)
