"""Queries of the email connector: subscribers, mail threads, a link's mail policy."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bridge.db.erasure import ErasedPerson
from bridge.db.models import Link, MessageMapping
from bridge.db.queues import insert_ignoring_conflicts
from bridge.email.models import EmailSubscriber, EmailThread

if TYPE_CHECKING:
    from bridge.db.engine import Reader


@dataclass(slots=True)
class Subscriber:
    address: str
    display_name: str | None
    status: str
    bounces: int


def _subscriber(row: EmailSubscriber) -> Subscriber:
    return Subscriber(address=row.address, display_name=row.display_name, status=row.status,
                      bounces=row.bounces)


async def subscribers(session: AsyncSession, room_id: str,
                      active_only: bool = False) -> list[Subscriber]:
    query = select(EmailSubscriber).where(EmailSubscriber.room_id == room_id)
    if active_only:
        query = query.where(EmailSubscriber.status == "active")
    rows = await session.scalars(query.order_by(EmailSubscriber.address))
    return [_subscriber(r) for r in rows]


_ACTIVE_ADDRESSES = select(EmailSubscriber.__table__.c.address).where(
    EmailSubscriber.__table__.c.room_id == bindparam("room_id"),
    EmailSubscriber.__table__.c.status == "active").order_by(
    EmailSubscriber.__table__.c.address)


async def active_addresses(session: Reader, room_id: str) -> list[str]:
    """The addresses a room message is mailed to, and nothing else: a room may have
    thousands of subscribers, whose ORM objects would cost a kilobyte or more each."""
    return list(await session.scalars(_ACTIVE_ADDRESSES, {"room_id": room_id}))


_SUBSCRIBER = select(*(EmailSubscriber.__table__.c[name] for name in (
    "address", "display_name", "status", "bounces"))).where(
    EmailSubscriber.__table__.c.room_id == bindparam("room_id"),
    EmailSubscriber.__table__.c.address == bindparam("address"))


async def get_subscriber(session: Reader, room_id: str, address: str) -> Subscriber | None:
    # Built once, on the table: asked for every mail that comes in (on a plain connection:
    # an ORM session's bookkeeping costs more than the look-up).
    row = (await session.execute(_SUBSCRIBER, {"room_id": room_id,
                                               "address": address.lower()})).first()
    return Subscriber(address=row.address, display_name=row.display_name, status=row.status,
                      bounces=row.bounces) if row else None


async def subscribe(session: AsyncSession, room_id: str, address: str,
                    display_name: str | None, created_by: str) -> bool:
    """True if new; an existing (perhaps paused) subscriber is reactivated instead."""
    result = await session.execute(
        insert_ignoring_conflicts(session, EmailSubscriber).values(
            room_id=room_id, address=address.lower(), display_name=display_name,
            status="active", bounces=0, created_by=created_by, created_at=time.time()))
    if result.rowcount:  # type: ignore[attr-defined]
        return True
    values: dict[str, Any] = {"status": "active", "bounces": 0, "last_error": None}
    if display_name:
        values["display_name"] = display_name
    await session.execute(update(EmailSubscriber).where(
        EmailSubscriber.room_id == room_id, EmailSubscriber.address == address.lower())
        .values(**values))
    return False


async def unsubscribe(session: AsyncSession, room_id: str, address: str) -> bool:
    result = await session.execute(delete(EmailSubscriber).where(
        EmailSubscriber.room_id == room_id, EmailSubscriber.address == address.lower()))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def record_delivery_failure(session: AsyncSession, room_id: str, address: str,
                                  error: str, max_bounces: int) -> bool:
    """Count a hard bounce; True exactly when this one paused the subscriber."""
    row = await session.scalar(select(EmailSubscriber).where(
        EmailSubscriber.room_id == room_id, EmailSubscriber.address == address.lower()))
    if row is None or row.status != "active":
        return False
    row.bounces += 1
    row.last_error = error[:2000]
    if row.bounces >= max_bounces:
        row.status = "paused"
        return True
    return False


async def clear_bounces(session: AsyncSession, room_id: str, address: str) -> None:
    await session.execute(update(EmailSubscriber).where(
        EmailSubscriber.room_id == room_id, EmailSubscriber.address == address.lower(),
        EmailSubscriber.bounces > 0).values(bounces=0, last_error=None))


# --- threads -----------------------------------------------------------------------------


@dataclass(slots=True)
class MailThread:
    thread_key: str
    room_id: str
    root_event_id: str | None
    root_message_id: str
    topic: str


def _thread(row: EmailThread) -> MailThread:
    return MailThread(thread_key=row.thread_key, room_id=row.room_id,
                      root_event_id=row.root_event_id, root_message_id=row.root_message_id,
                      topic=row.topic)


_THREAD = select(*(EmailThread.__table__.c[name] for name in (
    "thread_key", "room_id", "root_event_id", "root_message_id", "topic"))).where(
    EmailThread.__table__.c.thread_key == bindparam("thread_key"))


async def get_thread(session: Reader, thread_key: str) -> MailThread | None:
    # Built once, on the table: asked for every reply that comes in.
    row = (await session.execute(_THREAD, {"thread_key": thread_key})).first()
    return MailThread(thread_key=row.thread_key, room_id=row.room_id,
                      root_event_id=row.root_event_id, root_message_id=row.root_message_id,
                      topic=row.topic) if row else None


async def thread_by_root(session: AsyncSession, root_event_id: str) -> MailThread | None:
    row = await session.scalar(select(EmailThread).where(
        EmailThread.root_event_id == root_event_id))
    return _thread(row) if row else None


async def thread_by_message_id(session: AsyncSession, room_id: str,
                               message_id: str) -> MailThread | None:
    row = await session.scalar(select(EmailThread).where(
        EmailThread.room_id == room_id, EmailThread.root_message_id == message_id))
    return _thread(row) if row else None


_MAILED_AS = select(MessageMapping.__table__.c.remote_id).where(
    MessageMapping.__table__.c.event_id == bindparam("event_id"),
    MessageMapping.__table__.c.network == bindparam("network"),
).order_by(MessageMapping.__table__.c.id).limit(1)


async def mailed_as(session: Reader, event_id: str, network: str) -> str | None:
    """The Message-ID a Matrix event was mailed as or came in as (its first mapping to
    ``network``), if any."""
    value = await session.scalar(_MAILED_AS, {"event_id": event_id, "network": network})
    return str(value) if value is not None else None


async def add_thread(session: AsyncSession, *, thread_key: str, room_id: str,
                     root_event_id: str | None, root_message_id: str, topic: str) -> None:
    await session.execute(insert_ignoring_conflicts(session, EmailThread), {
        "thread_key": thread_key, "room_id": room_id, "root_event_id": root_event_id,
        "root_message_id": root_message_id, "topic": topic, "created_at": time.time()})


# --- link settings (the room's mail policy) ----------------------------------------------


async def update_link_settings(session: AsyncSession, link_id: int,
                               changes: dict[str, Any]) -> dict[str, Any]:
    row = await session.get(Link, link_id)
    if row is None:
        raise LookupError(link_id)
    settings = json.loads(row.settings or "{}")
    settings.update(changes)
    row.settings = json.dumps(settings)
    return settings


# --- erasure (bridge erase --email) ------------------------------------------------------


async def erase_person(session: AsyncSession, person: ErasedPerson,
                       dry_run: bool) -> dict[str, int]:
    """Their subscriptions, and the threads their mails started (subject, Message-ID)."""
    async def remove(table: Any, where: Any) -> int:
        if dry_run:
            return int(await session.scalar(select(func.count()).select_from(table)
                                            .where(where)) or 0)
        result = await session.execute(delete(table).where(where))
        return int(result.rowcount)  # type: ignore[attr-defined]

    removed = {"email_subscriber": await remove(
        EmailSubscriber.__table__, EmailSubscriber.address.in_(person.remote_ids))}
    removed["email_thread"] = await remove(
        EmailThread.__table__, EmailThread.root_message_id.in_(person.message_ids)) \
        if person.message_ids else 0
    return removed
