"""Email's tables: subscribers and mail threads. A change needs a migration in
bridge/email/migrations/."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from bridge.db.models import ID, Base, BigId


class EmailSubscriber(Base):
    """Someone who receives a room by email and may write into it."""

    __tablename__ = "email_subscriber"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    room_id: Mapped[str] = mapped_column(ID, ForeignKey("portal.room_id", ondelete="CASCADE"))
    # Lower-cased; compared case-insensitively as every MTA does in practice.
    address: Mapped[str] = mapped_column(ID)
    display_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    # active | paused (after repeated hard bounces)
    status: Mapped[str] = mapped_column(String(16), default="active")
    bounces: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(ID)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("room_id", "address"),)


class EmailThread(Base):
    """A Matrix thread as mail sees it: the key in reply addresses, and its subject."""

    __tablename__ = "email_thread"

    thread_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    room_id: Mapped[str] = mapped_column(ID)
    # The Matrix event the thread hangs off; null while it waits in the outbox.
    root_event_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    # Message-ID of the mail that started it (ours or the sender's), for In-Reply-To.
    root_message_id: Mapped[str] = mapped_column(String(998))
    topic: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_email_thread_root", "root_event_id"),)
