"""high availability: live processes, leases, claims by holder, held Slack-side deliveries

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 11:00:00

``bridge_process`` has one row per running bridge process, kept alive by its heartbeat:
claims and leases of a process whose row expired are free for the others.
``bridge_lease`` guards work that must run once at a time (catch-up, scheduled jobs).
``outbox.claimed_by`` says which process holds a claim, so its heartbeat can renew them.
``outbox_held`` keeps remote events back, in order, while another process may still be
storing earlier ones (see bridge/core/heartbeat.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(255)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bridge_process",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("intake_watermark", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bridge_process")),
    )
    op.create_table(
        "bridge_lease",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_bridge_lease")),
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
    op.create_index("ix_outbox_claimed_by", "outbox", ["claimed_by"])
    op.create_table(
        "outbox_held",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("lane", sa.String(600), nullable=False),
        sa.Column("network", sa.String(32), nullable=False),
        sa.Column("room_id", _ID, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("sort_key", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_held")),
    )
    op.create_index("ix_outbox_held_received_at", "outbox_held", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_held_received_at", table_name="outbox_held")
    op.drop_table("outbox_held")
    op.drop_index("ix_outbox_claimed_by", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("claimed_by")
    op.drop_table("bridge_lease")
    op.drop_table("bridge_process")
