"""The loop's SQLite writer never checkpoints the write-ahead log itself: the Checkpointer's
thread copies it into the database file after commits, and stops at once when asked."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from broker import sqliteloop
from broker.db import create_engine


def _copied(path: Path) -> bool:
    """Whether every frame of the log is in the database file, asked passively. A checkpoint
    under way on the Checkpointer's thread makes this one answer -1 for both: not known yet
    (taken for "all copied" once, which let the test look at the file too early)."""
    conn = sqlite3.connect(path)
    try:
        _busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(logged >= 0 and copied >= logged)
    finally:
        conn.close()


async def test_commits_leave_the_log_to_the_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqliteloop, "CHECKPOINT_PAUSE", 0.05)
    path = tmp_path / "broker.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar() == 0
            await conn.execute(text("CREATE TABLE t (x BLOB)"))
            raw = await conn.get_raw_connection()
            checkpointer = raw.driver_connection.checkpointer
        assert isinstance(checkpointer, sqliteloop.Checkpointer)
        for _ in range(40):  # far past SQLite's own 1,000-page mark
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (randomblob(100000))"))
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints == 0 or not _copied(path):
            assert time.monotonic() < deadline, "the log was never copied"
            await asyncio.sleep(0.05)
        assert path.stat().st_size > 40 * 100000  # the rows are in the database file itself
    finally:
        await engine.dispose()


async def test_stopping_does_not_wait_for_the_rest_between_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqliteloop, "CHECKPOINT_PAUSE", 30.0)
    path = tmp_path / "broker.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    for n in range(5):  # the first commit's checkpoint, then commits during the rest
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
        await asyncio.sleep(0.02)
    started = time.monotonic()
    await engine.dispose()
    assert time.monotonic() - started < 5
    conn2 = sqlite3.connect(path)
    try:
        assert conn2.execute("SELECT count(*) FROM t").fetchone() == (5,)
    finally:
        conn2.close()
