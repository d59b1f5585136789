"""SQLite for the async engine, its statements run on the event loop instead of a thread.

Decides how the broker's one SQLite writer connection executes. aiosqlite hands every call
(open a cursor, execute, fetch, close) to a thread of its own and wakes the loop when it is
done: four hand-offs per statement, each a GIL switch and a self-pipe wake-up, which on two
busy cores cost far more than the statement (a one-instance launch is about twenty statements).
Here the same calls run right away on the loop's thread, on a plain ``sqlite3`` connection,
behind the interface SQLAlchemy's aiosqlite dialect drives, so everything above the driver
(pooling, the greenlet bridge, result handling) stays as it is.

The loop never waits on a lock inside SQLite: the connection's ``busy_timeout`` is 0, and a
statement SQLite refuses as busy (another process, such as the CLI, holds the write lock) is
tried again after an ``asyncio.sleep`` that lets the loop run, up to :data:`BUSY_WAIT` seconds,
as ``busy_timeout`` would have waited. A busy statement did nothing, so trying it again is safe.
The pauses are short (half a millisecond, then :data:`LONGEST_PAUSE`): the lock's usual holder
is another of the broker's own processes (``serve`` and its EC2 workers) writing a batch in a
few milliseconds, a pause long past its commit leaves this process idle with a batch of its own
waiting, and a try costs microseconds. (uvloop counts timers in whole milliseconds: the first
pause is one turn of the loop, the others one millisecond. Pauses doubling up to 5 ms left an
EC2 worker waiting 7.5 ms on average for a lock held 3 to 5 ms.)
Only plain ``SQLITE_BUSY`` is retried: a snapshot conflict (``SQLITE_BUSY_SNAPSHOT``) can never
succeed and is raised at once, as SQLite's own busy handler would.

Nor does the loop copy the write-ahead log into the database file. SQLite does that inside the
commit that fills the log past 1,000 pages: a checkpoint that writes megabytes and syncs twice,
a fifth of the writer's time under a stream of launches. The loop's connection turns automatic
checkpoints off, and a :class:`Checkpointer` thread with a connection of its own runs a passive
checkpoint after commits (at most one every :data:`CHECKPOINT_PAUSE` seconds). SQLite releases
the GIL while it copies and syncs, so the loop goes on meanwhile; a passive checkpoint takes no
lock that writers or readers wait for.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: how long a statement waits for another process's write lock (as ``busy_timeout`` did)
BUSY_WAIT = 10.0
#: the first and the longest pause between two tries of a statement refused as busy
FIRST_PAUSE = 0.0005
LONGEST_PAUSE = 0.001
#: the least time between two checkpoints of the write-ahead log (commits between share one)
CHECKPOINT_PAUSE = 0.25
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (_SQLITE_BUSY, _SQLITE_LOCKED)


async def _patiently(call: Callable[[], T]) -> T:
    """``call()``, again after short sleeps on the loop while SQLite says another holds a lock."""
    try:
        return call()
    except sqlite3.OperationalError as exc:
        if not _busy(exc):
            raise
    deadline = time.monotonic() + BUSY_WAIT
    pause = FIRST_PAUSE
    while True:
        await asyncio.sleep(pause)
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        pause = min(pause * 2, LONGEST_PAUSE)


class LoopCursor:
    """An aiosqlite-shaped cursor whose coroutines complete without yielding (unless busy)."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def __await__(self) -> Generator[Any, None, LoopCursor]:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> LoopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> LoopCursor:
        cursor = self._cursor
        await _patiently(lambda: cursor.execute(sql, () if parameters is None else parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> LoopCursor:
        rows = list(parameters)  # a retry must see every row again
        await _patiently(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def nextset(self) -> None:
        return None

    async def close(self) -> None:
        self._cursor.close()


class _RunNow:
    """What SQLAlchemy's aiosqlite adapter puts on aiosqlite's queue, run at once instead."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting adapter, as aiosqlite's thread would
            future.set_exception(exc)


class Checkpointer:
    """Copies the write-ahead log of ``path`` into the database file, on a thread of its own.

    :meth:`written` (after each commit) wakes the thread, started at the first one; it runs
    ``PRAGMA wal_checkpoint(PASSIVE)``, then rests :data:`CHECKPOINT_PAUSE` seconds, so that
    the commits made meanwhile share the next checkpoint. :meth:`stop` ends it (the last
    connection to close checkpoints what is left, as SQLite always does).
    """

    def __init__(self, path: str, pause: float | None = None) -> None:
        self.path = path
        self.pause = CHECKPOINT_PAUSE if pause is None else pause
        self.checkpoints = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def written(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"checkpoint {self.path}", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=BUSY_WAIT, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop.is_set():
                    return
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
                if self._stop.wait(self.pause):  # commits meanwhile wait for the next one
                    return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=BUSY_WAIT)


class LoopConnection:
    """An aiosqlite-shaped connection over a ``sqlite3`` connection used on the loop's thread."""

    def __init__(self, conn: sqlite3.Connection, checkpointer: Checkpointer | None = None) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._tx = _RunNow()
        self.checkpointer = checkpointer

    @property
    def _connection(self) -> sqlite3.Connection | None:
        """The open connection, or None once closed (what the dialect tests before commit)."""
        return self._conn

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("no active connection")
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._open().isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._open().in_transaction

    def cursor(self) -> LoopCursor:
        return LoopCursor(self._open().cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> LoopCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        await _patiently(self._open().commit)
        if self.checkpointer is not None:
            self.checkpointer.written()

    async def rollback(self) -> None:
        self._open().rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._open().create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def connector(path: str) -> Callable[[], Any]:
    """The ``async_creator`` for an engine whose connections run on the loop."""

    async def connect() -> LoopConnection:
        # no transaction begun by sqlite3 itself: the engine begins each (broker.db)
        conn = sqlite3.connect(path, timeout=0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the Checkpointer's thread does it
        return LoopConnection(conn, Checkpointer(path))

    return connect
