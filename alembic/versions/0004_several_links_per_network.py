"""a room may have several links of one network (two Slack channels in one room)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 03:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite cannot drop a constraint in place: batch mode copies the table.
    with op.batch_alter_table("link") as batch:
        batch.drop_constraint(op.f("uq_link_room_id_network"), type_="unique")


def downgrade() -> None:
    # Fails (as it should) while a room has two links of one network: unlink one first.
    with op.batch_alter_table("link") as batch:
        batch.create_unique_constraint(op.f("uq_link_room_id_network"), ["room_id", "network"])
