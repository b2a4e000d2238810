"""The connector's in-process caches stay bounded in size and age (pure unit tests)."""

from __future__ import annotations

import pytest

from bridge.email.cache import BoundedCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_items=2, max_age_seconds=60)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "a" is now the more recently used
    cache.set("c", 3)
    assert len(cache) == 2
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert cache.pop("a") == 1 and cache.pop("a") is None


def test_entries_expire_and_are_dropped_when_read() -> None:
    clock = Clock()
    cache: BoundedCache[str, str] = BoundedCache(max_items=10, max_age_seconds=60, clock=clock)
    cache.set("name", "Erika")
    clock.now = 59
    assert cache.get("name") == "Erika"
    clock.now = 61
    assert cache.get("name") is None and len(cache) == 0
    cache.set("name", "Erika M.")  # a fresh value starts a fresh age
    clock.now = 100
    assert cache.get("name") == "Erika M."


def test_a_cache_without_bounds_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedCache(max_items=0, max_age_seconds=60)
    with pytest.raises(ValueError):
        BoundedCache(max_items=10, max_age_seconds=0)
