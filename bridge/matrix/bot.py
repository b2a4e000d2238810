"""The bridge bot's commands: ``help``, ``ping``, ``version``, ``status``, ``link``, ``unlink``.

In a direct chat with the bot, commands are plain words; elsewhere they start with the
command prefix (``!bridge``). Connectors add sub-commands under their network's name
(``!bridge email subscribe ...``). Every command gets an answer, also a wrong one.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from markdown_it import MarkdownIt
from mautrix.types import EventType, RoomID
from sqlalchemy.exc import IntegrityError

from bridge import __version__
from bridge.core.errors import CommandError, UsageError
from bridge.db import queues, store
from bridge.db.queues import Delivery
from bridge.matrix.bridge_info import bridge_info_deliveries
from bridge.matrix.side import json_body

if TYPE_CHECKING:
    from bridge.core.hub import Hub
    from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge.bot")

_markdown = MarkdownIt("commonmark", {"html": False, "breaks": True})


@dataclass(slots=True)
class Context:
    room_id: str
    sender: str
    args: list[str]
    is_direct: bool
    is_admin: bool


Handler = Callable[["Bot", Context], Awaitable[str]]


@dataclass(slots=True)
class Command:
    name: str
    handler: Handler
    usage: str
    summary: str
    admin_only: bool


COMMANDS: dict[str, Command] = {}


@dataclass(frozen=True, slots=True)
class HelpEntry:
    """One line of ``help``: a bot command, or a network's sub-command (``network`` set)."""

    usage: str
    summary: str
    admin_only: bool
    network: str | None


def command(
    name: str, usage: str, summary: str, *, admin_only: bool
) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        COMMANDS[name] = Command(name, func, usage, summary, admin_only)
        return func

    return register


class Bot:
    def __init__(self, hub: Hub, matrix: MatrixSide) -> None:
        self.hub = hub
        self.matrix = matrix

    def _prefixed(self, text: str, is_direct: bool) -> str:
        return text if is_direct else f"{self.hub.prefix} {text}"

    async def run(self, delivery: Delivery, payload: dict[str, Any]) -> None:
        sender = payload["sender"]
        is_direct = bool(payload.get("is_direct"))
        try:
            words = shlex.split(payload["command"])
        except ValueError:
            words = payload["command"].split()
        ctx = Context(room_id=delivery.room_id, sender=sender, args=words[1:],
                      is_direct=is_direct, is_admin=self.hub.is_admin(sender))
        log.info("command %r from %s in %s", words[0] if words else "", sender,
                 delivery.room_id)
        reply = await self._answer(ctx, words[0].lower() if words else "help")
        content = self._content(reply)
        if payload.get("event_id"):
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": payload["event_id"]}}
        # The txn ID ties the reply to this outbox item: a repeat after a crash is a no-op.
        await self.matrix.bot_intent.send_message_event(
            RoomID(delivery.room_id), EventType.ROOM_MESSAGE, json_body(content),
            txn_id=f"ob{delivery.id}"
        )

    async def _answer(self, ctx: Context, name: str) -> str:
        cmd = COMMANDS.get(name)
        connector = self.hub.connectors.get(name)
        if cmd is None and connector is not None:
            return await self._network_command(ctx, name)
        if cmd is None:
            return (f"Unknown command `{name}`. Send `{self._prefixed('help', ctx.is_direct)}` "
                    "for the list of commands.")
        if cmd.admin_only and not ctx.is_admin:
            return (f"Sorry, only bridge admins may use `{name}`. Ask your bridge "
                    "administrator to add you to `bridge.admins`.")
        try:
            return await cmd.handler(self, ctx)
        except UsageError as exc:
            return self._usage_reply(cmd.usage, exc, ctx.is_direct)
        except CommandError as exc:
            return str(exc)
        except Exception:
            log.exception("command %r failed in %s", name, ctx.room_id)
            return (f"Something went wrong while running `{name}`; the bridge's log has the "
                    "details. Please try again later.")

    async def _network_command(self, ctx: Context, network: str) -> str:
        connector = self.hub.connectors[network]
        subs = {sub.name: sub for sub in connector.commands()}
        chosen = subs.get(ctx.args[0].lower()) if ctx.args else None
        if chosen is None:
            opening = (f"{connector.display_name} has no command `{ctx.args[0]}`; it has:"
                       if ctx.args else f"{connector.display_name} commands:")
            entries = [e for e in self.declared() if e.network == network]
            return "\n".join([opening, *(self._entry_line(e, ctx) for e in entries)])
        if chosen.admin_only and not ctx.is_admin:
            return f"Sorry, only bridge admins may use `{network} {chosen.name}`."
        try:
            return await chosen.handler(self.hub, ctx.room_id, ctx.sender, ctx.args[1:])
        except UsageError as exc:
            return self._usage_reply(chosen.usage(network), exc, ctx.is_direct)
        except CommandError as exc:
            return str(exc)

    # --- help: built from the declarations only ---------------------------------------

    def declared(self) -> list[HelpEntry]:
        """Every command with its usage and summary: the bot's own in the order they are
        declared, then each enabled network's sub-commands."""
        entries = [HelpEntry(cmd.usage, cmd.summary, cmd.admin_only, network=None)
                   for cmd in COMMANDS.values()]
        for network in sorted(self.hub.connectors):
            entries += [HelpEntry(sub.usage(network), sub.summary, sub.admin_only, network)
                        for sub in self.hub.connectors[network].commands()]
        return entries

    def _entry_line(self, entry: HelpEntry, ctx: Context) -> str:
        admins = " (bridge admins only)" if entry.admin_only and not ctx.is_admin else ""
        return f"- `{entry.usage}`: {entry.summary}{admins}"

    def _usage_reply(self, usage: str, error: UsageError, is_direct: bool) -> str:
        # The usage line ends the sentence it is in; anything more goes on a line of its own.
        line = f"Usage: `{self._prefixed(usage, is_direct)}`"
        return f"{line}\n{error}" if str(error) else line

    @staticmethod
    def _content(markdown: str) -> dict[str, Any]:
        return {
            "msgtype": "m.notice",
            "body": markdown,
            "format": "org.matrix.custom.html",
            "formatted_body": _markdown.render(markdown).strip(),
        }


# --- the commands ------------------------------------------------------------------------


@command("help", "help [<command>]", "this list, or how to use one command",
         admin_only=False)
async def _help(bot: Bot, ctx: Context) -> str:
    if ctx.args:
        return _help_for(bot, ctx, " ".join(ctx.args).lower())
    lines = ["**Bridge bot commands**"]
    if not ctx.is_direct:
        lines.append(f"Start each command with `{bot.hub.prefix}`.")
    lines += [bot._entry_line(entry, ctx) for entry in bot.declared()
              if ctx.is_admin or not entry.admin_only]
    if not ctx.is_admin:
        lines.append("Managing links is reserved to the bridge's admins.")
    lines.append(f"Send `{bot._prefixed('help <command>', ctx.is_direct)}` to see one "
                 "command alone.")
    return "\n".join(lines)


def _help_for(bot: Bot, ctx: Context, asked: str) -> str:
    """``help link``, ``help email`` (the network's commands), ``help email subscribe``."""
    entries = bot.declared()
    # A command's name is its usage up to the first argument: "link", "email subscribe".
    exact = [e for e in entries if _command_words(e.usage) == asked]
    found = exact or [e for e in entries if e.network == asked]
    if not found:
        return (f"There is no command `{asked}`. Send "
                f"`{bot._prefixed('help', ctx.is_direct)}` for the list of commands.")
    lines = []
    for entry in found:
        admins = " Only bridge admins may use it." if entry.admin_only else ""
        lines.append(f"`{bot._prefixed(entry.usage, ctx.is_direct)}`: {entry.summary}."
                     f"{admins}")
    return "\n".join(lines)


def _command_words(usage: str) -> str:
    words = []
    for word in usage.split():
        if word[0] in "<[" or "|" in word:
            break
        words.append(word)
    return " ".join(words)


@command("ping", "ping", "check that the bridge answers", admin_only=False)
async def _ping(bot: Bot, ctx: Context) -> str:
    return "Pong! The bridge is running."


@command("version", "version", "which version of the bridge runs here", admin_only=False)
async def _version(bot: Bot, ctx: Context) -> str:
    return f"matrix-hub-bridge {__version__}"


@command("status", "status", "this room's links and the health of each network",
         admin_only=True)
async def _status(bot: Bot, ctx: Context) -> str:
    async with bot.hub.db.sessions() as session:
        links = await store.links_of_room(session, ctx.room_id)
        inbox, outbox = await queues.count_pending(session)
    outbox -= 1  # this very command runs as an outbox item and is still pending
    lines = ["**Links of this room**"]
    if not links:
        lines.append("- none: this room is not linked to any remote conversation")
    for link in links:
        connector = bot.hub.connectors.get(link.network)
        name = connector.display_name if connector else f"{link.network} (network disabled)"
        label = f"{link.remote_id}" + (f" ({link.remote_name})" if link.remote_name else "")
        lines.append(f"- {name}: {label}")
    lines.append("**Networks**")
    sections = bot.hub.config.networks()
    for network in sorted(set(sections) | set(bot.hub.connectors)):
        connector = bot.hub.connectors.get(network)
        if connector is None:
            section = sections.get(network)
            state = ("enabled, but not available in this version"
                     if section is not None and section.enabled else "disabled")
        else:
            health = connector.health()
            state = ("✅ " if health.ok else "❌ ") + health.detail
        lines.append(f"- {network}: {state}")
    lines.append(f"**Queues**: {inbox} event(s) waiting to be handled, "
                 f"{outbox} delivery(ies) waiting")
    if not ctx.is_direct:
        report = await bot.matrix.power_report(ctx.room_id)
        if report.missing:
            lines.append(report.describe())
    return "\n".join(lines)


@command("link", "link <network> <remote-id> [workspace]",
         "link this room to a remote conversation (Slack: name the workspace when there are "
         "several)", admin_only=True)
async def _link(bot: Bot, ctx: Context) -> str:
    hub = bot.hub
    if len(ctx.args) < 2:
        raise UsageError(_networks_sentence(hub).strip())
    network, remote_id, extra = ctx.args[0].lower(), ctx.args[1], ctx.args[2:]
    connector = hub.connectors.get(network)
    if connector is None:
        raise CommandError(f"Unknown or disabled network `{network}`.{_networks_sentence(hub)}")
    if ctx.is_direct:
        raise CommandError("This is our direct chat. Invite me to the room you want to link "
                           f"and send `{hub.prefix} link {network} {remote_id}` there.")
    async with hub.db.sessions() as session:
        existing = await store.links_of_room(session, ctx.room_id)
        taken = await store.link_by_remote(session, network, remote_id)
    mine = next((lk for lk in existing if lk.network == network), None)
    if mine is not None:
        raise CommandError(f"This room is already linked to {connector.display_name} "
                           f"`{mine.remote_id}`. Unlink it first with "
                           f"`{hub.prefix} unlink {network}`.")
    if taken is not None:
        raise CommandError(f"{connector.display_name} `{remote_id}` is already linked to "
                           "another room; a remote conversation can be linked to one room only.")
    target = await connector.resolve_link(hub, ctx.room_id, remote_id, extra)

    created: list[Any] = []

    async def write(session: Any) -> None:
        link = await store.add_link(session, room_id=ctx.room_id, network=network,
                                    remote_id=target.remote_id, remote_name=target.remote_name,
                                    created_by=ctx.sender, settings=target.settings)
        created.append(link)
        await queues.enqueue(session, bridge_info_deliveries(hub, link, ctx.sender, target))

    try:
        await hub.enqueue([], also=write)
    except IntegrityError:
        raise CommandError("Someone linked this room or that conversation a moment ago; send "
                           f"`{hub.prefix} status` to see the links.") from None
    await connector.on_linked(hub, created[0])
    name = f" ({target.remote_name})" if target.remote_name else ""
    reply = f"Linked this room to {connector.display_name} `{target.remote_id}`{name}."
    report = await bot.matrix.power_report(ctx.room_id)
    if report.missing:
        reply += "\n" + report.describe()
    return reply


@command("unlink", "unlink <network> [<remote-id>]",
         "end a link of this room (the remote ID is needed when there are several)",
         admin_only=True)
async def _unlink(bot: Bot, ctx: Context) -> str:
    hub = bot.hub
    if len(ctx.args) != 1:
        raise UsageError()
    network = ctx.args[0].lower()
    removed: list[Any] = []

    async def write(session: Any) -> None:
        link = await store.remove_link(session, ctx.room_id, network)
        if link is not None:
            removed.append(link)
            await queues.enqueue(session, bridge_info_deliveries(hub, link, ctx.sender, None))

    await hub.enqueue([], also=write)
    if not removed:
        raise CommandError(f"This room has no `{network}` link. Send "
                           f"`{bot._prefixed('status', ctx.is_direct)}` to see its links.")
    connector = hub.connectors.get(network)
    if connector is not None:
        await connector.on_unlinked(hub, removed[0])
    display = connector.display_name if connector else network
    return f"Unlinked this room from {display} `{removed[0].remote_id}`."


def _networks_sentence(hub: Hub) -> str:
    if not hub.connectors:
        return (" No network is enabled on this bridge yet (set `slack.enabled` or "
                "`email.enabled` in its config).")
    return " Networks: " + ", ".join(f"`{n}`" for n in sorted(hub.connectors)) + "."

