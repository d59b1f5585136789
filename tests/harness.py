"""A service on its own event loop in a thread, for tests that drive it with blocking clients
(boto3, raw HTTP, a browser) from the test's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

#: ``start(ready, holder)``: sets up, puts what the tests need and an asyncio.Event under
#: ``holder["stop"]``, sets ``ready``, then runs until that event is set, and cleans up.
Start = Callable[[threading.Event, dict[str, Any]], Coroutine[Any, Any, None]]


def in_thread(start: Start, name: str, timeout: float = 60) -> Iterator[dict[str, Any]]:
    """Run ``start`` in a daemon thread; yield its ``holder`` once ready; stop it after. A
    failure while starting fails the test; one while stopping fails its teardown."""
    ready = threading.Event()
    holder: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        await start(ready, holder)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    assert ready.wait(timeout), f"{name} did not start"
    if failure:
        raise failure[0]
    try:
        yield holder
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        if failure:
            raise failure[0]
