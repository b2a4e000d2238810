"""slack: its own migration branch starts here

Revision ID: slack0001
Revises: 0005
Create Date: 2026-12-05 04:00:00

Until issue 10 all migrations were one shared history;
slack_channel was created by the shared 0003.
Those ran everywhere and stay where they are, so existing databases upgrade in place. From
here on slack's schema changes are revisions in this folder, on the branch labelled
"slack" (`down_revision` the previous one here); `bridge db upgrade` runs every branch.
This first one changes nothing.
"""

from collections.abc import Sequence

revision: str = "slack0001"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = ("slack",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
