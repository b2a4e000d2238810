"""email: its own migration branch starts here

Revision ID: email0001
Revises: 0005
Create Date: 2026-12-05 04:00:00

Until issue 10 all migrations were one shared history;
email_subscriber and email_thread were created by the shared 0002.
Those ran everywhere and stay where they are, so existing databases upgrade in place. From
here on email's schema changes are revisions in this folder, on the branch labelled
"email" (`down_revision` the previous one here); `bridge db upgrade` runs every branch.
This first one changes nothing.
"""

from collections.abc import Sequence

revision: str = "email0001"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = ("email",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
