"""outbox: when an item failed for good, and whether its room was told

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 03:00:00

``!bridge failed`` lists failed deliveries newest first (``failed_at``); a failed item put
back by ``!bridge retry`` that fails again is not announced a second time
(``failure_reported``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("failure_reported", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("failure_reported")
        batch_op.drop_column("failed_at")
