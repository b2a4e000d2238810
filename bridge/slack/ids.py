"""Slack identifiers as the bridge stores them, shared by both directions.

The mapping table and the inbound dedup keys are written by Slack -> Matrix and read by
Matrix -> Slack (and by catch-up), so their shapes live here, in one place.
"""

from __future__ import annotations

from bridge.slack.store import ts_key

NETWORK = "slack"


def space_of(team_id: str, channel_id: str) -> str:
    """The remote_space of a channel's messages in the mapping table."""
    return f"{team_id}:{channel_id}"


def message_key(team_id: str, channel_id: str, ts: str) -> str:
    """The natural key of a Slack message: the live event and catch-up share it."""
    return f"msg:{team_id}:{channel_id}:{ts}"


def ts_ms(ts: str | None) -> int | None:
    """A Slack ts ("1700000000.000100") as Unix milliseconds, for origin_server_ts."""
    if not ts:
        return None
    seconds, micros = ts_key(ts)
    return seconds * 1000 + micros // 1000
