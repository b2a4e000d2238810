"""The reader of Slack's standard workspace export (a zip), streamed.

Layout (Slack's help article "How to read Slack data exports", and the samples in
../shared/slack-fixtures/zulip-slack-export): ``users.json`` (``org_users.json`` from an
Enterprise Grid organisation), ``channels.json`` (public channels), ``groups.json``
(private channels, in exports that include them), ``dms.json`` and ``mpims.json`` (direct
chats: not read here), ``integration_logs.json``, and one folder per channel holding a
*day file* ``<channel>/<YYYY-MM-DD>.json`` per day with messages: a JSON array of messages
in the Web API's message format. Some tools re-zip an export under one top folder; that
folder is found and looked through.

Slack's own export carries no file contents, only their ``url_private`` links (which need
a token). Tools that add them use two layouts, both looked up by :meth:`Export.find_file`:
``__uploads/<file id>/<name>`` (slack-advanced-exporter, slackdump's "mattermost" type) and
``<channel folder>/attachments/<file id>-<name>`` (slackdump's "standard" type).

Streaming: the zip's directory is read once (names and sizes, never contents); users and
channels are read when the export is opened (the importer needs them all); a channel's
messages are read one day file at a time, and nothing of a past day is kept. A day file is
checked whole before its first message is handed out, so a malformed day stops the reader
before any of that day's messages was yielded: an import that stops there has nothing of
that day to undo or repeat.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

from bridge.slack.store import ts_key

_DAY_FILE = re.compile(r"(\d{4}-\d{2}-\d{2})\.json")
# Slack's ts: Unix seconds, a dot, microseconds ("1498401071.279035").
_TS = re.compile(r"\d{1,12}(\.\d{1,6})?")
_FILE_ID = re.compile(r"F[A-Z0-9]{2,}")
_USER_FILES = ("users.json", "org_users.json")
_CHANNEL_FILES = (("channels.json", False), ("groups.json", True))


@dataclass(frozen=True)
class Position:
    """Where something is in the export: a file inside the zip, and the message's index in
    its day file (as written, before sorting) or a JSON line and column."""

    member: str
    index: int | None = None
    line: int | None = None
    column: int | None = None
    what: str = "message"  # what the index counts: messages, or users and channels

    def __str__(self) -> str:
        where = self.member
        if self.index is not None:
            where += f", {self.what} {self.index}"
        if self.line is not None:
            where += f", line {self.line} column {self.column}"
        return where


class ExportError(Exception):
    """The export is not what Slack writes: names the file inside the zip, the position in
    it and what is wrong."""

    def __init__(self, member: str, problem: str, *, index: int | None = None,
                 line: int | None = None, column: int | None = None,
                 what: str = "message") -> None:
        self.position = Position(member, index, line, column, what)
        self.problem = problem
        super().__init__(f"{self.position}: {problem}")


@dataclass(frozen=True)
class User:
    id: str
    name: str
    real_name: str
    display_name: str
    email: str | None
    deleted: bool
    is_bot: bool
    profile: dict[str, Any] = field(repr=False, compare=False)
    # The workspace the user belongs to ("team_id"; a shared channel's guests differ).
    team_id: str | None = None

    @property
    def shown_name(self) -> str:
        """The name Slack shows: the display name, else the full name, else the handle."""
        return self.display_name or self.real_name or self.name or self.id


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    private: bool
    topic: str
    purpose: str
    members: tuple[str, ...]
    created: int | None
    archived: bool
    # The channel's folder of day files inside the zip (its name; some tools use the ID).
    folder: str


class Channels:
    """The export's channels, public (channels.json) and private (groups.json)."""

    def __init__(self, channels: list[Channel]) -> None:
        self._all = channels
        self._by_id = {channel.id: channel for channel in channels}
        self._by_name = {channel.name: channel for channel in channels}

    def find(self, name_or_id: str) -> Channel | None:
        """By ID ("C061A0WJG") or name, with or without its "#"."""
        key = name_or_id.strip()
        return self._by_id.get(key) or self._by_name.get(key.removeprefix("#"))

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)


@dataclass(frozen=True)
class Reaction:
    name: str
    users: tuple[str, ...]
    count: int


@dataclass(frozen=True)
class Edited:
    user: str | None
    ts: str


@dataclass(frozen=True)
class ExportFile:
    id: str
    name: str | None
    title: str | None
    mimetype: str | None
    size: int | None
    url_private: str | None
    # "tombstone" (deleted), "hidden_by_limit" (beyond a free plan's history): no content.
    mode: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def gone(self) -> bool:
        return self.mode in ("tombstone", "hidden_by_limit")


@dataclass(frozen=True)
class ExportMessage:
    """One message of a day file. ``text`` is the final text: an export holds a message as
    it was last edited, and ``edited`` says by whom and when."""

    position: Position
    ts: str
    user: str | None
    text: str
    subtype: str | None
    thread_ts: str | None
    reply_users: tuple[str, ...]
    replies: tuple[tuple[str | None, str], ...]  # (user, ts) of each reply, on a thread's root
    reactions: tuple[Reaction, ...]
    edited: Edited | None
    files: tuple[ExportFile, ...]
    bot_id: str | None
    username: str | None  # a bot message's name as it posted
    bot_profile: dict[str, Any] | None = field(repr=False)
    blocks: list[Any] = field(repr=False)
    attachments: list[Any] = field(repr=False)
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def ts_ms(self) -> int:
        """The time as Unix milliseconds (origin_server_ts, the appservice ``ts`` parameter)."""
        seconds, micros = ts_key(self.ts)
        return seconds * 1000 + micros // 1000

    @property
    def is_thread_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    @property
    def is_thread_root(self) -> bool:
        return self.thread_ts == self.ts

    @property
    def bot_name(self) -> str | None:
        """A bot message's sender name: the name it posted under, else its app's name."""
        if self.username:
            return self.username
        name = (self.bot_profile or {}).get("name")
        return name if isinstance(name, str) and name else None


@dataclass(frozen=True)
class DayFile:
    day: str  # YYYY-MM-DD
    member: str
    size: int  # uncompressed bytes: with the sizes of all days, a progress measure


class StoredFile:
    """A message's file found in the archive or in a --files directory."""

    def __init__(self, where: str, size: int, opener: Any) -> None:
        self.where = where  # "archive:__uploads/F1/a.png" or a filesystem path
        self.size = size
        self._opener = opener

    def open(self) -> IO[bytes]:
        stream: IO[bytes] = self._opener()
        return stream

    def __repr__(self) -> str:
        return f"StoredFile({self.where!r}, {self.size})"


def open_export(path: str | Path) -> Export:
    """Open a Slack workspace export zip: reads its directory, users and channels."""
    return Export(path)


class Export:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as error:
            raise ExportError(str(self.path), f"cannot be read as a zip archive: {error}") \
                from None
        try:
            infos = self._zip.infolist()
            self._root = _root_of([info.filename for info in infos])
            self._members = {info.filename: info for info in infos}
            self._days = _day_files(infos, self._root)
            self._uploads: dict[str, str] | None = None
            self.users = self._read_users()
            self.channels = Channels(self._read_channels())
        except BaseException:
            self._zip.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Export:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- messages --------------------------------------------------------------------------

    def channel(self, name_or_id: str) -> Channel:
        """The channel, or an ExportError that says where it was looked for."""
        found = self.channels.find(name_or_id)
        if found is None:
            raise ExportError(self._root + "channels.json",
                              f"no channel named or with ID {name_or_id!r} in channels.json "
                              "or groups.json (private channels are only in exports of all "
                              "channels and conversations)")
        return found

    def day_files(self, channel: Channel | str) -> list[DayFile]:
        """The channel's day files in date order."""
        found = channel if isinstance(channel, Channel) else self.channel(channel)
        return list(self._days.get(found.folder, ()))

    def messages(self, channel: Channel | str, *,
                 from_day: str | None = None) -> Iterator[ExportMessage]:
        """The channel's messages in time order: day files by date, each day's messages by
        ts. ``from_day`` ("YYYY-MM-DD") skips earlier day files unread (resumption).
        An unknown channel raises here, before iterating."""
        day_files = [day_file for day_file in self.day_files(channel)
                     if from_day is None or day_file.day >= from_day]
        return self._messages_of(day_files)

    def read_day(self, day_file: DayFile) -> list[ExportMessage]:
        """One day file's messages by ts, the whole file checked first (an ExportError
        names the file and position before any of the day is handed out)."""
        return self._read_day(day_file.member)

    def _messages_of(self, day_files: list[DayFile]) -> Iterator[ExportMessage]:
        for day_file in day_files:
            # The whole day is parsed and checked before its first message is yielded.
            day = self._read_day(day_file.member)
            yield from day
            del day  # a past day is not kept while the next one is read

    def _read_day(self, member: str) -> list[ExportMessage]:
        data = self._load(member)
        if not isinstance(data, list):
            raise ExportError(member, f"a day file holds a JSON array of messages, not "
                              f"{_kind(data)}")
        messages = [_message(member, index, item) for index, item in enumerate(data)]
        messages.sort(key=lambda message: ts_key(message.ts))  # stable: equal ts keep order
        return messages

    # -- files -----------------------------------------------------------------------------

    def find_file(self, file: ExportFile, files_dir: str | Path | None = None
                  ) -> StoredFile | None:
        """A message's file: from the archive (``__uploads/<id>/<name>`` or
        ``<channel>/attachments/<id>-<name>``), else from ``files_dir`` (``<id>/<name>``,
        ``<id>-<name>``, ``<id>`` or ``<name>``), else None."""
        if file.gone:
            return None
        member = self._upload_index().get(file.id)
        if member is not None:
            info = self._members[member]
            return StoredFile(f"archive:{member}", info.file_size,
                              lambda: self._zip.open(member))
        if files_dir is None:
            return None
        folder = Path(files_dir)
        # Neither the ID nor the name from the export may lead out of the directory.
        name = Path(file.name).name if file.name else ""
        name = "" if name in (".", "..") else name
        candidates = []
        if _FILE_ID.fullmatch(file.id):
            if name:
                candidates += [folder / file.id / name, folder / f"{file.id}-{name}"]
            candidates.append(folder / file.id)
        if name:
            candidates.append(folder / name)
        for candidate in candidates:
            if candidate.is_file():
                return StoredFile(str(candidate), candidate.stat().st_size,
                                  functools.partial(candidate.open, "rb"))
        return None

    def _upload_index(self) -> dict[str, str]:
        # Built on first use from the zip's directory only.
        if self._uploads is None:
            uploads: dict[str, str] = {}
            for name, info in self._members.items():
                if info.is_dir() or not name.startswith(self._root):
                    continue
                parts = name[len(self._root):].split("/")
                if len(parts) == 3 and parts[0] == "__uploads" and _FILE_ID.fullmatch(parts[1]):
                    uploads.setdefault(parts[1], name)
                elif len(parts) == 3 and parts[1] == "attachments":
                    file_id = parts[2].partition("-")[0]
                    if _FILE_ID.fullmatch(file_id):
                        uploads.setdefault(file_id, name)
            self._uploads = uploads
        return self._uploads

    # -- users and channels ----------------------------------------------------------------

    def _read_users(self) -> dict[str, User]:
        member = next((self._root + name for name in _USER_FILES
                       if self._root + name in self._members), None)
        if member is None:
            raise ExportError(self._root + "users.json",
                              "missing: not a Slack workspace export (users.json and "
                              "channels.json are at its top)")
        data = self._load(member)
        if not isinstance(data, list):
            raise ExportError(member, f"holds a JSON array of users, not {_kind(data)}")
        users: dict[str, User] = {}
        for index, item in enumerate(data):
            fields = _Fields(member, index, item, "user")
            profile = fields.obj("profile") or {}
            user_id = fields.text("id", required=True) or ""
            users[user_id] = User(
                id=user_id,
                name=fields.text("name") or "",
                real_name=fields.text("real_name") or _text(profile.get("real_name")),
                display_name=_text(profile.get("display_name")),
                email=_text(profile.get("email")) or None,
                deleted=bool(item.get("deleted")),
                is_bot=bool(item.get("is_bot")),
                profile=profile,
                team_id=fields.text("team_id") or _text(profile.get("team")) or None,
            )
        return users

    def _read_channels(self) -> list[Channel]:
        channels: list[Channel] = []
        for name, private in _CHANNEL_FILES:
            member = self._root + name
            if member not in self._members:
                continue
            data = self._load(member)
            if not isinstance(data, list):
                raise ExportError(member, f"holds a JSON array of channels, not {_kind(data)}")
            for index, item in enumerate(data):
                fields = _Fields(member, index, item, "channel")
                channel_id = fields.text("id", required=True) or ""
                channel_name = fields.text("name", required=True) or ""
                folder = channel_name if channel_name in self._days else channel_id
                created = item.get("created")
                channels.append(Channel(
                    id=channel_id, name=channel_name, private=private,
                    topic=_text((fields.obj("topic") or {}).get("value")),
                    purpose=_text((fields.obj("purpose") or {}).get("value")),
                    members=tuple(fields.strings("members")),
                    created=int(created) if isinstance(created, (int, str)) and
                    str(created).isdigit() else None,
                    archived=bool(item.get("is_archived")),
                    folder=folder,
                ))
        if not channels and self._root + "channels.json" not in self._members:
            raise ExportError(self._root + "channels.json",
                              "missing: not a Slack workspace export")
        return channels

    def _load(self, member: str) -> Any:
        try:
            with self._zip.open(member) as stream:
                data = stream.read()
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ExportError(member, f"damaged in the archive: {error}") from None
        except (NotImplementedError, RuntimeError) as error:
            # Deflate64 (Windows' "Send to compressed folder" of a large folder) or a
            # password: unzip the export and zip it again with a common zip tool.
            raise ExportError(member, f"cannot be unpacked: {error}; unzip the export and "
                              "zip it again (zip -r export.zip .)") from None
        try:
            # The standard library, not json_codec's orjson: on a day file it is as fast,
            # and orjson's parser takes a scratch buffer of several times the file's size.
            return json.loads(data)
        except json.JSONDecodeError as error:
            raise ExportError(member, f"not valid JSON: {error.msg}",
                              line=error.lineno, column=error.colno) from None
        except UnicodeDecodeError as error:
            raise ExportError(member, f"not UTF-8 at byte {error.start}") from None


def _root_of(names: list[str]) -> str:
    """The folder the export's top is in: "" for Slack's own zip, or the one top folder of
    a re-zipped export ("slack-export/")."""
    folders = [name.rpartition("/")[0] for name in names
               if name.rpartition("/")[2] in (*_USER_FILES, "channels.json")]
    if not folders:
        return ""
    top = min(folders, key=len)
    return top + "/" if top else ""


def _day_files(infos: list[zipfile.ZipInfo], root: str) -> dict[str, list[DayFile]]:
    days: dict[str, list[DayFile]] = {}
    for info in infos:
        if not info.filename.startswith(root):
            continue
        folder, _, base = info.filename[len(root):].rpartition("/")
        match = _DAY_FILE.fullmatch(base)
        if not folder or "/" in folder or match is None:
            continue
        try:
            datetime.date.fromisoformat(match.group(1))
        except ValueError:
            continue  # named like a day, but no day: not one of Slack's files
        days.setdefault(folder, []).append(DayFile(match.group(1), info.filename,
                                                   info.file_size))
    for day_files in days.values():
        day_files.sort(key=lambda day_file: day_file.day)
    return days


class _Fields:
    """Typed reads of one JSON object, raising ExportError at its position."""

    def __init__(self, member: str, index: int, item: Any, what: str,
                 counted: str | None = None) -> None:
        self.member = member
        self.index = index
        # What the index counts: a reaction's problem is at its message's index.
        self.counted = counted or what
        if not isinstance(item, dict):
            self.fail(f"a {what} is a JSON object, not {_kind(item)}")
        self.item: dict[str, Any] = item

    def fail(self, problem: str) -> NoReturn:
        raise ExportError(self.member, problem, index=self.index, what=self.counted)

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.item.get(key)
        if value is None:
            if required:
                self.fail(f'"{key}" is missing')
            return None
        if not isinstance(value, str):
            self.fail(f'"{key}" is {_kind(value)}, not a string')
        return value

    def obj(self, key: str) -> dict[str, Any] | None:
        value = self.item.get(key)
        if value is not None and not isinstance(value, dict):
            self.fail(f'"{key}" is {_kind(value)}, not an object')
        return value

    def array(self, key: str) -> list[Any]:
        value = self.item.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(f'"{key}" is {_kind(value)}, not an array')
        return value

    def strings(self, key: str) -> list[str]:
        values = self.array(key)
        for value in values:
            if not isinstance(value, str):
                self.fail(f'"{key}" holds {_kind(value)}, not only strings')
        return values

    def ts(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and not _TS.fullmatch(value):
            self.fail(f'"{key}" is {value!r}, not a Slack timestamp like "1700000000.000100"')
        return value


def _message(member: str, index: int, item: Any) -> ExportMessage:
    fields = _Fields(member, index, item, "message")
    ts = fields.ts("ts", required=True) or ""
    reactions = []
    for reaction in fields.array("reactions"):
        part = _Fields(member, index, reaction, "reaction", "message")
        name = part.text("name", required=True) or ""
        users = part.strings("users")
        count = reaction.get("count", len(users))
        if not isinstance(count, int):
            fields.fail(f'reaction "{name}": "count" is {_kind(count)}, not a number')
        reactions.append(Reaction(name, tuple(users), count))
    edited = None
    if (edit := fields.obj("edited")) is not None:
        part = _Fields(member, index, edit, "edit", "message")
        edited = Edited(part.text("user"), part.ts("ts", required=True) or "")
    replies = []
    for reply in fields.array("replies"):
        part = _Fields(member, index, reply, "reply", "message")
        replies.append((part.text("user"), part.ts("ts", required=True) or ""))
    files = []
    listed = fields.array("files")
    if not listed and (single := fields.obj("file")) is not None:
        # Exports of before 2019 write a file_share message's one file as "file".
        listed = [single]
    for file in listed:
        part = _Fields(member, index, file, "file", "message")
        size = file.get("size")
        files.append(ExportFile(
            id=part.text("id", required=True) or "", name=part.text("name"),
            title=part.text("title"), mimetype=part.text("mimetype"),
            size=size if isinstance(size, int) else None,
            url_private=part.text("url_private"), mode=part.text("mode"), raw=file))
    text = item.get("text")
    if text is not None and not isinstance(text, str):
        fields.fail(f'"text" is {_kind(text)}, not a string')
    return ExportMessage(
        position=Position(member, index),
        ts=ts,
        user=fields.text("user"),
        text=text or "",
        subtype=fields.text("subtype"),
        thread_ts=fields.ts("thread_ts"),
        reply_users=tuple(fields.strings("reply_users")),
        replies=tuple(replies),
        reactions=tuple(reactions),
        edited=edited,
        files=tuple(files),
        bot_id=fields.text("bot_id"),
        username=fields.text("username"),
        bot_profile=fields.obj("bot_profile"),
        blocks=fields.array("blocks"),
        attachments=fields.array("attachments"),
        raw=item,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
