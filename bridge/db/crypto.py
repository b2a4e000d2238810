"""What the encryption of rooms needs to know from the bridge's own tables.

The keys themselves (Olm account, Olm and Megolm sessions, devices) are kept by mautrix's
crypto store in its own tables (``crypto_*``) of the same database: see bridge/matrix/crypto.py.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.models import Link, Portal


async def portal_room_ids(session: AsyncSession) -> list[str]:
    """Every room the bot takes part in as a portal (linked or not, direct chats too)."""
    return list(await session.scalars(select(Portal.room_id)))


async def linked_room_ids(session: AsyncSession) -> list[str]:
    """The rooms that have at least one link."""
    return list(await session.scalars(select(Link.room_id).distinct()))
