"""test network: its notes table, on a branch of its own

Revision ID: test0001
Revises: 0005
Create Date: 2026-12-05 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "test0001"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = ("test",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recording_note",
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_recording_note")),
    )


def downgrade() -> None:
    op.drop_table("recording_note")
