"""The running broker's shared state: configuration, database engine, secret box, and wake-ups.

One :class:`Runtime` is built by ``serve`` (or by a test) and handed to every frontend, the
scheduler and the monitor. It holds no business rules; those live in the service modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from broker import model as m
from broker.auth import Caller, SecretBox, token_digest
from broker.config import Config
from broker.db import Reads, create_engine, create_reader

if TYPE_CHECKING:
    from broker.plugins import BackendRegistry
    from broker.protocols import PolicyFactory
    from broker.workers import CoreLink, WorkerSet


@dataclasses.dataclass(slots=True)
class _Cached:
    caller: Caller
    secret: str
    until: float


class CredentialCache:
    """Access key -> (caller, secret), kept a short while so a signed request costs no query.

    Entries expire after ``ttl`` seconds so a key disabled on another node stops working soon;
    this node drops them at once through :meth:`forget`.
    """

    def __init__(self, ttl: float = 30.0, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._items: dict[str, _Cached] = {}

    def get(self, access_key: str) -> tuple[Caller, str] | None:
        hit = self._items.get(access_key)
        if hit is None or hit.until < time.monotonic():
            return None
        return hit.caller, hit.secret

    def put(self, access_key: str, caller: Caller, secret: str) -> None:
        if len(self._items) >= self._size:
            self._items.clear()
        self._items[access_key] = _Cached(caller, secret, time.monotonic() + self._ttl)

    def forget(self, user_id: str | None = None) -> None:
        if user_id is None:
            self._items.clear()
            return
        for key in [k for k, v in self._items.items() if v.caller.user_id == user_id]:
            del self._items[key]


class Runtime:
    """Everything long-lived that the parts of a running broker share."""

    def __init__(self, config: Config, engine: AsyncEngine | None = None) -> None:
        self.config = config
        self.engine = engine or create_engine(config.database_url)
        self.reader = create_reader(config.database_url, self.engine)
        self.reads = Reads(config.database_url, self.reader)
        self.box = SecretBox.from_file(config.data_path / "secret.key")
        self.credentials = CredentialCache()
        self.scheduler_wake = asyncio.Event()
        self.monitor_wake = asyncio.Event()
        self.backends: BackendRegistry | None = None
        self.policy_factory: PolicyFactory | None = None
        self.clock: Callable[[], float] = time.time
        self.listeners: dict[str, str] = {}
        #: group committers the services make on first use (``"launch"``: instances.launch)
        self.batchers: dict[str, object] = {}
        #: in ``serve``'s own process: the worker processes serving a frontend beside it
        self.workers: WorkerSet | None = None
        #: in a worker process: the way to ``serve``'s own process (:mod:`broker.workers`)
        self.core: CoreLink | None = None

    def wake_scheduler(self) -> None:
        """Have the scheduler look at the database now (in a worker: the core's scheduler)."""
        if self.core is not None:
            self.core.wake_scheduler()
        else:
            self.scheduler_wake.set()

    def forget_credentials(self, user_id: str) -> None:
        """Drop the user's keys from every process's cache: they were disabled or changed."""
        self.credentials.forget(user_id)
        if self.workers is not None:
            self.workers.forget(user_id)

    async def caller_for_key(self, access_key: str) -> tuple[Caller, str] | None:
        """The caller and decrypted secret for an access key, or None if unknown or disabled."""
        hit = self.credentials.get(access_key)
        if hit is not None:
            return hit
        stmt = (
            select(m.User.id, m.User.name, m.User.group_id, m.User.role, m.AccessKey.secret_enc)
            .join(m.AccessKey, m.AccessKey.user_id == m.User.id)
            .where(m.AccessKey.access_key == access_key)
            .where(m.AccessKey.enabled.is_(True), m.User.enabled.is_(True))
        )
        async with self.reader.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        caller = Caller(user_id=row[0], name=row[1], group_id=row[2], role=row[3])
        secret = self.box.open(row[4])
        self.credentials.put(access_key, caller, secret)
        return caller, secret

    async def caller_for_token(self, token: str) -> Caller | None:
        stmt = (
            select(m.User.id, m.User.name, m.User.group_id, m.User.role, m.Token.expires_at)
            .join(m.Token, m.Token.user_id == m.User.id)
            .where(m.Token.digest == token_digest(token), m.User.enabled.is_(True))
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        if row[4] is not None and row[4].timestamp() < self.clock():
            return None
        return Caller(user_id=row[0], name=row[1], group_id=row[2], role=row[3])

    async def aclose(self) -> None:
        if self.backends is not None:
            await self.backends.aclose()
        self.reads.close()
        if self.reader is not self.engine:
            await self.reader.dispose()
        await self.engine.dispose()
