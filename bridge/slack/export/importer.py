"""`bridge import slack-export`: one channel's history from Slack's export into a room.

Messages are posted the way live Slack messages are (:mod:`bridge.slack.inbound`): as the
same puppets (``<team id>_<user id>``, named as Slack names them), formatted by the same
mrkdwn and Block Kit conversion, threads as ``m.thread``, a bot's message under its name,
reactions as ``m.reaction`` from the reacting person's puppet, and with the message mapping
(network "slack", remote_space ``T…:C…``, remote_id the ts, one part per event) and the
natural key (``msg:T…:C…:<ts>``) that live events, catch-up and backfill check. So a later
edit, reply or reaction in Slack lands on the imported event, and linking the channel or
catching up never posts an imported message again. Each event is sent with the original
time (the appservice ``ts`` parameter).

Exactly once, also across a SIGKILL:

- before a day's messages are posted, their natural keys are claimed together with an
  ``import:`` marker (one transaction): a message whose key was claimed by someone else
  (the live bridge has it) is left to them; one with our marker and no mapping is ours to
  post (again);
- every event goes out under a transaction ID derived from the message (channel, ts, part):
  a send repeated after a crash, before its mapping was written, is answered by the
  homeserver with the event it already has;
- the mappings are written in batches (not one transaction per message), at the latest at
  the end of each day.

Memory: the export is read one day file at a time (the reader streams it); what is kept
across days is bounded: the event IDs of recent messages (thread roots, reaction targets),
everything older is read back from the mapping table.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import mimetypes
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from sqlalchemy import select

from bridge.core.connector import escape_localpart, media_msgtype
from bridge.core.origin import HISTORY_KEY, Origin, sign
from bridge.db import store
from bridge.db.models import InboundKey, MessageMapping
from bridge.db.queues import insert_ignoring_conflicts
from bridge.slack.emoji import slack_emoji_to_unicode
from bridge.slack.export.reader import (
    Channel,
    DayFile,
    Export,
    ExportFile,
    ExportMessage,
    User,
)
from bridge.slack.format import slack_to_matrix
from bridge.slack.ids import NETWORK, message_key, space_of
from bridge.slack.inbound import POSTING_SUBTYPES, render_attachments
from bridge.slack.store import linked_channels

if TYPE_CHECKING:
    from mautrix.appservice import IntentAPI

    from bridge.db.engine import Database

log = logging.getLogger("bridge.slack.import")

# Mappings (and puppets) written per transaction.
FLUSH_EVERY = 500
# Event IDs of the most recent messages kept in memory (thread roots, the last reply of
# each thread); older ones are read back from the mapping table.
RECENT_EVENTS = 20_000
# Reactions sent at once, beside the messages (which go one by one, in order).
REACTIONS_IN_FLIGHT = 4
# The ``import:`` marker: this run (or an earlier one) claimed the message's natural key.
MARKER = "import:"
# A key looked up in one statement: IN lists of this many.
LOOKUP_CHUNK = 500
AVATAR_TIMEOUT = aiohttp.ClientTimeout(total=10)

MEMBERSHIP_SUBTYPES = {"channel_join", "channel_leave", "group_join", "group_leave"}
TOPIC_SUBTYPES = {"channel_topic", "group_topic", "channel_purpose", "group_purpose",
                  "channel_name", "group_name"}
SKIP_REASONS = {
    "membership": "channel joins and leaves (shown by membership, not posted as chat)",
    "topic": "topic, purpose and name changes (not posted as chat)",
    "empty": "messages with no text and no file",
    "other": "other Slack notices",
    "bridged": "messages the live bridge has already taken in (left to it)",
    "avatar": "avatars that could not be fetched (those puppets have none yet)",
}


class Progress(Protocol):
    """How the import tells how far it is (a bar on a terminal, lines otherwise)."""

    def start(self, total_bytes: int, days: int) -> None: ...

    def advance(self, done_bytes: int, messages: int, day: str) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, total_bytes: int, days: int) -> None:
        pass

    def advance(self, done_bytes: int, messages: int, day: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Summary:
    posted: int = 0  # messages posted now
    already: int = 0  # messages in the room before (an earlier run)
    thread_replies: int = 0
    threads: int = 0  # threads (roots with replies) posted
    reactions: int = 0
    files: int = 0  # files uploaded
    files_missing: int = 0  # files named by a line instead
    events: int = 0  # Matrix events sent
    skipped: Counter[str] = field(default_factory=Counter)
    days: int = 0

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would post" if dry_run else "posted"
        lines = [f"messages: {self.posted} {verb}, {self.already} already in the room",
                 f"threads: {self.threads} ({self.thread_replies} replies)",
                 f"reactions: {self.reactions}",
                 f"files: {self.files} {'to upload' if dry_run else 'uploaded'}, "
                 f"{self.files_missing} not in the export (named by a line instead)"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"skipped: {count} {SKIP_REASONS.get(reason, reason)}")
        return lines


class ImportRefused(Exception):
    """The import cannot go into this room: said as is, nothing changed."""


@dataclass
class _Pending:
    """Writes waiting for the next batch transaction."""

    mappings: list[dict[str, Any]] = field(default_factory=list)
    puppets: list[dict[str, Any]] = field(default_factory=list)


def txn_id(*parts: str) -> str:
    """A transaction ID of its own for each event of each message: the same on every run."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"slackimport-{digest}"


class _Resolver:
    """The formatter's questions about users and channels, answered from the export."""

    allow_room_mention = False  # history must not notify the whole room
    via_server: str | None

    def __init__(self, importer: SlackImport) -> None:
        self._importer = importer
        self.via_server = importer.domain

    def user(self, slack_user_id: str) -> tuple[str, str] | None:
        user = self._importer.export.users.get(slack_user_id)
        if user is None:
            return None
        return self._importer.sender_for(slack_user_id), user.shown_name

    def channel(self, slack_channel_id: str) -> tuple[str | None, str] | None:
        found = self._importer.export.channels.find(slack_channel_id)
        room = self._importer.linked_rooms.get(slack_channel_id)
        if found is None:
            return (room, slack_channel_id) if room else None
        return room, found.name


class SlackImport:
    """One run of the import of ``channel`` into ``room_id``."""

    def __init__(self, *, export: Export, channel: Channel, team_id: str, room_id: str,
                 db: Database, bot: IntentAPI | None, puppet_prefix: str, domain: str,
                 files_dir: Path | None, dry_run: bool, progress: Progress,
                 http: aiohttp.ClientSession | None = None,
                 real_accounts: dict[str, str] | None = None, real_api: Any = None,
                 proof_key: bytes | None = None, link_id: int = 0) -> None:
        self.export = export
        self.channel = channel
        self.team_id = team_id
        self.room_id = room_id
        self.db = db
        self.bot = bot
        self.puppet_prefix = puppet_prefix
        self.domain = domain
        self.files_dir = files_dir
        self.dry_run = dry_run
        self.progress = progress
        self.http = http
        # Double puppeting: Slack user ID -> the linked person's own account, for those whose
        # account is in the room (the command works it out); their history is posted as
        # them through ``real_api`` (the double-puppet registration's token), with an origin
        # marker signed with ``proof_key`` so the running bridge relays it to no link.
        self.real_accounts = dict(real_accounts or {})
        self._real_senders = set(self.real_accounts.values())
        self.real_api = real_api
        self.proof_key = proof_key
        self.link_id = link_id
        self.space = space_of(team_id, channel.id)
        self.summary = Summary()
        self.linked_rooms: dict[str, str] = {}
        self._resolver = _Resolver(self)
        self._pending = _Pending()
        # ts -> event ID of recent messages; thread ts -> its latest event (reply fallback).
        self._events: OrderedDict[str, str] = OrderedDict()
        self._thread_last: OrderedDict[str, str] = OrderedDict()
        self._threads_seen: set[str] = set()
        self._profiles_set: dict[str, tuple[str, str | None]] = {}
        self._known_puppets: dict[str, tuple[str | None, str | None, str | None]] = {}
        self._reaction_tasks: set[asyncio.Task[None]] = set()
        self._reaction_slots = asyncio.Semaphore(REACTIONS_IN_FLIGHT)
        self._reaction_error: BaseException | None = None

    # --- who posts ---------------------------------------------------------------------

    def puppet_of(self, remote_id: str) -> str:
        """The puppet live Slack uses for ``<team>_<user or bot id>``."""
        return f"@{self.puppet_prefix}{escape_localpart(remote_id)}:{self.domain}"

    def sender_for(self, slack_user_id: str) -> str:
        """Who posts a Slack user's messages and reactions: the linked person's own Matrix
        account when double puppeting is on and it is in the room, else the user's puppet
        (as live Slack does)."""
        return self.real_accounts.get(slack_user_id) or \
            self.puppet_of(f"{self.team_id}_{slack_user_id}")

    def _profile(self, slack_user_id: str) -> tuple[str, str | None]:
        """Display name and avatar URL as live Slack's user directory makes them."""
        user = self.export.users.get(slack_user_id)
        if user is None:
            return slack_user_id, None
        return user.shown_name, _avatar_url(user)

    # --- the run -----------------------------------------------------------------------

    async def run(self) -> Summary:
        async with self.db.sessions() as session:
            self.linked_rooms = {
                remote.rpartition(":")[2]: room for remote, room in
                (await linked_channels(session)).items()
                if remote.startswith(f"{self.team_id}:")}
            for puppet in await _puppets(session):
                self._known_puppets[puppet[0]] = puppet[1:]
            elsewhere = await session.scalar(
                select(MessageMapping.room_id).where(
                    MessageMapping.network == NETWORK, MessageMapping.remote_space == self.space,
                    MessageMapping.room_id != self.room_id).limit(1))
        linked = self.linked_rooms.get(self.channel.id)
        if linked is not None and linked != self.room_id:
            raise ImportRefused(
                f"#{self.channel.name} ({self.channel.id}) is linked to the room {linked}: "
                "its history belongs there (edits and replies from Slack go to that room); "
                "import into that room, or unlink it first")
        if elsewhere is not None:
            raise ImportRefused(
                f"messages of #{self.channel.name} ({self.channel.id}) are in the room "
                f"{elsewhere} already (imported or bridged there); a channel's history goes "
                "into one room")
        day_files = self.export.day_files(self.channel)
        total = sum(day.size for day in day_files)
        self.progress.start(total, len(day_files))
        done = 0
        try:
            for day in day_files:
                await self._day(day)
                done += day.size
                self.summary.days += 1
                self.progress.advance(done, self.summary.posted + self.summary.already,
                                      day.day)
        finally:
            # What was sent is recorded, also when a later day (or Ctrl-C) stops the run.
            try:
                await self._drain_reactions()
            finally:
                await self._flush()
                self.progress.close()
        return self.summary

    async def _day(self, day: DayFile) -> None:
        # The reader checks the whole day file before it yields its first message: a
        # malformed day raises here, before anything of it was posted or claimed.
        messages = self.export.read_day(day)
        keys = [message_key(self.team_id, self.channel.id, m.ts) for m in messages]
        remote_ids = [m.ts for m in messages] + [
            _reaction_id(m.ts, user, r.name) for m in messages for r in m.reactions
            for user in r.users]
        async with self.db.sessions() as session:
            mapped = await _mapped(session, self.space, remote_ids)
            claimed = await _claimed(session, keys + [MARKER + k for k in keys])
        to_post: list[ExportMessage] = []
        for message, key in zip(messages, keys, strict=True):
            if message.ts in mapped:
                self.summary.already += 1
                self._remember(message.ts, mapped[message.ts])
                continue
            reason = _skip_reason(message)
            if reason is not None:
                self.summary.skipped[reason] += 1
                continue
            if key in claimed and MARKER + key not in claimed:
                self.summary.skipped["bridged"] += 1
                continue
            to_post.append(message)
        posting = {id(m) for m in to_post}
        if self.dry_run:
            for message in messages:
                if id(message) in posting:
                    self._count(message)
                if id(message) in posting or message.ts in mapped:
                    self.summary.reactions += sum(
                        1 for r in message.reactions for user in r.users
                        if _reaction_id(message.ts, user, r.name) not in mapped)
            return
        fresh = [key for message, key in zip(messages, keys, strict=True)
                 if id(message) in posting and MARKER + key not in claimed]
        if fresh:
            async with self.db.transaction() as session:
                rows = [{"network": NETWORK, "key": k, "received_at": time.time()}
                        for key in fresh for k in (key, MARKER + key)]
                await session.execute(insert_ignoring_conflicts(session, InboundKey), rows)
        for message in messages:
            if id(message) in posting:
                await self._post(message)
            if message.reactions and (id(message) in posting or message.ts in mapped):
                target = self._events.get(message.ts) or mapped.get(message.ts)
                if target is not None:
                    for reaction in message.reactions:
                        for user in reaction.users:
                            if _reaction_id(message.ts, user, reaction.name) not in mapped:
                                await self._react(message, target, user, reaction.name)
            if len(self._pending.mappings) >= FLUSH_EVERY:
                await self._flush()
        await self._drain_reactions()
        await self._flush()

    def _count(self, message: ExportMessage) -> None:
        """What posting the message would do (--dry-run)."""
        self._count_posted(message)
        for file in message.files:
            if file.gone or self.export.find_file(file, self.files_dir) is None:
                self.summary.files_missing += 1
            else:
                self.summary.files += 1

    # --- one message -------------------------------------------------------------------

    async def _post(self, message: ExportMessage) -> None:
        sender = await self._sender_ready(message)
        formatted = slack_to_matrix(message.text, message.blocks or None, self._resolver)
        extra_text, extra_html = render_attachments(message.attachments)
        body, body_html = formatted.body, formatted.html
        if extra_text:
            body = f"{body}\n{extra_text}".strip()
            body_html = (body_html or html.escape(formatted.body).replace("\n", "<br>")) \
                + extra_html
        files: list[tuple[ExportFile, Any]] = []
        missing: list[str] = []
        for file in message.files:
            stored = None if file.gone else self.export.find_file(file, self.files_dir)
            if stored is None:
                missing.append(_missing_line(file))
            else:
                files.append((file, stored))
        if missing:
            note = "\n".join(missing)
            body = f"{body}\n{note}".strip()
            if body_html is not None:
                body_html += "".join(f"<br><em>{html.escape(line)}</em>" for line in missing)
        thread_root = await self._thread_root(message) if message.is_thread_reply else None
        contents: list[tuple[int, dict[str, Any]]] = []
        if body.strip():
            content: dict[str, Any] = {
                "msgtype": "m.emote" if message.subtype == "me_message" else "m.text",
                "body": body}
            if body_html:
                content["format"] = "org.matrix.custom.html"
                content["formatted_body"] = body_html
            # History notifies nobody: the pills stay, the mentions are not pinged.
            content["m.mentions"] = {}
            contents.append((0, content))
        for index, (file, stored) in enumerate(files, start=1):
            with stored.open() as stream:
                data = stream.read()
            name = file.name or file.title or file.id
            mimetype = file.mimetype or mimetypes.guess_type(name)[0] or \
                "application/octet-stream"
            mxc = await self._upload(sender, data, mimetype, name)
            contents.append((index, {"msgtype": media_msgtype(mimetype), "body": name,
                                     "filename": name, "url": mxc,
                                     "info": {"mimetype": mimetype, "size": len(data)}}))
            self.summary.files += 1
        self.summary.files_missing += len(missing)
        if not contents:
            self.summary.skipped["empty"] += 1
            return
        first_event: str | None = None
        for part, part_content in contents:
            if thread_root is not None:
                part_content["m.relates_to"] = {
                    "rel_type": "m.thread", "event_id": thread_root, "is_falling_back": True,
                    "m.in_reply_to": {"event_id": self._thread_last.get(
                        message.thread_ts or "", thread_root)}}
            event_id = await self._send(sender, "m.room.message", part_content,
                                        message.ts_ms, message.ts, str(part))
            self._pending.mappings.append(self._mapping(event_id, message.ts, part,
                                                        thread_root))
            first_event = first_event or event_id
            if thread_root is not None:
                _put(self._thread_last, message.thread_ts or "", event_id)
        if message.subtype == "thread_broadcast" and thread_root is not None and contents \
                and contents[0][0] == 0:
            # "Also send to channel": in the main timeline too, as a reply to the root.
            broadcast = {k: v for k, v in contents[0][1].items() if k != "m.relates_to"}
            broadcast["m.relates_to"] = {"m.in_reply_to": {"event_id": thread_root}}
            part = len(files) + 1
            event_id = await self._send(sender, "m.room.message", broadcast, message.ts_ms,
                                        message.ts, str(part))
            self._pending.mappings.append(self._mapping(event_id, message.ts, part, None))
        assert first_event is not None
        self._remember(message.ts, first_event)
        self._count_posted(message)

    def _count_posted(self, message: ExportMessage) -> None:
        self.summary.posted += 1
        if message.is_thread_reply:
            self.summary.thread_replies += 1
            if message.thread_ts not in self._threads_seen:
                self._threads_seen.add(message.thread_ts or "")
                self.summary.threads += 1

    async def _thread_root(self, message: ExportMessage) -> str | None:
        root_ts = message.thread_ts or ""
        known = self._events.get(root_ts)
        if known is not None:
            return known
        async with self.db.sessions() as session:
            mapped = await store.mappings_for_remote(session, NETWORK, self.space, root_ts)
        if not mapped:
            return None  # the root is not in the room: the reply goes to the main timeline
        root = mapped[0].thread_root or mapped[0].event_id
        self._remember(root_ts, root)
        return root

    def _remember(self, ts: str, event_id: str) -> None:
        _put(self._events, ts, event_id)

    def _mapping(self, event_id: str, remote_id: str, part: int,
                 thread_root: str | None) -> dict[str, Any]:
        return {"room_id": self.room_id, "event_id": event_id, "network": NETWORK,
                "remote_space": self.space, "remote_id": remote_id, "part": part,
                "thread_root": thread_root, "created_at": time.time()}

    # --- reactions ---------------------------------------------------------------------

    async def _react(self, message: ExportMessage, target: str, user: str, name: str) -> None:
        if self._reaction_error is not None:
            raise self._reaction_error
        await self._reaction_slots.acquire()
        sender = await self._ready(self.sender_for(user), user)
        emoji = slack_emoji_to_unicode(name) or f":{name}:"
        remote_id = _reaction_id(message.ts, user, name)
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target,
                                    "key": emoji}}

        async def send() -> None:
            try:
                event_id = await self._send(sender, "m.reaction", content, message.ts_ms,
                                            message.ts, "reaction", user, name)
                self._pending.mappings.append(self._mapping(event_id, remote_id, 0, None))
                self.summary.reactions += 1
            except BaseException as exc:
                self._reaction_error = exc
            finally:
                self._reaction_slots.release()

        task = asyncio.create_task(send())
        self._reaction_tasks.add(task)
        task.add_done_callback(self._reaction_tasks.discard)

    async def _drain_reactions(self) -> None:
        if self._reaction_tasks:
            await asyncio.gather(*list(self._reaction_tasks))
        if self._reaction_error is not None:
            error, self._reaction_error = self._reaction_error, None
            raise error

    # --- Matrix ------------------------------------------------------------------------

    async def _sender_ready(self, message: ExportMessage) -> str:
        if message.user and message.subtype != "bot_message":
            return await self._ready(self.sender_for(message.user), message.user)
        # Another app's or integration's message: a puppet per bot, named as it posted.
        bot_id = message.bot_id or "bot"
        puppet = self.puppet_of(f"{self.team_id}_{bot_id}")
        name = message.bot_name or "Slack bot"
        await self._set_profile(puppet, f"{self.team_id}_{bot_id}", name, None)
        return puppet

    async def _ready(self, mxid: str, slack_user_id: str) -> str:
        if mxid.startswith(f"@{self.puppet_prefix}"):
            name, avatar = self._profile(slack_user_id)
            await self._set_profile(mxid, f"{self.team_id}_{slack_user_id}", name, avatar)
        return mxid

    async def _set_profile(self, mxid: str, remote_id: str, name: str,
                           avatar: str | None) -> None:
        """Name (and avatar) as live Slack sets them, before the puppet's first message:
        clients show a message's sender by the profile they had then."""
        if self._profiles_set.get(mxid) == (name, avatar):
            return
        assert self.bot is not None
        intent = self.bot.user(mxid)  # type: ignore[arg-type]
        known = self._known_puppets.get(mxid)
        avatar_mxc = known[2] if known and known[1] == avatar and known[2] else None
        if known is None or known[0] != name or (avatar and avatar_mxc is None):
            await intent.ensure_registered()
            await intent.set_displayname(name)
            if avatar and avatar_mxc is None:
                avatar_mxc = await self._fetch_avatar(intent, avatar)
                if avatar_mxc:
                    await intent.set_avatar_url(avatar_mxc)  # type: ignore[arg-type]
            self._pending.puppets.append({
                "user_id": mxid, "remote_id": remote_id, "displayname": name,
                "avatar_source": avatar if avatar_mxc else None, "avatar_mxc": avatar_mxc})
            self._known_puppets[mxid] = (name, avatar if avatar_mxc else None, avatar_mxc)
        self._profiles_set[mxid] = (name, avatar)

    async def _fetch_avatar(self, intent: IntentAPI, url: str) -> str | None:
        if self.http is None:
            return None
        try:
            async with self.http.get(url, timeout=AVATAR_TIMEOUT) as response:
                if response.status != 200:
                    return None
                data = await response.read()
                mimetype = response.content_type or "image/png"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not fetch the avatar %s: %r", url, exc)
            self.summary.skipped["avatar"] += 1
            return None
        return str(await intent.upload_media(data, mime_type=mimetype, filename="avatar",
                                             size=len(data)))

    async def _upload(self, sender: str, data: bytes, mimetype: str, name: str) -> str:
        assert self.bot is not None
        # A person's own account is not the bridge's to act as for uploads: the bot uploads.
        own = sender != self.bot.mxid and sender not in self._real_senders
        intent = self.bot.user(sender) if own else self.bot  # type: ignore[arg-type]
        return str(await intent.upload_media(data, mime_type=mimetype, filename=name,
                                             size=len(data)))

    async def _send(self, sender: str, event_type: str, content: dict[str, Any],
                    ts_ms: int, *key: str) -> str:
        from mautrix.api import Method, Path
        from mautrix.types import EventType, RoomID, UserID

        from bridge.matrix.side import json_body

        assert self.bot is not None
        # Never relayed to the room's other links (an email subscriber does not want a
        # channel's years of history in their inbox); trusted on puppets, and on a person's
        # own account only with the bridge's signed origin marker.
        content = {**content, HISTORY_KEY: True}
        if sender in self._real_senders and self.real_api is not None and \
                self.proof_key is not None:
            marked = Origin(NETWORK, self.link_id).mark(content)
            signed = sign(marked, self.proof_key, self.room_id, sender, timestamp_ms=ts_ms)
            api = self.real_api.real_user(UserID(sender), self.real_api.token, as_token=True)
            answer = await api.request(
                Method.PUT, Path.v3.rooms[RoomID(self.room_id)].send[event_type][
                    txn_id(self.space, *key)], json_body(signed), timestamp=ts_ms)
            self.summary.events += 1
            return str(answer["event_id"])
        intent = self.bot.user(sender)  # type: ignore[arg-type]
        event_id = await intent.send_message_event(
            RoomID(self.room_id), EventType.find(event_type), json_body(content),
            txn_id=txn_id(self.space, *key), timestamp=ts_ms)
        self.summary.events += 1
        return str(event_id)

    # --- the database ------------------------------------------------------------------

    async def _flush(self) -> None:
        mappings, puppets = self._pending.mappings, self._pending.puppets
        if not mappings and not puppets:
            return
        self._pending = _Pending()
        async with self.db.transaction() as session:
            for puppet in puppets:
                await store.upsert_puppet(session, network=NETWORK, **puppet)
            if mappings:
                await session.execute(insert_ignoring_conflicts(session, MessageMapping),
                                      mappings)


def _put(cache: OrderedDict[str, str], key: str, value: str) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > RECENT_EVENTS:
        cache.popitem(last=False)


def _reaction_id(ts: str, user: str, name: str) -> str:
    """The mapping's remote_id of a Slack user's reaction, as live Slack writes it."""
    return f"{ts}/reaction/{user}/{name}"


def _skip_reason(message: ExportMessage) -> str | None:
    if message.subtype in MEMBERSHIP_SUBTYPES:
        return "membership"
    if message.subtype in TOPIC_SUBTYPES:
        return "topic"
    if message.subtype not in POSTING_SUBTYPES:
        return "other"
    if not message.text.strip() and not message.files and not message.attachments \
            and not message.blocks:
        return "empty"
    return None


def _missing_line(file: ExportFile) -> str:
    name = file.name or file.title or file.id
    if file.mode == "tombstone":
        return "📎 (a file deleted in Slack)"
    if file.mode == "hidden_by_limit":
        return f"📎 {name} (hidden by the Slack plan's history limit)"
    return f"📎 {name} (file {file.id}, not in the export)"


def _avatar_url(user: User) -> str | None:
    for key in ("image_512", "image_192", "image_72", "image_48"):
        value = user.profile.get(key)
        if isinstance(value, str) and value:
            return value
    return None


async def _mapped(session: Any, space: str, remote_ids: Iterable[str]) -> dict[str, str]:
    """Which of these remote IDs the room has: remote_id -> the event (its first part)."""
    found: dict[str, tuple[int, str]] = {}
    ids = list(dict.fromkeys(remote_ids))
    for start in range(0, len(ids), LOOKUP_CHUNK):
        rows = await session.execute(
            select(MessageMapping.remote_id, MessageMapping.part, MessageMapping.event_id)
            .where(MessageMapping.network == NETWORK, MessageMapping.remote_space == space,
                   MessageMapping.remote_id.in_(ids[start:start + LOOKUP_CHUNK])))
        for remote_id, part, event_id in rows:
            if remote_id not in found or part < found[remote_id][0]:
                found[remote_id] = (part, event_id)
    return {remote_id: event for remote_id, (_, event) in found.items()}


async def _claimed(session: Any, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(keys), LOOKUP_CHUNK):
        rows = await session.execute(
            select(InboundKey.key).where(InboundKey.network == NETWORK,
                                         InboundKey.key.in_(keys[start:start + LOOKUP_CHUNK])))
        found.update(row[0] for row in rows)
    return found


async def _puppets(session: Any) -> list[tuple[str, str | None, str | None, str | None]]:
    from bridge.db.models import Puppet

    rows = await session.execute(
        select(Puppet.user_id, Puppet.displayname, Puppet.avatar_source, Puppet.avatar_mxc)
        .where(Puppet.network == NETWORK))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def similar_channels(names: Iterable[str], wanted: str, limit: int = 5) -> list[str]:
    import difflib

    return difflib.get_close_matches(wanted.lstrip("#"), list(names), n=limit, cutoff=0.5)

