"""people: identity links between remote identities and Matrix accounts, and pending claims

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:30:00

``identity_link`` ties a Slack user or an email address to a person's own Matrix account
(set by an admin, or by the person with a one-time code: ``identity_claim``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(255)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "identity_link",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("matrix_user_id", _ID, nullable=False),
        sa.Column("network", sa.String(32), nullable=False),
        sa.Column("remote_id", _ID, nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("proven_by", sa.String(16), nullable=False),
        sa.Column("created_by", _ID, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_link")),
        sa.UniqueConstraint("network", "remote_id",
                            name=op.f("uq_identity_link_network_remote_id")),
    )
    op.create_index("ix_identity_link_matrix_user", "identity_link", ["matrix_user_id"])
    op.create_table(
        "identity_claim",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("matrix_user_id", _ID, nullable=False),
        sa.Column("network", sa.String(32), nullable=False),
        sa.Column("remote_id", _ID, nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("code_hash", sa.String(128), nullable=False),
        sa.Column("tries_left", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_claim")),
    )
    op.create_index("ix_identity_claim_matrix_user", "identity_claim", ["matrix_user_id"])


def downgrade() -> None:
    op.drop_index("ix_identity_claim_matrix_user", table_name="identity_claim")
    op.drop_table("identity_claim")
    op.drop_index("ix_identity_link_matrix_user", table_name="identity_link")
    op.drop_table("identity_link")
