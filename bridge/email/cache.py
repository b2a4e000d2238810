"""A small in-process cache with a size and an age bound (LRU by use, entries expire).

The connector's caches only save look-ups (display names); unbounded, they would grow with
every member of every room for as long as the bridge runs, and never notice a change they
were not told about. Same interface as ``BoundedCache(max_items, max_age_seconds)`` with
get/set/pop, so a shared core implementation can replace it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    def __init__(self, max_items: int, max_age_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1 or max_age_seconds <= 0:
            raise ValueError("a bounded cache needs max_items >= 1 and max_age_seconds > 0")
        self.max_items = max_items
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value if present and not older than the age bound; else None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if self._clock() - stored_at > self.max_age_seconds:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)  # the least recently used

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]
