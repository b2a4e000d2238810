"""The rules by which catch-up turns "what Slack shows now" versus "what the room has" into
events (bridge/slack/catch_up.py): pure functions, no bridge needed."""

from __future__ import annotations

from typing import Any

from bridge.slack.catch_up import MappedMessage, Window, differences
from bridge.slack.store import ts_key

BOT = "U0APP"


def run(seen: dict[str, dict[str, Any]], mapped: list[MappedMessage],
        window: Window | None = None) -> list[tuple[str, ...]]:
    window = window or Window(oldest=ts_key("100.000000"), newest=ts_key("900.000000"),
                              complete_threads={"300.000000"})
    payloads = differences(team_id="T1", channel="C1", bot_user_id=BOT, run_id="r1",
                           seen=seen, mapped=mapped, window=window,
                           is_own=lambda m: m.get("bot_id") == "B0APP")
    out = []
    for payload in payloads:
        event = payload["event"]
        assert event["channel"] == "C1" and payload["event_id"]
        if event["type"] == "message":
            ts = event.get("deleted_ts") or event["message"]["ts"]
            out.append((event["subtype"], ts))
        else:
            out.append((event["type"], event["item"]["ts"], event["user"], event["reaction"]))
    return out


def test_gone_and_tombstoned_messages_are_deleted_within_the_window_only() -> None:
    mapped = [MappedMessage("200.000000", 150.0), MappedMessage("300.000000", 150.0),
              MappedMessage("050.000000", 40.0),  # before the window: unknown, left alone
              MappedMessage("950.000000", 940.0),  # after the read began: left alone
              MappedMessage("310.000000", 150.0, thread_ts="300.000000"),  # read thread
              MappedMessage("410.000000", 150.0, thread_ts="400.000000"),  # thread not read
              MappedMessage("420.000000", 150.0, thread_ts="")]  # root unknown
    seen = {"300.000000": {"ts": "300.000000", "subtype": "tombstone"}}
    assert run(seen, mapped) == [("message_deleted", "200.000000"),
                                 ("message_deleted", "300.000000"),
                                 ("message_deleted", "310.000000")]


def test_edits_after_bridging_by_others_only() -> None:
    seen = {
        "200.000000": {"ts": "200.000000", "user": "U1", "text": "neu",
                       "edited": {"user": "U1", "ts": "250.000000"}},
        # edited before it reached the room (backfill): the room has that text already
        "210.000000": {"ts": "210.000000", "user": "U1", "text": "alt",
                       "edited": {"user": "U1", "ts": "211.000000"}},
        # the app's own post, edited from Matrix
        "220.000000": {"ts": "220.000000", "bot_id": "B0APP", "text": "x",
                       "edited": {"user": BOT, "ts": "260.000000"}},
    }
    mapped = [MappedMessage("200.000000", 201.0), MappedMessage("210.000000", 230.0),
              MappedMessage("220.000000", 221.0)]
    assert run(seen, mapped) == [("message_changed", "200.000000")]


def test_reactions_added_and_removed_but_not_the_apps_or_a_cut_short_list() -> None:
    seen = {"200.000000": {"ts": "200.000000", "user": "U1", "reactions": [
        {"name": "tada", "users": ["U2", BOT], "count": 2},
        {"name": "eyes", "users": ["U3"], "count": 40},  # Slack listed only some users
    ]}}
    mapped = [MappedMessage("200.000000", 201.0,
                            reactions={("U4", "tada"), ("U5", "eyes"), ("U3", "eyes")})]
    assert run(seen, mapped) == [("reaction_added", "200.000000", "U2", "tada"),
                                 ("reaction_removed", "200.000000", "U4", "tada")]
