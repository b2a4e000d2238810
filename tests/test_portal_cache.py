"""The portals and links kept in memory (bridge/db/portal_cache.py): a relay delivery goes
only to a link its room still has, whatever was asked before the link changed, on SQLite
(answers kept) and PostgreSQL (every question read)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from bridge.config import parse_config
from bridge.core.connector import Connector
from bridge.core.hub import Hub
from bridge.db import store
from bridge.db.engine import Database
from bridge.db.portal_cache import PortalCache
from bridge.db.queues import Delivery
from bridge.db.store import LinkInfo
from bridge.email.store import update_link_settings

ROOM = "!jugendamt:bridge.test"


async def _link(db: Database, remote_id: str, room_id: str = ROOM,
                **settings: Any) -> LinkInfo:
    async with db.transaction() as session:
        return await store.add_link(session, room_id=room_id, network="test",
                                    remote_id=remote_id, remote_name=None,
                                    created_by="@admin:bridge.test", settings=settings)


@contextmanager
def _statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements sent to the database meanwhile."""
    sent: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", note)


async def test_sqlite_answers_again_without_a_read_and_postgres_reads_each_time(
        db: Database) -> None:
    link = await _link(db, "C1", channel="C1")
    cache = PortalCache(db)
    assert cache.enabled is not db.postgres
    assert await cache.link_in_room(ROOM, link.id) == link
    with _statements(db) as sent:
        again = await cache.link_in_room(ROOM, link.id)
        portals, links = await cache.portals_and_links({ROOM, "!elsewhere:bridge.test"})
    assert again == link
    assert list(portals) == [ROOM] and links == {ROOM: [link], "!elsewhere:bridge.test": []}
    assert len(sent) == (2 if db.postgres else 1)  # the room without a portal: read once
    with _statements(db) as sent:
        await cache.portals_and_links({"!elsewhere:bridge.test"})
    assert len(sent) == (1 if db.postgres else 0)


async def test_callers_may_change_what_they_are_given(db: Database) -> None:
    await _link(db, "C1")
    cache = PortalCache(db)
    async with db.reading() as connection:
        stored = await store.portals_and_links(connection, {ROOM})
    portals, links = await cache.portals_and_links({ROOM})
    assert (portals, links) == stored
    # Routing changes its view when the bot leaves a room in the middle of a batch.
    portals.pop(ROOM)
    links[ROOM] = []
    assert await cache.portals_and_links({ROOM}) == stored


async def test_an_unlink_a_new_link_and_new_settings_are_seen_at_once(db: Database) -> None:
    cache = PortalCache(db)
    first = await _link(db, "C1", channel="C1")
    assert await cache.link_in_room(ROOM, first.id) == first

    async with db.transaction() as session:
        await store.remove_link(session, ROOM, "test", "C1")
    assert await cache.link_in_room(ROOM, first.id) is None

    second = await _link(db, "C2", channel="C2")
    assert (await cache.portals_and_links({ROOM}))[1] == {ROOM: [second]}

    async with db.transaction() as session:
        await update_link_settings(session, second.id, {"policy": "closed"})
    changed = await cache.link_in_room(ROOM, second.id)
    assert changed is not None and changed.settings == {"channel": "C2", "policy": "closed"}

    async with db.transaction() as session:  # the bot left the room
        await store.forget_portal(session, ROOM)
    assert await cache.portals_and_links({ROOM}) == ({}, {ROOM: []})


async def test_what_is_read_while_an_unlink_is_not_committed_is_not_kept(
        db: Database) -> None:
    cache = PortalCache(db)
    link = await _link(db, "C1")
    async with db.transaction() as session:
        await store.remove_link(session, ROOM, "test", "C1")
        await session.flush()
        # Not committed yet: the link is still there for everyone else.
        assert await cache.link_in_room(ROOM, link.id) == link
    assert await cache.link_in_room(ROOM, link.id) is None


async def test_a_read_that_outlasts_an_unlink_is_not_kept(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(sqlite_url)  # (on PostgreSQL nothing is kept at all)
    await db.upgrade()
    try:
        await _outlasting_read(db, monkeypatch)
    finally:
        await db.close()


async def _outlasting_read(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PortalCache(db)
    link = await _link(db, "C1")
    read_done, go_on = asyncio.Event(), asyncio.Event()
    read = store.portals_and_links

    async def slow_read(*args: Any) -> Any:
        answer = await read(*args)
        read_done.set()
        await go_on.wait()  # the unlink commits meanwhile
        return answer

    monkeypatch.setattr(store, "portals_and_links", slow_read)
    async with db.transaction() as session:
        await store.remove_link(session, ROOM, "test", "C1")
        await session.flush()  # the DELETE is sent; the commit comes later
        asking = asyncio.create_task(cache.link_in_room(ROOM, link.id))
        await read_done.wait()
    go_on.set()
    assert await asking == link  # read before the commit, as a delivery already under way
    monkeypatch.setattr(store, "portals_and_links", read)
    assert await cache.link_in_room(ROOM, link.id) is None


async def test_a_rolled_back_unlink_leaves_the_link(db: Database) -> None:
    cache = PortalCache(db)
    link = await _link(db, "C1")
    assert await cache.link_in_room(ROOM, link.id) == link
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await store.remove_link(session, ROOM, "test", "C1")
            raise RuntimeError("the unlink fails half-way")
    assert await cache.link_in_room(ROOM, link.id) == link
    with _statements(db) as sent:  # and it is kept again afterwards
        await cache.link_in_room(ROOM, link.id)
        await cache.link_in_room(ROOM, link.id)
    assert len(sent) == (2 if db.postgres else 0)


class _Network(Connector):
    network = "test"
    display_name = "Test"

    def __init__(self) -> None:
        super().__init__("test_", "bridge.test")
        self.not_started = None
        self.sent: list[tuple[str, str | None]] = []

    async def deliver(self, hub: Hub, delivery: Delivery, link: LinkInfo | None) -> str | None:
        if link is None:
            return None  # unlinked while the message waited
        self.sent.append((delivery.payload["event"]["content"]["body"], link.remote_id))
        return "posted"

    async def resolve_link(self, *_: Any, **__: Any) -> Any:
        raise NotImplementedError


def _relay(link_id: int, body: str) -> Delivery:
    return Delivery(id=1, lane=f"test:{ROOM}", network="test", room_id=ROOM, kind="relay",
                    payload={"link_id": link_id, "event": {
                        "type": "m.room.message", "sender": "@anna:bridge.test",
                        "content": {"msgtype": "m.text", "body": body}}},
                    attempts=0, created_at=0.0)


async def test_a_message_waiting_for_a_link_that_was_unlinked_is_not_sent(
        db: Database, database_url: str) -> None:
    network = _Network()
    config = parse_config({"homeserver": {"domain": "bridge.test",
                                          "address": "http://127.0.0.1:9"},
                           "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
                           "database": {"url": database_url}}, environ={})
    hub = Hub(config, db, [network])
    link = await _link(db, "C1")
    assert await hub.deliver(_relay(link.id, "Guten Morgen")) == "posted"
    async with db.transaction() as session:
        await store.remove_link(session, ROOM, "test", "C1")
    assert await hub.deliver(_relay(link.id, "Noch da?")) is None
    assert network.sent == [("Guten Morgen", "C1")]
