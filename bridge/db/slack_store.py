"""Queries of the Slack connector: how far each linked channel has been bridged."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import Link, SlackChannel


def ts_key(ts: str) -> tuple[int, int]:
    """Slack ts strings ("1700000000.000100") in numeric order; floats would round them."""
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros.ljust(6, "0")[:6] or 0)
    except ValueError:
        return 0, 0


async def cursor(session: AsyncSession, team_id: str, channel_id: str) -> str | None:
    return await session.scalar(
        select(SlackChannel.last_ts).where(SlackChannel.team_id == team_id,
                                           SlackChannel.channel_id == channel_id))


async def advance_cursor(session: AsyncSession, team_id: str, channel_id: str, ts: str) -> None:
    """Move the channel's cursor to ``ts`` unless it is already further."""
    row = await session.get(SlackChannel, (team_id, channel_id))
    if row is None:
        session.add(SlackChannel(team_id=team_id, channel_id=channel_id, last_ts=ts,
                                 updated_at=time.time()))
    elif ts_key(ts) > ts_key(row.last_ts):
        row.last_ts = ts
        row.updated_at = time.time()
    await session.flush()


async def linked_channels(session: AsyncSession,
                          remote_ids: set[str] | None = None) -> dict[str, str]:
    """Linked Slack conversations ("T…:C…") and their rooms; all of them, or those asked."""
    query = select(Link.remote_id, Link.room_id).where(Link.network == "slack")
    if remote_ids is not None:
        query = query.where(Link.remote_id.in_(remote_ids))
    return {row.remote_id: row.room_id for row in await session.execute(query)}
