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


def _frames_left(path: Path) -> tuple[int, int]:
    """(frames in the log, frames of it already in the database file), asked passively."""
    conn = sqlite3.connect(path)
    try:
        _busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return logged, copied
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
        while checkpointer.checkpoints == 0 or _frames_left(path)[1] < _frames_left(path)[0]:
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
