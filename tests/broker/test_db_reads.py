"""The database's version as reads see it (broker.db.Reads.version), and the writer that runs
its statements on the loop (broker.sqliteloop): what kept answers and every write rely on."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from broker import sqliteloop
from broker.db import Reads, create_engine


@contextlib.asynccontextmanager
async def _table(path: Path) -> AsyncIterator[tuple[AsyncEngine, Reads]]:
    """A database file with one empty table ``t``: its writer and its reads."""
    url = f"sqlite+aiosqlite:///{path}"
    writer = create_engine(url)
    async with writer.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    reads = Reads(url, writer)
    try:
        yield writer, reads
    finally:
        reads.close()
        await writer.dispose()


async def test_the_version_moves_with_every_commit_and_only_then(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    async with _table(path) as (writer, reads):
        first = reads.version()
        assert first is not None and reads.version() == first
        assert await reads.run(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar()) == 0
        assert reads.version() == first  # reading changes nothing

        async with writer.begin() as conn:  # this process's writer
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        second = reads.version()
        assert second != first

        with sqlite3.connect(path) as other:  # another process's connection
            other.execute("INSERT INTO t VALUES (2)")
        third = reads.version()
        assert third not in (first, second)
        assert reads.version() == third


async def test_a_new_read_connection_gets_a_new_version_and_its_own_count(tmp_path: Path) -> None:
    async with _table(tmp_path / "v.db") as (writer, reads):
        first = reads.version()
        reads._loop_connection().invalidate()  # lost: the next read opens another
        second = reads.version()
        assert second is not None and first is not None and second[0] != first[0]
        async with writer.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        third = reads.version()  # read on the new connection: it sees the commit
        assert third is not None and third[0] == second[0] and third != second
        assert await reads.run(lambda c: c.execute(text("SELECT count(*) FROM t")).scalar()) == 1
        assert reads.version() == third


async def test_memory_databases_have_no_version(tmp_path: Path) -> None:
    writer = create_engine("sqlite+aiosqlite://")
    reads = Reads("sqlite+aiosqlite://", writer)
    try:
        assert reads.version() is None
    finally:
        reads.close()
        await writer.dispose()


async def test_the_loop_writer_waits_for_another_process_lock_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.db"
    writer = create_engine(f"sqlite+aiosqlite:///{path}")
    async with writer.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(tick())

    async def insert() -> None:
        async with writer.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))

    try:
        pending = asyncio.create_task(insert())
        await asyncio.sleep(0.2)
        assert not pending.done()  # still waiting for the lock...
        assert ticks >= 10  # ...while the loop ran on
        holder.execute("COMMIT")
        await asyncio.wait_for(pending, 5)
        async with writer.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        ticking.cancel()
        holder.close()
        await writer.dispose()


async def test_a_lock_held_past_the_wait_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqliteloop, "BUSY_WAIT", 0.1)
    path = tmp_path / "x.db"
    writer = create_engine(f"sqlite+aiosqlite:///{path}")
    async with writer.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Exception, match="locked"):
            async with writer.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        await writer.dispose()
