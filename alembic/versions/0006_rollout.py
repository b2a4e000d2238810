"""rollout: audit log, activity counts for the progress report, portals' names and departments

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 06:00:00

Every administrative action (bot command, provisioning API, migration plan) is recorded in
``audit_log``; ``activity`` counts messages per room, day, side and (pseudonymous) person
for ``bridge report``; a portal remembers its name, alias and the plan's department.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(255)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("portal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("alias", _ID, nullable=True))
        batch_op.add_column(sa.Column("department", sa.Text(), nullable=True))
    op.create_table(
        "audit_log",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", _ID, nullable=False),
        sa.Column("via", sa.String(32), nullable=False),
        sa.Column("room_id", _ID, nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_room", "audit_log", ["room_id", "at"])
    op.create_table(
        "activity",
        sa.Column("room_id", _ID, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("side", sa.String(32), nullable=False),
        sa.Column("person", sa.String(32), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", "day", "side", "person", name=op.f("pk_activity")),
    )
    op.create_index("ix_activity_day", "activity", ["day"])


def downgrade() -> None:
    op.drop_index("ix_activity_day", table_name="activity")
    op.drop_table("activity")
    op.drop_index("ix_audit_log_room", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    with op.batch_alter_table("portal", schema=None) as batch_op:
        batch_op.drop_column("department")
        batch_op.drop_column("alias")
        batch_op.drop_column("name")
