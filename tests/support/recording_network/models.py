"""The test network's table, on the core's metadata."""

from __future__ import annotations

from sqlalchemy import Text
from sqlalchemy.orm import Mapped, mapped_column

from bridge.db.models import ID, Base


class RecordingNote(Base):
    """Something the test network remembers about a room."""

    __tablename__ = "recording_note"

    room_id: Mapped[str] = mapped_column(ID, primary_key=True)
    note: Mapped[str] = mapped_column(Text)
