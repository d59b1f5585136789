"""Group commit: many small results written in one transaction.

Callers submit an item and wait until it is durable. Whoever finds no writer running starts
one; it takes everything submitted by then (up to a batch), writes it in one go, and wakes
those callers; items that arrive meanwhile go in the next batch. One failed batch fails only
its own callers, who then record their results one by one.

A writer made with a ``delay`` (such as :data:`COMMIT_DELAY`, for writes whose callers are
clients waiting on a socket) waits that long before taking the next batch when the last one
held more than one item: callers are arriving concurrently, and those just woken can come
back and share the batch rather than form one of their own. A lone caller never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: how long a launch batch may fill while clients come back with their next request (seconds)
COMMIT_DELAY = 0.001


class GroupCommit(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        max_batch: int = 500,
        *,
        delay: float = 0.0,
    ) -> None:
        self._write = write
        self._max = max_batch
        self._delay = delay
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._last = 0  # items in the batch written last

    async def submit(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run())
        await done

    async def _run(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the callers that are ready now join this batch
            if self._delay and self._last > 1 and len(self._pending) < self._max:
                await asyncio.sleep(self._delay)
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self._last = len(batch)
            try:
                await self._write([item for item, _ in batch])
            except Exception as exc:  # handed to each caller: they decide what failure means
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            except BaseException:  # cancelled (shutdown): no caller waits for ever
                for _, done in [*batch, *self._pending]:
                    if not done.done():
                        done.cancel()
                self._pending = []
                raise
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
