"""A small in-process cache with a size and an age bound.

Every cache of the bridge only saves work (a database write, a homeserver request): losing an
entry costs a repeat of that work, never correctness. Bounding them keeps a bridge that
sees many remote people over months at a steady size, and the age bound makes a stale
entry (a profile changed where the bridge did not hear about it) be looked up again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``max_items`` entries, least recently used dropped first; an entry older than
    ``max_age_seconds`` (since it was set) counts as absent."""

    def __init__(self, max_items: int, max_age_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1 or max_age_seconds <= 0:
            raise ValueError("a BoundedCache needs max_items >= 1 and max_age_seconds > 0")
        self.max_items = max_items
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return default
        stored_at, value = entry
        if self._clock() - stored_at > self.max_age_seconds:
            del self._entries[key]
            return default
        self._entries.move_to_end(key)
        return value

    def set(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def pop(self, key: K, default: V | None = None) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None or self._clock() - entry[0] > self.max_age_seconds:
            return default
        return entry[1]

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included (they go on access, or as
        the least recently used when new ones come)."""
        return len(self._entries)
