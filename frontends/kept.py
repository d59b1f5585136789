"""Answers kept while the database is unchanged, for the frontends whose clients poll.

Decides when a frontend may answer a read from what it answered before: only for the same key
(the frontend makes it from the caller and the request) and only while the database's version
(:meth:`broker.db.Reads.version`, read before the answer's reads) is the one the answer was
made at. Any commit, by this process or another, changes the version, so every kept answer goes
stale at once; nothing is kept where the database has no version to read (PostgreSQL). At most
``size`` answers are kept, the least recently used dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")
Version = tuple[int, int]


class Kept(Generic[V]):
    __slots__ = ("_items", "size")

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, tuple[Version, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, version: Version | None) -> V | None:
        """What was kept for ``key`` at ``version``, if anything."""
        if version is None:
            return None
        hit = self._items.get(key)
        if hit is None or hit[0] != version:
            return None
        self._items.move_to_end(key)
        return hit[1]

    def keep(self, key: Hashable, version: Version | None, value: V) -> None:
        """Keep ``value`` as the answer to ``key`` made at ``version``."""
        if version is None or self.size <= 0:
            return
        self._items[key] = (version, value)
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
