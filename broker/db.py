"""Opening the database: engines for SQLite (WAL, one writer) and PostgreSQL, and migrations.

The same code runs on both. SQLite is the embedded default; its engine turns on WAL,
``synchronous=NORMAL`` and foreign keys on every connection. Migrations are alembic's, kept in
``broker/migrations``; :func:`upgrade` applies them (``cloudbroker db upgrade``, and ``serve``
on start for SQLite).

Hot reads (a describe, a collection GET) go through :class:`Reads`: a synchronous function
given a :class:`sqlalchemy.engine.Connection`, so the statements of one read cost at most one
hand-off instead of several awaits each (aiosqlite costs four or so thread hops a statement).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker import sqliteloop

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")


def sync_url(url: str) -> str:
    """The synchronous driver URL for ``url`` (alembic runs synchronously)."""
    u = make_url(url)
    driver = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}.get(
        u.drivername, u.drivername
    )
    return u.set(drivername=driver).render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_loop_pragmas(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=0")  # on the loop: sqliteloop waits by sleeping instead
    cur.close()


#: the execution option of a writer's connection that only reads (``await
#: conn.execution_options(**ONLY_READS)``): its transaction takes no write lock
ONLY_READS: Final = {"cloudbroker_only_reads": True}


def _begin_immediate(conn: Any) -> None:
    """Every transaction of the writer takes SQLite's write lock when it begins, not at its
    first write: what it reads before writing (the free addresses, the quota counts) stays true
    until it commits, even with another process writing (``[ec2] workers``). A lock another
    process holds is waited for as any (:mod:`broker.sqliteloop`). A connection marked
    :data:`ONLY_READS` begins without it, so its reads never hold up another process's writes
    (the scheduler reads what to place while workers write launches)."""
    only_reads = conn.get_execution_options().get("cloudbroker_only_reads")
    conn.exec_driver_sql("BEGIN" if only_reads else "BEGIN IMMEDIATE")


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets its pragmas and one connection (one writer).

    A SQLite file's one connection runs its statements on the event loop
    (:mod:`broker.sqliteloop`); an in-memory database keeps aiosqlite's thread.
    """
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(
                url,
                pool_size=1,
                max_overflow=0,
                pool_timeout=60,
                async_creator=sqliteloop.connector(path),
            )
            event.listen(engine.sync_engine, "connect", _sqlite_loop_pragmas)
            event.listen(engine.sync_engine, "begin", _begin_immediate)
            return engine
        engine = create_async_engine(url)  # in memory: SQLAlchemy keeps its one connection
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def _sqlite_reader_pragmas(dbapi_conn: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.close()


def create_reader(url: str, writer: AsyncEngine) -> AsyncEngine:
    """The engine for reads. SQLite in WAL mode lets readers run beside its one writer, so
    describes get a small pool of read-only connections of their own instead of queueing
    behind launches and the scheduler; PostgreSQL reads share the writer's pool."""
    if not is_sqlite(url) or make_url(url).database in (None, "", ":memory:"):
        return writer
    engine = create_async_engine(url, pool_size=4, max_overflow=0, pool_timeout=60)
    event.listen(engine.sync_engine, "connect", _sqlite_reader_pragmas)
    return engine


def _sqlite_inline_pragmas(dbapi_conn: Any, record: Any) -> None:
    _sqlite_reader_pragmas(dbapi_conn, record)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=0")  # never wait on the event loop: hand off instead
    cur.close()


class Reads:
    """Runs read-only units of work (sync functions of a Connection), at most one hand-off each.

    On a SQLite file the unit runs right on the calling thread (the event loop) on a read-only
    pysqlite connection: a WAL reader does not wait for the writer, and the statements of a
    describe take less time in SQLite than one hand-off to a thread costs (on two loaded
    cores a thread hop costs milliseconds; the same read on the loop, tens of microseconds).
    That connection never waits for a lock (``busy_timeout=0``): in the rare moments SQLite
    says busy (another connection recovering the WAL), the unit runs again in a small thread
    pool whose connections wait as the writer's do. Elsewhere (PostgreSQL, in-memory SQLite)
    the unit runs through the async engine's ``run_sync``, its statements awaited as usual.
    """

    def __init__(self, url: str, fallback: AsyncEngine, threads: int = 2) -> None:
        self._fallback = fallback
        self._inline: Engine | None = None
        self._local = threading.local()
        self._opened: list[Connection] = []
        self._waiting: Engine | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        database = make_url(url).database
        if is_sqlite(url) and database not in (None, "", ":memory:"):
            sync = make_url(url).set(drivername="sqlite")
            args = {"check_same_thread": False}
            self._inline = create_sync_engine(
                sync, pool_size=1, max_overflow=15, pool_timeout=5, connect_args=args
            )
            event.listen(self._inline, "connect", _sqlite_inline_pragmas)
            self._waiting = create_sync_engine(
                sync, pool_size=threads, max_overflow=0, connect_args=args
            )
            event.listen(self._waiting, "connect", _sqlite_reader_pragmas)
            self._pool = concurrent.futures.ThreadPoolExecutor(threads, "cloudbroker-read")

    def _loop_connection(self) -> Connection:
        """This thread's own read connection, kept open (one per event loop's thread)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            assert self._inline is not None
            conn = self._local.conn = self._inline.connect()
            self._opened.append(conn)
            self._local.generation = len(self._opened)
        return conn

    def version(self) -> tuple[int, int] | None:
        """A value that changes whenever anything is committed to the database, by this
        process's writer or by another process; None where there is none to read (PostgreSQL,
        in-memory SQLite). It is SQLite's ``PRAGMA data_version`` on this thread's read
        connection (which never writes), paired with which connection that is, since each
        connection counts on its own. Read it before the reads whose result it labels."""
        if self._inline is None:
            return None
        local = self._local
        conn: Connection | None = getattr(local, "conn", None)
        # (generation, cursor): a cursor kept for this connection, the statement ready in it
        kept: tuple[int, Any] | None = getattr(local, "version_cursor", None)
        if (
            kept is None
            or conn is None
            or conn.closed
            or conn.invalidated
            or kept[0] != local.generation
        ):
            conn = self._loop_connection()
            raw = conn.connection.dbapi_connection
            assert raw is not None
            kept = local.version_cursor = (local.generation, raw.cursor())
        row = kept[1].execute("PRAGMA data_version").fetchone()
        return kept[0], int(row[0])

    def _on_loop(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` on this thread's own connection."""
        conn = self._loop_connection()
        try:
            return fn(conn)
        finally:
            if not conn.invalidated:
                conn.rollback()  # end the read: a WAL snapshot held open stops checkpoints

    @staticmethod
    def _call(engine: Engine, fn: Callable[[Connection], T]) -> T:
        with engine.connect() as conn:
            return fn(conn)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` on a read connection; what it returns. ``fn`` must not write."""
        if self._inline is None or self._waiting is None or self._pool is None:
            async with self._fallback.connect() as aconn:
                return await aconn.run_sync(fn)
        try:
            return self._on_loop(fn)
        except OperationalError as exc:
            if not _busy(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, self._waiting, fn)

    def close(self) -> None:
        for conn in self._opened:
            conn.close()
        self._opened.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for engine in (self._inline, self._waiting):
            if engine is not None:
                engine.dispose()


def _busy(exc: OperationalError) -> bool:
    """SQLite's 'database is locked' / 'database table is locked' (SQLITE_BUSY, _LOCKED)."""
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


def _alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    from alembic import command

    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, off the event loop."""
    await asyncio.to_thread(upgrade_sync, url, revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = create_sync_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
