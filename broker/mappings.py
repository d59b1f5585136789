"""How an operator's translation table maps one of our names to a target's.

Tables such as a target's ``image_map`` and ``flavor_map`` are read the same way by placement
(which targets can take an instance) and by the backend that launches it: the exact key first,
else the catch-all ``"*"``, whose value ``"*"`` means "the same name there".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def mapped_name(table: Mapping[str, Any], ours: str) -> str | None:
    """The target's name for ``ours`` in ``table``, or None when the table has no entry."""
    hit = table.get(ours)
    if hit is None:
        hit = table.get("*")
        if hit == "*":
            return ours
    return str(hit) if hit is not None else None
