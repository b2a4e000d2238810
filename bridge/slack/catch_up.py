"""What changed in a Slack channel while the bridge was away, besides new messages.

Slack does not replay the events of an outage (Socket Mode drops them, the Events API gives
up after a few retries), so edits, deletions and reactions made meanwhile would never reach
Matrix. After a (re)connection the connector reads a window of recent history
(conversations.history and the replies of its threads; each message carries ``edited`` and
``reactions``) and compares it with the message mappings stored for that window. The
difference becomes the events Slack would have sent (message_changed, message_deleted,
reaction_added, reaction_removed), stored and handled like live ones, so the same
natural keys keep each one from taking effect twice.

Pure functions: the connector does the reading and storing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.slack.store import ts_key

Message = dict[str, Any]
TsKey = tuple[int, int]


@dataclass
class MappedMessage:
    """A Slack message the room has (either way), as the mapping table tells it."""

    ts: str
    # Seconds (the bridge's clock) when it was first mapped: an edit older than that was
    # already in the text the room got.
    mapped_at: float
    # The Slack ts of its thread's root, when it is a thread reply ("" if that is unknown).
    thread_ts: str | None = None
    # (Slack user, emoji name) of the Slack users' reactions the room has.
    reactions: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Window:
    """The stretch of the channel that was read in full: messages with ts in
    [oldest, newest], and the threads whose replies were read in full."""

    oldest: TsKey
    newest: TsKey
    complete_threads: set[str]

    def covers(self, mapped: MappedMessage) -> bool:
        if not self.oldest <= ts_key(mapped.ts) <= self.newest:
            return False
        return mapped.thread_ts is None or mapped.thread_ts in self.complete_threads


def reactions_of(message: Message, bot_user_id: str) -> tuple[set[tuple[str, str]], set[str]]:
    """The Slack users' reactions on a message, without the app's own (they come from
    Matrix), and the names whose user list Slack cut short (count > users)."""
    found: set[tuple[str, str]] = set()
    partial: set[str] = set()
    for reaction in message.get("reactions") or []:
        if not isinstance(reaction, dict) or not reaction.get("name"):
            continue
        name = str(reaction["name"])
        users = [str(u) for u in reaction.get("users") or []]
        if int(reaction.get("count") or len(users)) > len(users):
            partial.add(name)
        found.update((user, name) for user in users if user != bot_user_id)
    return found, partial


def reaction_event(channel: str, ts: str, user: str, name: str, added: bool) -> Message:
    return {"type": "reaction_added" if added else "reaction_removed", "user": user,
            "reaction": name, "item": {"type": "message", "channel": channel, "ts": ts}}


def differences(*, team_id: str, channel: str, bot_user_id: str, run_id: str,
                seen: dict[str, Message], mapped: Iterable[MappedMessage], window: Window,
                is_own: Callable[[Message], bool]) -> list[dict[str, Any]]:
    """Events (as stored payloads) that bring the room up to what Slack shows now."""
    payloads: list[dict[str, Any]] = []

    def add(event: Message, event_id: str) -> None:
        payloads.append({"event_id": event_id, "event": {"channel": channel, **event}})

    for entry in sorted(mapped, key=lambda m: ts_key(m.ts)):
        if not window.covers(entry):
            continue  # outside what was read: nothing can be said about it
        message = seen.get(entry.ts)
        if message is None or message.get("subtype") == "tombstone":
            # Gone from Slack (a deleted root with replies stays as a tombstone).
            add({"type": "message", "subtype": "message_deleted", "deleted_ts": entry.ts,
                 "hidden": True}, deletion_key(team_id, channel, entry.ts))
            continue
        edited = message.get("edited")
        if isinstance(edited, dict) and edited.get("ts") and not is_own(message) and \
                _seconds(str(edited["ts"])) > entry.mapped_at:
            add({"type": "message", "subtype": "message_changed", "message": message,
                 "previous_message": {}, "hidden": True, "ts": str(edited["ts"])},
                edit_key(team_id, channel, entry.ts, str(edited["ts"])))
        now, partial = reactions_of(message, bot_user_id)
        for user, name in sorted(now - entry.reactions):
            add(reaction_event(channel, entry.ts, user, name, True),
                f"catch-up:{run_id}:{team_id}:{channel}:{entry.ts}:+{user}:{name}")
        for user, name in sorted(entry.reactions - now):
            if name in partial:
                continue  # Slack did not list everyone who reacted with it
            add(reaction_event(channel, entry.ts, user, name, False),
                f"catch-up:{run_id}:{team_id}:{channel}:{entry.ts}:-{user}:{name}")
    return payloads


def reactions_of_new(*, team_id: str, channel: str, bot_user_id: str, run_id: str,
                     messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Reactions on messages that catch-up brings in for the first time: stored after the
    messages themselves (the same lane keeps that order), so they find them."""
    payloads = []
    for message in messages:
        ts = str(message.get("ts") or "")
        if not ts:
            continue
        found, _ = reactions_of(message, bot_user_id)
        for user, name in sorted(found):
            payloads.append({
                "event_id": f"catch-up:{run_id}:{team_id}:{channel}:{ts}:+{user}:{name}",
                "event": {"channel": channel, **reaction_event(channel, ts, user, name, True)}})
    return payloads


def edit_key(team_id: str, channel: str, ts: str, edited_ts: str) -> str:
    """One edit of a message, whether its event arrived live or catch-up found it."""
    return f"edit:{team_id}:{channel}:{ts}:{edited_ts}"


def deletion_key(team_id: str, channel: str, ts: str) -> str:
    return f"deleted:{team_id}:{channel}:{ts}"


def _seconds(ts: str) -> float:
    seconds, micros = ts_key(ts)
    return seconds + micros / 1_000_000
