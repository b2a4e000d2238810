"""Remote messages that arrive at the same moment share one transaction (Hub.post_parts):
each is still queued exactly once, in the order it arrived, and one that cannot be stored
fails alone. On SQLite and PostgreSQL, without a homeserver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import json_codec
from bridge.config import parse_config
from bridge.core.hub import Hub, RemotePart
from bridge.db.engine import Database
from bridge.db.models import Activity, OutboxItem

ROOM = "!amt:bridge.test"
PUPPET = "@test_erika:bridge.test"


class Refused(Exception):
    """The connector's own writes for one message fail (a bad value, a bug)."""


@pytest.fixture
async def hub(database_url: str) -> AsyncIterator[Hub]:
    config = parse_config({
        "homeserver": {"domain": "bridge.test", "address": "http://127.0.0.1:9"},
        "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
        "database": {"url": database_url}}, environ={})
    db = Database(database_url)
    await db.upgrade()
    try:
        yield Hub(config, db, [])
    finally:
        await db.close()


async def _post(hub: Hub, text: str, *, refuse: bool = False) -> bool:
    async def also(session: AsyncSession) -> None:
        if refuse:
            raise Refused(text)

    return await hub.post_parts(
        network="test", dedup_key=f"C1/{text}", room_id=ROOM, also=also,
        parts=[RemotePart(sender=PUPPET, content={"msgtype": "m.text", "body": text})])


async def _lane(hub: Hub) -> list[str]:
    """The room's queued messages, in the order the outbox sends them (one lane per room)."""
    async with hub.db.sessions() as session:
        payloads = await session.scalars(select(OutboxItem.payload).where(
            OutboxItem.room_id == ROOM).order_by(OutboxItem.id))
    return [json_codec.loads(payload)["content"]["body"] for payload in payloads]


async def _counted(hub: Hub) -> int:
    async with hub.db.sessions() as session:
        return sum(await session.scalars(select(Activity.messages).where(
            Activity.room_id == ROOM, Activity.side == "test")))


async def test_messages_arriving_together_are_queued_once_each_in_order(hub: Hub) -> None:
    texts = ["eins", "zwei", "drei", "zwei", "vier"]  # "zwei" sent twice by the remote side
    results = await asyncio.gather(*(_post(hub, text) for text in texts))
    assert results == [True, True, True, False, True]
    assert await _lane(hub) == ["eins", "zwei", "drei", "vier"]
    assert await _counted(hub) == 4


async def test_a_message_that_cannot_be_stored_fails_alone(hub: Hub) -> None:
    posts: list[Any] = [_post(hub, "eins"), _post(hub, "zwei", refuse=True),
                        _post(hub, "drei"), _post(hub, "vier")]
    results = await asyncio.gather(*posts, return_exceptions=True)
    assert results[0] is True and results[2] is True and results[3] is True
    assert isinstance(results[1], Refused)  # its caller hears why (an SMTP server: 451)
    assert await _lane(hub) == ["eins", "drei", "vier"]
    assert await _counted(hub) == 3
    # Nothing of it was kept: sent again once the cause is gone, it is taken.
    assert await _post(hub, "zwei") is True
    assert await _post(hub, "eins") is False
    assert await _lane(hub) == ["eins", "drei", "vier", "zwei"]
    assert await _counted(hub) == 4


async def test_a_message_whose_sender_went_away_before_the_commit_is_not_stored(
        hub: Hub) -> None:
    kept = asyncio.ensure_future(_post(hub, "eins"))
    gone = asyncio.ensure_future(_post(hub, "zwei"))
    await asyncio.sleep(0)  # both are waiting for the shared transaction
    gone.cancel()
    assert await kept is True
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await _lane(hub) == ["eins"]
    assert await _post(hub, "zwei") is True


async def test_stopping_waits_for_the_messages_waiting_to_be_written(hub: Hub) -> None:
    """The bridge stops its connectors, then waits here before it closes the database: what
    was handed over for the shared transaction is written (or refused), not cut off."""
    await hub.finish_commits()  # nothing waiting: returns at once
    posts = [asyncio.create_task(_post(hub, text)) for text in ("erste", "zweite")]
    await asyncio.sleep(0)  # both handed over, the transaction not made yet
    assert await _lane(hub) == []
    await hub.finish_commits()
    assert await _lane(hub) == ["erste", "zweite"]
    assert await asyncio.gather(*posts) == [True, True]
