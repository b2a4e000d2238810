"""The bridge's in-process caches have a size and an age bound, and forgetting loses nothing.

BoundedCache on its own (a clock in the test's hand); mautrix's state store as the Matrix side
bounds it; and a bridge whose caches hold one entry each, relaying several puppets in two
rooms through a real Synapse: every message arrives under its author, a changed name too.
"""

from __future__ import annotations

import uuid

import pytest
from mautrix.types import (
    EventType,
    Membership,
    MemberStateEventContent,
    PowerLevelStateEventContent,
    RoomID,
    StateEvent,
    UserID,
)

from bridge.core import hub as hub_module
from bridge.core.cache import BoundedCache
from bridge.matrix import side as side_module
from bridge.matrix.side import CacheStateStore
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from tests.conftest import Homeserver, RunningBridge


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bounded_cache_keeps_the_most_recently_used() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_items=2, max_age_seconds=60, clock=Clock())
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "a" is now more recent than "b"
    cache.set("c", 3)
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    cache.set("a", 10)  # setting again replaces, and does not grow
    assert len(cache) == 2 and cache.get("a") == 10
    assert cache.pop("a") == 10 and cache.get("a") is None and len(cache) == 1
    assert cache.pop("missing", 7) == 7
    assert cache.get("missing", 5) == 5


def test_bounded_cache_forgets_what_is_too_old() -> None:
    clock = Clock()
    cache: BoundedCache[str, str] = BoundedCache(max_items=10, max_age_seconds=30, clock=clock)
    cache.set("old", "x")
    clock.now += 20
    cache.set("young", "y")
    assert cache.get("old") == "x"  # reading does not make an entry younger
    clock.now += 11
    assert cache.get("old") is None and cache.pop("old") is None
    assert cache.get("young") == "y"
    clock.now += 20
    assert cache.pop("young") is None and len(cache) == 0


def test_bounded_cache_refuses_no_bound() -> None:
    with pytest.raises(ValueError):
        BoundedCache(max_items=0, max_age_seconds=1)
    with pytest.raises(ValueError):
        BoundedCache(max_items=1, max_age_seconds=0)


async def test_state_store_holds_only_the_rooms_last_seen() -> None:
    store = CacheStateStore(max_rooms=4, max_users=8, max_age_seconds=3600)
    user = UserID("@anna:bridge.test")
    for i in range(50):
        await store.update_state(StateEvent(
            type=EventType.ROOM_MEMBER, room_id=RoomID(f"!r{i}:bridge.test"),
            event_id=f"$e{i}", sender=user, timestamp=0, state_key=user,
            content=MemberStateEventContent(membership=Membership.JOIN)))
        await store.registered(UserID(f"@puppet{i}:bridge.test"))
    assert len(store.members) <= 5  # the bound, plus the quarter it may run over
    assert await store.is_joined(RoomID("!r49:bridge.test"), user)
    assert not await store.is_joined(RoomID("!r0:bridge.test"), user)  # forgotten: unknown
    assert len(store._registered) <= 10  # the same for puppets known to be registered


async def test_a_bridge_with_tiny_caches_relays_everyone_correctly(
        homeserver: Homeserver, sqlite_url: str, admin: MatrixTestClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for module, name in ((hub_module, "PROFILE_CACHE_MAX_ITEMS"),
                         (side_module, "CACHE_MAX_USERS"), (side_module, "CACHE_MAX_ROOMS")):
        monkeypatch.setattr(module, name, 1)
    running = RunningBridge(homeserver, homeserver.config(sqlite_url))
    await running.start()
    try:
        hub = running.hub
        rooms = {}
        for remote in ("C1", "C2"):
            rooms[remote] = await open_room(homeserver.bot, admin, name=remote, bot_power=100)
            await command(homeserver.bot, admin, rooms[remote], f"!bridge link test {remote}",
                          expect="Linked")
        authors = [("U1", "Ute Müller"), ("U2", "Ben Weber"), ("U3", "Carla Neu"),
                   ("U1", "Ute Neumann")]  # Ute, renamed after she was pushed out
        sent = []
        for i, (remote_user, name) in enumerate(authors * 2):
            remote = ("C1", "C2")[i % 2]
            puppet = await hub.ensure_puppet("test", remote_user, name)
            text = f"{name} {i} {uuid.uuid4().hex[:6]}"
            await hub.post_to_room(network="test", dedup_key=f"{remote}/{text}",
                                   room_id=rooms[remote], sender=puppet,
                                   content={"msgtype": "m.text", "body": text},
                                   remote_space=remote, remote_id=text)
            sent.append((rooms[remote], puppet, text))
        for room, puppet, text in sent:
            event = await admin.wait_for_event(
                room, lambda e, t=text: e["content"].get("body") == t, timeout=20)
            assert event["sender"] == puppet
        for room in rooms.values():
            members = await admin.get_joined_members(room)
            ute = hub.connectors["test"].puppet_user_id("U1")
            assert members[ute]["display_name"] == "Ute Neumann"
        matrix = running.bridge._matrix  # type: ignore[union-attr]
        assert len(hub._profiles) <= 1 and len(matrix._intents) <= 1
        assert len(matrix._profiles_set) <= 1
    finally:
        await running.stop()


async def test_power_levels_forgotten_between_fetch_and_check_are_no_refusal() -> None:
    # mautrix fetches a room's power levels, then its create event, then checks: another
    # room's state arriving in between may push the first room out of a small cache. Unknown
    # must not read as "power level too low" (which would fail the delivery for good).
    store = CacheStateStore(max_rooms=1, max_users=1, max_age_seconds=3600)
    room, other = RoomID("!a:bridge.test"), RoomID("!b:bridge.test")
    puppet = UserID("@test_u1:bridge.test")
    await store.set_power_levels(room, PowerLevelStateEventContent(users={}, events_default=0))
    assert await store.has_power_level(room, puppet, EventType.ROOM_MESSAGE)
    for r in (other, RoomID("!c:bridge.test")):
        await store.update_state(StateEvent(
            type=EventType.ROOM_MEMBER, room_id=r, event_id=f"$m{r}", sender=puppet,
            timestamp=0, state_key=puppet,
            content=MemberStateEventContent(membership=Membership.JOIN)))
    assert not await store.has_power_levels_cached(room)  # forgotten
    assert await store.has_power_level(room, puppet, EventType.ROOM_MESSAGE)
    # What is known still counts.
    await store.set_power_levels(room, PowerLevelStateEventContent(users={}, events_default=50))
    assert not await store.has_power_level(room, puppet, EventType.ROOM_MESSAGE)
