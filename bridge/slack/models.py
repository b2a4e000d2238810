"""Slack's tables: each linked channel's catch-up cursor. A change needs a migration in
bridge/slack/migrations/."""

from __future__ import annotations

from sqlalchemy import Float, String
from sqlalchemy.orm import Mapped, mapped_column

from bridge.db.models import Base


class SlackChannel(Base):
    """How far a linked Slack channel has been bridged: catch-up after a restart or a lost
    connection reads the channel from here on."""

    __tablename__ = "slack_channel"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The newest Slack ts (a "seconds.micros" string) bridged from this channel.
    last_ts: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[float] = mapped_column(Float)
