"""What a Slack workspace holds: teams, users, bots, channels, messages, threads, files.

Everything is kept as the JSON Slack would return (plain dicts), so the Web API and the
event builders hand out the stored shapes without translating them. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import string
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

JsonDict = dict[str, Any]

_ID_ALPHABET = string.ascii_uppercase + string.digits


class SimulatorError(Exception):
    """A test drove the simulator wrongly (unknown team, user not in channel, ...)."""


_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> str:
    """Compact JSON as Slack writes it: UTF-8 text, except that a lone UTF-16 surrogate (a
    text cut between the halves of an emoji) can only be written escaped, as ``\\ud83d``."""
    text = _encode_json(value)
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def new_id(prefix: str, length: int = 10) -> str:
    """An id in Slack's style: a type letter and upper-case alphanumerics (U0ANNA1B2C)."""
    return prefix + "".join(random.choices(_ID_ALPHABET, k=length))


def random_token(length: int = 24) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=length))


class TsClock:
    """Message timestamps: "<unix seconds>.<6 digits>", unique and increasing per simulator.

    They follow the wall clock (Slack's do) but never repeat, even for hundreds of messages
    within one microsecond of bookkeeping.
    """

    def __init__(self) -> None:
        self._last = 0

    def next_micros(self) -> int:
        now = time.time_ns() // 1000
        self._last = now if now > self._last else self._last + 1
        return self._last

    def next(self) -> str:
        return micros_to_ts(self.next_micros())


def micros_to_ts(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def ts_to_micros(ts: str) -> int:
    """"1700000000.000100" -> 1700000000000100; also accepts "1700000000" and "17e8"-free
    decimal strings with fewer than six fraction digits. Raises ValueError otherwise."""
    seconds, _, fraction = ts.strip().partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()) or len(fraction) > 6:
        raise ValueError(ts)
    return int(seconds) * 1_000_000 + int(fraction.ljust(6, "0") or 0)


def normalize_name(name: str) -> str:
    return name.lower()


# Cursors: opaque base64 strings like Slack's ("dXNlcjpVMDYxTkZUVDI=" is "user:U061NFTT2").
def encode_cursor(kind: str, value: str) -> str:
    return base64.b64encode(f"{kind}:{value}".encode()).decode()


def decode_cursor(cursor: str, kind: str) -> str:
    try:
        decoded = base64.b64decode(cursor.encode(), validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(cursor) from exc
    prefix, sep, value = decoded.partition(":")
    if prefix != kind or not sep or not value:
        raise ValueError(cursor)
    return value


@dataclass
class User:
    id: str
    team_id: str
    name: str
    real_name: str = ""
    display_name: str = ""
    image_url: str | None = None  # None: an avatar served by the simulator
    email: str | None = None
    is_bot: bool = False
    is_app_user: bool = False
    deleted: bool = False
    bot_id: str | None = None
    app_id: str | None = None
    is_admin: bool = False
    tz: str = "Europe/Berlin"
    tz_label: str = "Central European Time"
    tz_offset: int = 3600
    color: str = "9f69e7"
    updated: int = field(default_factory=lambda: int(time.time()))

    def avatar_hash(self) -> str:
        source = f"{self.id}:{self.image_url}".encode()
        return hashlib.sha1(source).hexdigest()[:12]

    def to_api(self, base_url: str) -> JsonDict:
        """The user object of users.info / users.list / user_change."""
        images = {}
        for size in (24, 32, 48, 72, 192, 512, 1024):
            images[f"image_{size}"] = (
                self.image_url or f"{base_url}avatars/{self.team_id}/{self.id}_{size}.png")
        first, _, last = self.real_name.partition(" ")
        profile: JsonDict = {
            "title": "",
            "phone": "",
            "skype": "",
            "real_name": self.real_name,
            "real_name_normalized": self.real_name,
            "display_name": self.display_name,
            "display_name_normalized": self.display_name,
            "fields": {},
            "status_text": "",
            "status_emoji": "",
            "status_emoji_display_info": [],
            "status_expiration": 0,
            "avatar_hash": self.avatar_hash(),
            "image_original": images["image_1024"],
            "is_custom_image": self.image_url is not None,
            "first_name": first,
            "last_name": last,
            **images,
            "status_text_canonical": "",
            "team": self.team_id,
            "huddle_state": "default_unset",
            "huddle_state_expiration_ts": 0,
            "start_date": "",
        }
        if self.email is not None:
            profile["email"] = self.email
        if self.is_bot and self.bot_id:
            profile["bot_id"] = self.bot_id
            profile["api_app_id"] = self.app_id or ""
            profile["always_active"] = True
        else:
            profile["always_active"] = False
        return {
            "id": self.id,
            "team_id": self.team_id,
            "name": self.name,
            "deleted": self.deleted,
            "color": self.color,
            "real_name": self.real_name,
            "tz": self.tz,
            "tz_label": self.tz_label,
            "tz_offset": self.tz_offset,
            "profile": profile,
            "is_admin": self.is_admin,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": self.is_bot,
            "is_app_user": self.is_app_user,
            "is_workflow_bot": False,
            "is_invited_user": False,
            "is_connector_bot": False,
            "updated": self.updated,
            "is_email_confirmed": self.email is not None,
            "has_2fa": False,
            "who_can_share_contact_card": "EVERYONE",
        }


@dataclass
class Bot:
    id: str
    name: str
    app_id: str | None = None
    user_id: str | None = None
    icons: JsonDict = field(default_factory=dict)
    deleted: bool = False
    updated: int = field(default_factory=lambda: int(time.time()))

    def to_api(self, team_id: str | None = None) -> JsonDict:
        bot: JsonDict = {"id": self.id, "deleted": self.deleted, "name": self.name,
                         "updated": self.updated}
        if self.app_id:
            bot["app_id"] = self.app_id
        if self.user_id:
            bot["user_id"] = self.user_id
        bot["icons"] = dict(self.icons)
        if team_id:  # bot_profile inside messages carries the team
            bot.pop("user_id", None)
            bot["team_id"] = team_id
        return bot


@dataclass
class StoredFile:
    id: str
    team_id: str
    user_id: str
    name: str
    title: str
    mimetype: str
    filetype: str
    pretty_type: str
    data: bytes
    created: int
    bot_id: str | None = None
    alt_txt: str | None = None
    original_w: int | None = None
    original_h: int | None = None
    # channel id -> list of share records (ts, thread_ts, ...)
    shares: dict[str, list[JsonDict]] = field(default_factory=dict)
    private_channels: set[str] = field(default_factory=set)

    def to_api(self, base_url: str, domain: str, *, with_shares: bool = False) -> JsonDict:
        base = f"{base_url}files-pri/{self.team_id}-{self.id}"
        out: JsonDict = {
            "id": self.id,
            "created": self.created,
            "timestamp": self.created,
            "name": self.name,
            "title": self.title,
            "mimetype": self.mimetype,
            "filetype": self.filetype,
            "pretty_type": self.pretty_type,
            "user": self.user_id,
            "user_team": self.team_id,
            "editable": False,
            "size": len(self.data),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": bool(self.shares) and not self.private_channels,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{base}/{self.name}",
            "url_private_download": f"{base}/download/{self.name}",
            "media_display_type": "unknown",
            "permalink": f"https://{domain}.slack.com/files/{self.user_id}/{self.id}/{self.name}",
            "permalink_public": f"https://slack-files.com/{self.team_id}-{self.id}-{self.id[-6:].lower()}",
            "has_rich_preview": False,
            "file_access": "visible",
        }
        if self.alt_txt:
            out["alt_txt"] = self.alt_txt
        if self.bot_id:
            out["bot_id"] = self.bot_id
        if self.original_w and self.original_h:
            w, h = self.original_w, self.original_h
            stem, _, ext = self.name.rpartition(".")
            stem, ext = (stem or self.name), (ext if stem else self.filetype)
            thumbs = f"{base_url}files-tmb/{self.team_id}-{self.id}-{self.id[-6:].lower()}"
            for size in (64, 80, 160, 360, 480, 720, 800, 960, 1024):
                if size > 360 and max(w, h) <= size:
                    continue  # Slack makes the larger thumbnails only for larger images
                out[f"thumb_{size}"] = f"{thumbs}/{stem}_{size}.{ext}"
                if size >= 360:
                    scale = min(1.0, size / max(w, h))
                    out[f"thumb_{size}_w"] = max(1, round(w * scale))
                    out[f"thumb_{size}_h"] = max(1, round(h * scale))
            out["original_w"] = w
            out["original_h"] = h
            out["thumb_tiny"] = "AwAwADDTooooA//Z"
        if with_shares:
            public = {c: s for c, s in self.shares.items() if c not in self.private_channels}
            private = {c: s for c, s in self.shares.items() if c in self.private_channels}
            shares: JsonDict = {}
            if public:
                shares["public"] = public
            if private:
                shares["private"] = private
            out["shares"] = shares
            out["channels"] = sorted(public)
            out["groups"] = sorted(private)
            out["ims"] = []
            out["has_more_shares"] = False
            out["comments_count"] = 0
        return out


@dataclass
class PendingUpload:
    file_id: str
    filename: str
    length: int
    alt_txt: str | None
    user_id: str
    bot_id: str | None
    data: bytes | None = None


class Channel:
    """A public or private channel with its history.

    Messages are stored by ts; `_history` keeps the top-level ones in ts order (ts only grow,
    so appending keeps it sorted) and `_threads` the replies of each thread.
    """

    def __init__(self, team_id: str, channel_id: str, name: str, *, creator: str,
                 is_private: bool, created: int, topic: str = "", purpose: str = "",
                 is_general: bool = False) -> None:
        self.team_id = team_id
        self.id = channel_id
        self.name = name
        self.creator = creator
        self.is_private = is_private
        self.is_general = is_general
        self.is_archived = False
        self.created = created
        self.updated = created * 1000
        self.topic: JsonDict = {"value": topic, "creator": creator if topic else "",
                                "last_set": created if topic else 0}
        self.purpose: JsonDict = {"value": purpose, "creator": creator if purpose else "",
                                  "last_set": created if purpose else 0}
        self.previous_names: list[str] = []
        self.members: dict[str, None] = {}  # ordered set
        self.by_ts: dict[str, JsonDict] = {}
        self._history: list[int] = []   # micros of top-level messages, ascending
        self._history_ts: list[str] = []
        self._threads: dict[str, list[str]] = {}  # parent ts -> reply ts, ascending
        # Pinned messages: ts -> {"created", "created_by"}, in the order they were pinned.
        self.pins: dict[str, JsonDict] = {}

    @property
    def channel_type(self) -> str:
        """As in message events: "channel" for public, "group" for private channels."""
        return "group" if self.is_private else "channel"

    @property
    def member_channel_type(self) -> str:
        """As in member_joined_channel: "C" or "G"."""
        return "G" if self.is_private else "C"

    # -- messages -----------------------------------------------------------------------
    def add_top_level(self, message: JsonDict) -> None:
        ts = message["ts"]
        self.by_ts[ts] = message
        micros = ts_to_micros(ts)
        if not self._history or micros > self._history[-1]:
            self._history.append(micros)
            self._history_ts.append(ts)
        else:  # not expected (ts grow), but keep the order right anyway
            index = bisect_left(self._history, micros)
            self._history.insert(index, micros)
            self._history_ts.insert(index, ts)

    def add_reply(self, thread_ts: str, reply: JsonDict) -> None:
        """Store a reply; the parent (if it exists: Slack accepts replies to unknown
        thread_ts and keeps them out of sight) gets its thread fields updated."""
        self.by_ts[reply["ts"]] = reply
        self._threads.setdefault(thread_ts, []).append(reply["ts"])
        parent = self.by_ts.get(thread_ts)
        if parent is not None:
            self._refresh_thread_fields(parent)

    def _refresh_thread_fields(self, parent: JsonDict) -> None:
        replies = [self.by_ts[ts] for ts in self._threads.get(parent["ts"], [])]
        if not replies:
            for key in ("thread_ts", "reply_count", "reply_users_count", "latest_reply",
                        "reply_users", "is_locked", "subscribed"):
                parent.pop(key, None)
            return
        users: list[str] = []
        for reply in replies:
            author = reply.get("user") or reply.get("bot_id")
            if author and author not in users:
                users.append(author)
        parent["thread_ts"] = parent["ts"]
        parent["reply_count"] = len(replies)
        parent["reply_users_count"] = len(users)
        parent["latest_reply"] = replies[-1]["ts"]
        parent["reply_users"] = users
        parent["is_locked"] = False
        parent["subscribed"] = False

    def remove(self, ts: str) -> JsonDict:
        """Delete a message. A parent with replies stays as a tombstone, as in Slack."""
        message = self.by_ts[ts]
        thread_ts = message.get("thread_ts")
        if isinstance(thread_ts, str) and thread_ts != ts:  # a reply
            replies = self._threads.get(thread_ts, [])
            if ts in replies:
                replies.remove(ts)
            parent = self.by_ts.get(thread_ts)
            if parent is not None:
                self._refresh_thread_fields(parent)
                if parent.get("subtype") == "tombstone" and not replies:
                    self._drop_top_level(thread_ts)  # the tombstone goes with its last reply
                    del self.by_ts[thread_ts]
            if message.get("subtype") == "thread_broadcast":
                self._drop_top_level(ts)
            del self.by_ts[ts]
            return message
        if self._threads.get(ts):
            tombstone = {"type": "message", "subtype": "tombstone", "user": "USLACKBOT",
                         "text": "This message was deleted.", "ts": ts, "hidden": True}
            for key in ("thread_ts", "reply_count", "reply_users_count", "latest_reply",
                        "reply_users", "is_locked", "subscribed"):
                if key in message:
                    tombstone[key] = message[key]
            self.by_ts[ts] = tombstone
            return message
        self._drop_top_level(ts)
        del self.by_ts[ts]
        return message

    def _drop_top_level(self, ts: str) -> None:
        micros = ts_to_micros(ts)
        index = bisect_left(self._history, micros)
        if index < len(self._history) and self._history[index] == micros:
            del self._history[index]
            del self._history_ts[index]

    def history(self) -> list[JsonDict]:
        """Top-level messages, oldest first."""
        return [self.by_ts[ts] for ts in self._history_ts]

    def history_page(self, *, oldest: int, latest: int | None, oldest_inclusive: bool,
                     latest_inclusive: bool, limit: int) -> tuple[list[JsonDict], bool]:
        """Top-level messages between oldest and latest, newest first, and whether there
        are more than `limit` of them."""
        lo = (bisect_left if oldest_inclusive else bisect_right)(self._history, oldest)
        if latest is None:
            hi = len(self._history)
        else:
            hi = (bisect_right if latest_inclusive else bisect_left)(self._history, latest)
        count = max(0, hi - lo)
        start = max(lo, hi - limit)
        selected = self._history_ts[start:hi]
        selected.reverse()
        return [self.by_ts[ts] for ts in selected], count > limit

    def thread(self, ts: str) -> tuple[JsonDict, list[JsonDict]] | None:
        """(parent, replies oldest first) of the thread ts belongs to; None if ts names no
        message."""
        message = self.by_ts.get(ts)
        if message is None:
            return None
        parent_ts = message.get("thread_ts") or ts
        parent = self.by_ts.get(parent_ts, message)
        return parent, [self.by_ts[r] for r in self._threads.get(parent_ts, [])]

    def to_api(self, *, bot_user_id: str | None, with_num_members: bool = True) -> JsonDict:
        out: JsonDict = {
            "id": self.id,
            "name": self.name,
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_mpim": False,
            "is_private": self.is_private,
            "created": self.created,
            "is_archived": self.is_archived,
            "is_general": self.is_general,
            "unlinked": 0,
            "name_normalized": normalize_name(self.name),
            "is_shared": False,
            "is_org_shared": False,
            "is_pending_ext_shared": False,
            "pending_shared": [],
            "context_team_id": self.team_id,
            "updated": self.updated,
            "parent_conversation": None,
            "creator": self.creator,
            "is_ext_shared": False,
            "shared_team_ids": [self.team_id],
            "pending_connected_team_ids": [],
            "is_member": bot_user_id in self.members if bot_user_id else False,
            "topic": dict(self.topic),
            "purpose": dict(self.purpose),
            "properties": {},
            "previous_names": list(self.previous_names),
        }
        if out["is_member"]:
            out["last_read"] = self._history_ts[-1] if self._history_ts else "0000000000.000000"
        if with_num_members:
            out["num_members"] = len(self.members)
        return out


class Im:
    """A direct message conversation (``D…``) between the app's bot user and one person, as
    ``conversations.open`` makes it: one per person, the same one every time."""

    def __init__(self, team_id: str, im_id: str, user_id: str, created: int) -> None:
        self.team_id = team_id
        self.id = im_id
        self.user = user_id
        self.created = created
        self.messages: list[JsonDict] = []  # oldest first

    def to_api(self, *, user_deleted: bool = False) -> JsonDict:
        """The IM object of ``conversations.open`` with ``return_im`` (and of
        ``conversations.info``)."""
        return {"id": self.id, "created": self.created, "is_archived": False, "is_im": True,
                "is_org_shared": False, "context_team_id": self.team_id,
                "updated": self.created * 1000, "user": self.user,
                "is_user_deleted": user_deleted, "priority": 0,
                "last_read": self.messages[-1]["ts"] if self.messages else "0000000000.000000"}


_team_counter = itertools.count(1)


class Team:
    """A workspace with one installed app (the bridge): its bot user, tokens, people, channels.

    `events_url` may be set or changed at any time; events waiting for a destination are sent
    once there is one.
    """

    def __init__(self, *, team_id: str, name: str, domain: str, bot_token: str,
                 app_token: str | None, signing_secret: str, events_url: str | None,
                 bot_name: str = "bridge") -> None:
        self.id = team_id
        self.name = name
        self.domain = domain
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.verification_token = random_token(24)
        self._events_url = events_url
        self.bot_user_id = new_id("U")
        self.bot_id = new_id("B")
        self.app_id = new_id("A")
        self.bot_name = bot_name
        self.users: dict[str, User] = {}
        self.bots: dict[str, Bot] = {}
        self.channels: dict[str, Channel] = {}
        self.files: dict[str, StoredFile] = {}
        self.uploads: dict[str, PendingUpload] = {}  # upload key -> pending upload
        self.emoji: dict[str, str] = {}
        # Direct message conversations of the app's bot user, by the person's user ID.
        self.ims: dict[str, Im] = {}
        # The OAuth scopes the app was granted; None: every scope the methods need (as if
        # installed from the bridge's manifest). A method needing one not here answers
        # missing_scope, as Slack does.
        self.scopes: set[str] | None = None
        # A workspace preference ("who may archive channels") that keeps apps from archiving:
        # conversations.archive then answers restricted_action.
        self.archiving_restricted = False
        self.created = int(time.time())
        self.number = next(_team_counter)
        # Which event types the app subscribed to; None: all the simulator emits.
        self.event_types: set[str] | None = set(DEFAULT_EVENT_TYPES)
        self.on_events_url_change: list[Any] = []

    @property
    def events_url(self) -> str | None:
        return self._events_url

    @events_url.setter
    def events_url(self, value: str | None) -> None:
        self._events_url = value
        for callback in self.on_events_url_change:
            callback(self)

    @property
    def socket_mode(self) -> bool:
        return self.app_token is not None

    @property
    def url(self) -> str:
        return f"https://{self.domain}.slack.com/"

    def bot_user(self) -> User:
        return self.users[self.bot_user_id]

    def bot_profile(self) -> JsonDict:
        return self.bots[self.bot_id].to_api(team_id=self.id)

    def channel(self, channel_id: str) -> Channel:
        try:
            return self.channels[channel_id]
        except KeyError:
            raise SimulatorError(f"no channel {channel_id} in team {self.id}") from None

    def user(self, user_id: str) -> User:
        try:
            return self.users[user_id]
        except KeyError:
            raise SimulatorError(f"no user {user_id} in team {self.id}") from None

    def find_channel(self, ref: str) -> Channel | None:
        """By id, or by name with or without '#' (chat.postMessage and the simulator's
        own helpers accept both; the other Web API methods want the ID)."""
        channel = self.channels.get(ref)
        if channel is not None:
            return channel
        name = normalize_name(ref.lstrip("#"))
        for candidate in self.channels.values():
            if candidate.name == name:
                return candidate
        return None

    def im(self, im_id: str) -> Im | None:
        """The app's IM with this ID, if it opened one."""
        return next((im for im in self.ims.values() if im.id == im_id), None)

    def find_user(self, ref: str) -> User | None:
        user = self.users.get(ref)
        if user is not None:
            return user
        for candidate in self.users.values():
            if ref in (candidate.name, candidate.display_name):
                return candidate
        return None


# Events a bridge typically subscribes to. file_shared and app_mention are left out: a
# bridge gets the same through message events and Slack would send them twice.
DEFAULT_EVENT_TYPES = frozenset({
    "message", "reaction_added", "reaction_removed", "member_joined_channel",
    "member_left_channel", "channel_rename", "channel_archive", "channel_unarchive",
    "group_archive", "group_unarchive", "group_deleted", "app_uninstalled", "tokens_revoked",
    "channel_deleted", "channel_created", "user_change", "team_join", "emoji_changed",
})
