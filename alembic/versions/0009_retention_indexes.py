"""retention: indexes on the times the retention job deletes by

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05 11:00:00

The retention job (bridge/core/retention.py) deletes rows older than ``retention.*`` in
small batches; without an index on their time every batch would read the whole table.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_message_mapping_created", "message_mapping", ["created_at"]),
    ("ix_inbound_key_received", "inbound_key", ["received_at"]),
    ("ix_inbox_received", "inbox", ["received_at"]),
    ("ix_outbox_created", "outbox", ["created_at"]),
)


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
