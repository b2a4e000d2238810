"""What the Slack formatting hands in and gets back, in both directions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class MatrixText:
    body: str
    """Plain text: styles without markers, code in backticks, lists and quotes as typed."""
    html: str | None
    """``org.matrix.custom.html``; None when it would say no more than the body."""
    mentions: list[str] = field(default_factory=list)
    """Matrix user IDs mentioned, for ``m.mentions.user_ids``."""
    room_mention: bool = False
    """Whether ``@room`` was produced, for ``m.mentions.room``."""


class SlackResolver(Protocol):
    """What the connector knows about the Slack side, looked up before formatting."""

    allow_room_mention: bool
    """Whether <!here>/<!channel>/<!everyone> may become @room in this room."""

    via_server: str | None
    """The homeserver a room link names as ``?via=``: room IDs carry no server any more
    (room version 12), and a client needs one to open a room its user is not in yet."""

    def user(self, slack_user_id: str) -> tuple[str, str] | None:
        """(Matrix user ID, display name), or None for a user the bridge does not know."""
        ...

    def channel(self, slack_channel_id: str) -> tuple[str | None, str] | None:
        """(linked Matrix room ID or None, channel name), or None if unknown."""
        ...


class MatrixResolver(Protocol):
    """What the connector knows about the Matrix side, looked up before formatting."""

    def slack_user(self, matrix_user_id: str) -> str | None:
        """The Slack user ID if this Matrix user is a puppet of one in this workspace."""
        ...

    def display_name(self, matrix_user_id: str) -> str | None: ...

    def slack_channel(self, matrix_room_id: str) -> str | None:
        """The Slack channel ID linked to this room in this workspace, if any."""
        ...


# --------------------------------------------------------------------------
# Shared helpers
