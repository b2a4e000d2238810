"""The Slack network's own CLI commands: ``bridge import slack-export``.

    bridge import slack-export -c config.yaml EXPORT.zip --channel <name or id>
        --room <room id or alias> [--files DIR] [--dry-run]

Exit codes as the rest of ``bridge``: 0 done; 2 a config or usage error; 1 anything else
(an export that is not what Slack writes, a room the bot is not in), with one line that
names the file, key or position.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bridge.config import ConfigError, load_config

if TYPE_CHECKING:
    from bridge.cli import CommandGroups
    from bridge.slack.export.importer import Summary

log = logging.getLogger("bridge.slack.import")

# Plain progress lines (not a terminal): at most one per this many seconds.
LINE_EVERY_SECONDS = 10.0


def add_commands(groups: CommandGroups) -> None:
    p = groups.group("import").add_parser(
        "slack-export", help="post a channel's history from Slack's workspace export (zip) "
                             "into a room: puppets, original times, threads, reactions, files")
    p.add_argument("-c", "--config", default="config.yaml")
    p.add_argument("export", metavar="EXPORT.zip", help="the export Slack made")
    p.add_argument("--channel", required=True, metavar="NAME_OR_ID",
                   help="the channel in the export: its name (bauamt, #bauamt) or ID")
    p.add_argument("--room", required=True, metavar="ROOM",
                   help="the Matrix room: its ID (!abc:example.org) or an alias "
                        "(#bauamt:example.org); the bridge's bot must be in it")
    p.add_argument("--files", metavar="DIR", type=Path,
                   help="a folder with the files the export links to (<file id>/<name>, "
                        "<file id>-<name> or <name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="read and check everything, print the summary; post and write "
                        "nothing")
    p.set_defaults(func=cmd_import_slack_export)


class BarProgress:
    """A progress bar (tqdm) on a terminal: bytes of day files read, messages per second
    and the time left."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar: Any = None
        self.started = time.monotonic()
        self.messages = 0

    def start(self, total_bytes: int, days: int) -> None:
        from tqdm import tqdm

        self.started = time.monotonic()
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, file=self.stream,
                        desc=f"importing {days} day(s)", dynamic_ncols=True)

    def advance(self, done_bytes: int, messages: int, day: str) -> None:
        if self.bar is None:
            return
        self.messages = messages
        rate = messages / max(time.monotonic() - self.started, 1e-6)
        self.bar.set_postfix_str(f"{day}, {messages} messages, {rate:.0f} msg/s",
                                 refresh=False)
        self.bar.update(done_bytes - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LineProgress:
    """Plain lines (a log, a pipe): how far, how fast, how long still."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.total = 0
        self.started = time.monotonic()
        self.last_line = 0.0
        self.lines = 0

    def start(self, total_bytes: int, days: int) -> None:
        self.total = total_bytes
        self.started = self.last_line = time.monotonic()
        print(f"importing {days} day file(s), {total_bytes} bytes", file=self.stream,
              flush=True)

    def advance(self, done_bytes: int, messages: int, day: str) -> None:
        now = time.monotonic()
        # The first day at once (the rate shows early), then every few seconds, and the end.
        if self.lines and now - self.last_line < LINE_EVERY_SECONDS and \
                done_bytes < self.total:
            return
        self.last_line = now
        self.lines += 1
        elapsed = max(now - self.started, 1e-6)
        share = done_bytes / self.total if self.total else 1.0
        left = elapsed * (1 - share) / share if share else 0.0
        print(f"{share:4.0%} up to {day}: {messages} messages, {messages / elapsed:.0f} "
              f"msg/s, about {_duration(left)} left", file=self.stream, flush=True)

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def team_of(users: Any) -> str | None:
    """The workspace the export is of: the team most of its users belong to."""
    teams = Counter(user.team_id for user in users.values() if user.team_id)
    return teams.most_common(1)[0][0] if teams else None


def cmd_import_slack_export(args: argparse.Namespace) -> int:
    from bridge.cli import Failure, read_database
    from bridge.logs import setup_logging
    from bridge.slack.config import SlackConfig
    from bridge.slack.export import ExportError, open_export
    from bridge.slack.export.importer import similar_channels

    config = load_config(args.config)
    setup_logging("WARNING", config.logging.format, config.secrets())
    settings = config.section(SlackConfig)
    if not settings.enabled:
        raise ConfigError(f"{args.config}: slack.enabled must be true to import Slack "
                          "history (the homeserver's registration must hold the Slack "
                          "puppets' namespace)")
    if args.files is not None and not args.files.is_dir():
        raise Failure(f"--files {args.files}: no such folder")
    try:
        slack = open_export(args.export)
    except ExportError as exc:
        raise Failure(str(exc)) from None
    with slack:
        channel = slack.channels.find(args.channel)
        if channel is None:
            names = [c.name for c in slack.channels]
            close = similar_channels(names, args.channel)
            hint = (f"; did you mean {', '.join('#' + n for n in close)}?" if close else
                    f"; it has {', '.join('#' + n for n in sorted(names)[:20])}"
                    f"{' …' if len(names) > 20 else ''}" if names else "; it has none")
            raise Failure(f"{args.export}: no channel named or with ID {args.channel!r} in "
                          f"channels.json or groups.json{hint}")
        team_id = team_of(slack.users)
        if team_id is None:
            raise Failure(f"{args.export}: users.json names no team_id, so the workspace "
                          "(and with it the puppets' IDs) is unknown")

        async def run(db: Any) -> Summary:
            return await _run(config, db, slack, channel, team_id, args)

        try:
            summary = read_database(config, run)
        except ExportError as exc:
            raise Failure(f"{exc}. Nothing of that day was imported; the days before it "
                          "are. Fix the file and run the same command again: it goes on "
                          "where it stopped.") from None
    what = "Dry run, nothing posted or written" if args.dry_run else "Imported"
    print(f"{what}: #{channel.name} ({channel.id}) of {args.export} into {args.room}")
    for line in summary.lines(args.dry_run):
        print(f"  {line}")
    return 0


async def _run(config: Any, db: Any, slack: Any, channel: Any, team_id: str,
               args: argparse.Namespace) -> Summary:
    import aiohttp
    from mautrix.appservice import AppServiceAPI
    from mautrix.client import ClientAPI
    from mautrix.errors import MatrixRequestError, MForbidden, MNotFound
    from mautrix.types import Membership, RoomAlias, RoomID, UserID

    from bridge.cli import Failure
    from bridge.core.origin import proof_key
    from bridge.matrix.side import (
        CACHE_MAX_AGE_SECONDS,
        CACHE_MAX_ROOMS,
        CACHE_MAX_USERS,
        CacheStateStore,
    )
    from bridge.slack.config import SlackConfig
    from bridge.slack.export.importer import ImportRefused, NoProgress, SlackImport

    settings = config.section(SlackConfig)
    stream = sys.stderr
    progress = (BarProgress(stream) if stream.isatty() else LineProgress(stream)) \
        if not args.dry_run else NoProgress()
    async with aiohttp.ClientSession() as http:
        api = AppServiceAPI(base_url=config.homeserver.address,
                            bot_mxid=UserID(config.bot_mxid),
                            token=config.appservice.as_token, log=log,  # type: ignore[arg-type]
                            state_store=CacheStateStore(CACHE_MAX_ROOMS, CACHE_MAX_USERS,
                                                        CACHE_MAX_AGE_SECONDS),
                            client_session=http, bridge_name=config.appservice.id)
        bot = api.bot_intent()
        room = str(args.room)
        try:
            if room.startswith("#"):
                try:
                    room_id = str((await bot.resolve_room_alias(RoomAlias(room))).room_id)
                except MNotFound:
                    raise Failure(f"--room {room}: no such room alias on the homeserver") \
                        from None
            elif room.startswith("!"):
                room_id = room
            else:
                raise Failure(f"--room {room}: give a room ID (!…) or an alias (#…:server)")
            try:
                # ClientAPI's own method: the intent's would make the bot join the room.
                members = await ClientAPI.get_joined_members(bot, RoomID(room_id))
            except (MForbidden, MNotFound):
                raise Failure(
                    f"--room {room}: the bridge's bot {config.bot_mxid} is not in that room "
                    "(or it does not exist). Invite the bot there (with the bridge running "
                    "it joins by itself) and run the command again.") from None
            for member in members:
                await bot.state_store.set_membership(RoomID(room_id), member, Membership.JOIN)
            if await _is_encrypted(bot, room_id):
                # This process has no share in the bridge's encryption device: its events
                # would go into the room in the clear, next to encrypted ones.
                raise Failure(f"--room {room}: the room is encrypted, and importing history "
                              "into an encrypted room is not supported yet (it would be "
                              "posted unencrypted). Import into an unencrypted room.")
            real_accounts, link_id = await _double_puppeting(config, db, team_id, channel.id,
                                                             members)
            importer = SlackImport(
                export=slack, channel=channel, team_id=team_id, room_id=room_id, db=db,
                bot=bot, puppet_prefix=settings.puppet_prefix,
                domain=config.homeserver.domain, files_dir=args.files,
                dry_run=args.dry_run, progress=progress, http=http,
                real_accounts=real_accounts,
                real_api=AppServiceAPI(
                    base_url=config.homeserver.address, bot_mxid=UserID(config.bot_mxid),
                    token=config.double_puppet.as_token, log=log,  # type: ignore[arg-type]
                    client_session=http, bridge_name=config.appservice.id)
                if real_accounts else None,
                proof_key=proof_key(config.double_puppet.as_token) if real_accounts else None,
                link_id=link_id)
            return await importer.run()
        except ImportRefused as exc:
            raise Failure(f"--room {room}: {exc}") from None
        except MatrixRequestError as exc:
            raise Failure(f"the homeserver refused ({exc.errcode}): {exc.message}") from None
        except aiohttp.ClientError as exc:
            raise Failure(f"cannot reach the homeserver at {config.homeserver.address}: "
                          f"{exc}") from None


async def _is_encrypted(bot: Any, room_id: str) -> bool:
    from mautrix.errors import MNotFound
    from mautrix.types import EventType, RoomID

    try:
        await bot.get_state_event(RoomID(room_id), EventType.ROOM_ENCRYPTION)
    except MNotFound:
        return False
    return True


async def _double_puppeting(config: Any, db: Any, team_id: str, channel_id: str,
                            members: Any) -> tuple[dict[str, str], int]:
    """With double puppeting on: Slack user ID -> the linked person's own account, for the
    people whose account (on this homeserver) is in the room; and the channel's link ID in
    this room (0 if it is not linked), which their signed origin markers name."""
    from bridge.db import people, store
    from bridge.slack.ids import NETWORK, space_of

    if not config.double_puppet.enabled:
        return {}, 0
    joined = {str(member) for member in members}
    prefix = f"{team_id}_"
    local = f":{config.homeserver.domain}"
    async with db.sessions() as session:
        identities = await people.all_identities(session, NETWORK)
        link = await store.link_by_remote(session, NETWORK, space_of(team_id, channel_id))
    accounts = {identity.remote_id[len(prefix):]: identity.matrix_user_id
                for identity in identities
                if identity.remote_id.startswith(prefix)
                and identity.matrix_user_id in joined
                and identity.matrix_user_id.endswith(local)}
    return accounts, link.id if link is not None else 0
