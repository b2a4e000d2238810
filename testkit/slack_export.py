"""Slack workspace exports written the way Slack writes them, for the tests and benchmarks
of the export reader and of `bridge import slack-export`.

Layout (Slack's help article "How to read Slack data exports", and the real samples in
../shared/slack-fixtures/zulip-slack-export): ``users.json`` (users.list members),
``channels.json`` / ``groups.json`` (public / private channels), ``dms.json``,
``mpims.json``, ``integration_logs.json``, and ``<channel>/<YYYY-MM-DD>.json`` day files
holding JSON arrays of messages in the Web API's message format. Slack's own export carries
no file contents; ``extra`` adds them where export tools put them
(``__uploads/<file id>/<name>``).
"""

from __future__ import annotations

import datetime
import json
import zipfile
from pathlib import Path
from typing import Any

TEAM = "T0RATHAUS"
ANNA, BEN, CARL = "U0ANNA", "U0BEN", "U0CARL"


def user(user_id: str, name: str, real_name: str, display_name: str = "",
         **extra: Any) -> dict[str, Any]:
    """A users.json entry as Slack writes it (a users.list member)."""
    return {"id": user_id, "team_id": TEAM, "name": name, "deleted": False,
            "color": "9f69e7", "real_name": real_name, "tz": "Europe/Berlin",
            "tz_label": "Central European Time", "tz_offset": 3600,
            "profile": {"title": "", "phone": "", "skype": "", "real_name": real_name,
                        "real_name_normalized": real_name, "display_name": display_name,
                        "display_name_normalized": display_name, "fields": None,
                        "status_text": "", "status_emoji": "", "avatar_hash": "g0c0ffee",
                        "email": f"{name}@rathaus.example", "first_name": real_name.split()[0],
                        "image_72": "https://secure.gravatar.com/avatar/0.jpg?s=72",
                        "team": TEAM},
            "is_admin": False, "is_owner": False, "is_bot": False, "updated": 1700000000,
            **extra}


def channel(channel_id: str, name: str, members: list[str], topic: str = "",
            **extra: Any) -> dict[str, Any]:
    """A channels.json / groups.json entry."""
    return {"id": channel_id, "name": name, "created": 1600000000, "creator": ANNA,
            "is_archived": False, "is_general": False, "members": members,
            "topic": {"value": topic, "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0}, **extra}


def message(ts: str, user_id: str, text: str, **extra: Any) -> dict[str, Any]:
    """A message of a day file: text plus its rich_text block, as current exports have."""
    return {"client_msg_id": f"00000000-0000-0000-0000-{ts.replace('.', '')[-12:]}",
            "type": "message", "text": text, "user": user_id, "ts": ts, "team": TEAM,
            "user_team": TEAM, "source_team": TEAM,
            "blocks": [{"type": "rich_text", "block_id": "b" + ts[-4:], "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}]}],
            **extra}


def ts_of(day: str, second: int) -> str:
    start = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC)
    return f"{int(start.timestamp()) + second}.{second % 1000:06d}"


def write_export(path: Path, *, users: list[dict[str, Any]], channels: list[dict[str, Any]],
                 groups: list[dict[str, Any]] | None = None,
                 days: dict[str, Any], extra: dict[str, bytes] | None = None,
                 top: str = "") -> Path:
    """A workspace export zip; ``days`` maps "<folder>/<YYYY-MM-DD>" to the day's messages
    (a list, written as JSON, or bytes written as they are)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(top + "users.json", json.dumps(users, indent=4))
        archive.writestr(top + "channels.json", json.dumps(channels, indent=4))
        if groups is not None:
            archive.writestr(top + "groups.json", json.dumps(groups, indent=4))
        archive.writestr(top + "dms.json", "[]")
        archive.writestr(top + "mpims.json", "[]")
        archive.writestr(top + "integration_logs.json", json.dumps({"logs": []}))
        for name, content in days.items():
            data = content if isinstance(content, bytes) else json.dumps(content, indent=4)
            archive.writestr(f"{top}{name}.json", data)
        for name, data in (extra or {}).items():
            archive.writestr(top + name, data)
    return path


ROOT_TS = ts_of("2024-03-04", 100)


def small_export(path: Path, **overrides: Any) -> Path:
    """Two public channels and a private one; #bauamt has a thread across two days,
    reactions, an edit, a bot message, a file and channel events."""
    thread_reply = ts_of("2024-03-05", 50)
    days: dict[str, Any] = {
        # Written out of order on purpose: a day's array is not guaranteed sorted.
        "bauamt/2024-03-05": [
            message(ts_of("2024-03-05", 200), ANNA, "later that day"),
            message(thread_reply, BEN, "reply on the next day", thread_ts=ROOT_TS,
                    parent_user_id=ANNA),
            {"type": "message", "subtype": "channel_topic", "user": BEN,
             "text": "<@U0BEN> set the channel topic: Bauanträge 2024",
             "topic": "Bauanträge 2024", "ts": ts_of("2024-03-05", 10)},
        ],
        "bauamt/2024-03-04": [
            {"type": "message", "subtype": "channel_join", "user": BEN,
             "text": "<@U0BEN> has joined the channel", "ts": ts_of("2024-03-04", 1)},
            message(ROOT_TS, ANNA, "the plan, final version", thread_ts=ROOT_TS,
                    reply_count=2, reply_users_count=1, latest_reply=thread_reply,
                    reply_users=[BEN],
                    replies=[{"user": BEN, "ts": ts_of("2024-03-04", 150)},
                             {"user": BEN, "ts": thread_reply}],
                    is_locked=False, subscribed=False,
                    edited={"user": ANNA, "ts": ts_of("2024-03-04", 120)},
                    reactions=[{"name": "thumbsup", "users": [BEN, CARL], "count": 2},
                               {"name": "tada", "users": [BEN], "count": 1}]),
            message(ts_of("2024-03-04", 150), BEN, "first reply", thread_ts=ROOT_TS,
                    parent_user_id=ANNA),
            {"type": "message", "subtype": "bot_message", "text": "Build passed",
             "ts": ts_of("2024-03-04", 160), "bot_id": "B0CI", "username": "CI",
             "bot_profile": {"id": "B0CI", "name": "ci-app", "app_id": "A0CI",
                             "deleted": False, "team_id": TEAM, "updated": 1600000000,
                             "icons": {"image_48": "https://example.test/ci.png"}}},
            message(ts_of("2024-03-04", 170), CARL, "the drawing", files=[
                {"id": "F0PLAN", "created": 1709510570, "timestamp": 1709510570,
                 "name": "plan.pdf", "title": "plan.pdf", "mimetype": "application/pdf",
                 "filetype": "pdf", "pretty_type": "PDF", "user": CARL, "size": 5,
                 "mode": "hosted", "is_external": False,
                 "url_private": "https://files.slack.com/files-pri/T0RATHAUS-F0PLAN/plan.pdf",
                 "url_private_download": "https://files.slack.com/files-pri/T0RATHAUS-F0PLAN/"
                                         "download/plan.pdf"},
                {"id": "F0GONE", "mode": "tombstone"}]),
        ],
        "schule/2024-03-04": [message(ts_of("2024-03-04", 5), ANNA, "school")],
        "personal/2024-03-06": [message(ts_of("2024-03-06", 5), ANNA, "private talk")],
    }
    arguments: dict[str, Any] = {
        "users": [user(ANNA, "anna", "Anna Schmidt", "Anna"), user(BEN, "ben", "Ben Weber"),
                  user(CARL, "carl", "Carl Braun", deleted=True)],
        "channels": [channel("C0BAUAMT", "bauamt", [ANNA, BEN], topic="Bauanträge"),
                     channel("C0SCHULE", "schule", [ANNA])],
        "groups": [channel("G0PERSONAL", "personal", [ANNA, BEN], is_private=True)],
        "days": days,
        "extra": {"__uploads/F0PLAN/plan.pdf": b"%PDF-"},
    }
    arguments.update(overrides)
    return write_export(path, **arguments)


def export_of_channel(path: Path, *, users: list[dict[str, Any]], channel_entry: dict[str, Any],
                      messages: list[dict[str, Any]],
                      extra: dict[str, bytes] | None = None) -> Path:
    """An export of one channel holding ``messages`` (top-level messages and thread replies,
    as the Web API gives them, e.g. read from the Slack simulator), in day files by their
    UTC day, as Slack's export writes them."""
    days: dict[str, list[dict[str, Any]]] = {}
    for item in messages:
        seconds = int(str(item["ts"]).partition(".")[0])
        day = datetime.datetime.fromtimestamp(seconds, datetime.UTC).date().isoformat()
        days.setdefault(f"{channel_entry['name']}/{day}", []).append(item)
    return write_export(path, users=users, channels=[channel_entry], days=dict(days),
                        extra=extra)
