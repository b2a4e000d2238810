"""Message formatting between Slack (mrkdwn, Block Kit) and Matrix (HTML), by direction.

- ``from_slack``: a Slack message's mrkdwn ``text`` and Block Kit ``blocks`` as Matrix
  HTML and plain body (``from_slack_mrkdwn`` reads mrkdwn, ``from_slack_pieces`` holds
  what both share);
- ``to_slack``: Matrix HTML (or the plain body) as Slack mrkdwn;
- emoji names both ways live in ``bridge.slack.emoji``, which its callers import when they
  first meet an emoji: its tables and the ``emoji`` package are 3.5 MB of resident memory
  (issue 15: idle RSS).

Pure functions: no I/O, nothing cached per workspace, and no input makes them
raise (Slack and Matrix clients both send odd things; a message that cannot be
formatted well is still delivered as text).
"""

from typing import Any

from bridge.slack.format.from_slack import slack_to_matrix
from bridge.slack.format.interface import MatrixResolver, MatrixText, SlackResolver
from bridge.slack.format.to_slack import emote_to_slack, matrix_to_slack

__all__ = [
    "MatrixResolver",
    "MatrixText",
    "SlackResolver",
    "emote_to_slack",
    "matrix_to_slack",
    "slack_emoji_to_unicode",
    "slack_to_matrix",
    "unicode_to_slack_emoji",
]


def __getattr__(name: str) -> Any:
    # The emoji functions are this package's names too, imported when first asked for.
    if name in ("slack_emoji_to_unicode", "unicode_to_slack_emoji"):
        from bridge.slack import emoji

        return getattr(emoji, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
