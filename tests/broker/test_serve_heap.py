"""``serve`` hands what starting made to the permanent generation before it takes requests, and
collects the young generation rarely after."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from pathlib import Path

from broker import heap
from broker.app import serve
from broker.config import load
from tests.broker.test_serve import write_config


async def test_serving_starts_with_the_start_up_heap_frozen(tmp_path: Path) -> None:
    gc.unfreeze()
    thresholds = gc.get_threshold()
    config = load(str(write_config(tmp_path)))
    ready = asyncio.Event()
    task = asyncio.create_task(serve(config, ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        # modules, tables, compiled statements: tens of thousands of objects at least
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD > thresholds[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.unfreeze()
        gc.set_threshold(*thresholds)
