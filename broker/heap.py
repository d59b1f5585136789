"""Decides how a long-running broker process (``serve``, an EC2 worker) keeps its garbage
collector out of the way once it is serving.

What starting made (modules, tables, compiled statements, plugins) lives as long as the process:
:func:`settle` freezes it, out of the collector's sight, so full collections under load skip it.
Requests then allocate and free their objects by reference counting; the few containers each
leaves behind made a young-generation collection every few dozen requests at the default
threshold (700), about a millisecond each, 3% of a launch's CPU. A threshold of
:data:`YOUNG_THRESHOLD` makes those rare; cyclic garbage still goes within that many objects.
"""

from __future__ import annotations

import gc
from typing import Final

#: allocations (less frees) of tracked objects between two young-generation collections
YOUNG_THRESHOLD: Final = 20_000


def settle() -> None:
    """Collect what starting left, freeze the rest, and collect the young generation rarely."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
