"""``serve`` hands what starting made to the permanent generation before it takes requests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from pathlib import Path

from broker.app import serve
from broker.config import load
from tests.broker.test_serve import write_config


async def test_serving_starts_with_the_start_up_heap_frozen(tmp_path: Path) -> None:
    gc.unfreeze()
    config = load(str(write_config(tmp_path)))
    ready = asyncio.Event()
    task = asyncio.create_task(serve(config, ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        # modules, tables, compiled statements: tens of thousands of objects at least
        assert gc.get_freeze_count() > 10_000
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
