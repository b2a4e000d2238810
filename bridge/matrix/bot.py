"""The bridge bot's commands: ``help``, ``ping``, ``version``, ``status``, ``link``, ``unlink``.

In a direct chat with the bot, commands are plain words; elsewhere they start with the
command prefix (``!bridge``). Connectors add sub-commands under their network's name
(``!bridge email subscribe ...``). Every command gets an answer, also a wrong one.
"""

from __future__ import annotations

import functools
import logging
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mautrix.types import EventType, RoomID

from bridge import __version__
from bridge.admin import actions
from bridge.admin.audit import Actor
from bridge.core.commands import word_count
from bridge.core.errors import CommandError, NotFoundError, UsageError
from bridge.db import queues, store
from bridge.db.queues import Delivery
from bridge.matrix import encryption
from bridge.matrix.side import json_body
from bridge.networks import networks
from bridge.people import actions as people
from bridge.people import self_service

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

    from bridge.core.hub import Hub
    from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge.bot")


@functools.cache
def _markdown() -> MarkdownIt:
    """The renderer of the bot's replies, made with the first reply: markdown-it is 1 MB of
    resident memory a bridge nobody sends commands to never needs (issue 15: idle RSS)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "breaks": True})


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
    #: What a usage reply adds below the usage line (``link``: the networks there are).
    usage_note: Callable[[Hub], str] | None = None


COMMANDS: dict[str, Command] = {}


@dataclass(frozen=True, slots=True)
class HelpEntry:
    """One line of ``help``: a bot command, or a network's sub-command (``network`` set)."""

    usage: str
    summary: str
    admin_only: bool
    network: str | None


def command(
    name: str, usage: str, summary: str, *, admin_only: bool,
    usage_note: Callable[[Hub], str] | None = None,
) -> Callable[[Handler], Handler]:
    """Declare a bot command: its usage line (which `help` shows and against which the
    bot checks the words given: bridge/core/commands.py), its summary and who may use it."""
    def register(func: Handler) -> Handler:
        COMMANDS[name] = Command(name, func, usage, summary, admin_only, usage_note)
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
        name = words[0].lower() if words else "help"
        try:
            reply = await self._answer(ctx, name)
        except Exception:
            # (Handlers' failures are answered in _run_handler; this is for the bot's own.)
            log.exception("command %r failed in %s", name, delivery.room_id)
            reply = _went_wrong(name)
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
        # A command of two words (``people link``, ``me confirm``): the second word picks it.
        if ctx.args and f"{name} {ctx.args[0].lower()}" in COMMANDS:
            name = f"{name} {ctx.args[0].lower()}"
            cmd = COMMANDS[name]
            ctx.args = ctx.args[1:]
            if name == f"{ME} confirm" and len(ctx.args) > 1 and \
                    all(word.isdigit() for word in ctx.args):
                ctx.args = ["".join(ctx.args)]  # typed as it reads: 1234 5678
        elif name == ME and ctx.args:
            return await self._me_network(ctx)
        elif cmd is None and _group(name):
            return self._group_reply(ctx, name)
        connector = self.hub.connectors.get(name)
        if cmd is None and connector is not None:
            return await self._network_command(ctx, name)
        if cmd is None:
            return (f"Unknown command `{name}`. Send `{self._prefixed('help', ctx.is_direct)}` "
                    "for the list of commands.")
        if cmd.admin_only and not ctx.is_admin:
            return (f"Sorry, only bridge admins may use `{name}`. Ask your bridge "
                    "administrator to add you to `bridge.admins`.")
        # The arguments are what follows the command's name, of one word or two.
        if not word_count(cmd.usage[len(cmd.name):]).allows(len(ctx.args)):
            note = cmd.usage_note(self.hub) if cmd.usage_note else ""
            return self._usage_reply(cmd.usage, UsageError(note), ctx.is_direct)
        return await self._run_handler(ctx, name, cmd.handler(self, ctx), cmd.usage)

    async def _run_handler(self, ctx: Context, name: str, running: Awaitable[str],
                           usage: str) -> str:
        """The handler's answer; any failure becomes one error answer. A command is never
        left to the outbox to retry: its effects may be half done, and the person who
        typed it is waiting for an answer now, not a repeat hours later."""
        try:
            return await running
        except UsageError as exc:
            return self._usage_reply(usage, exc, ctx.is_direct)
        except CommandError as exc:
            return str(exc)
        except Exception:
            log.exception("command %r failed in %s", name, ctx.room_id)
            return _went_wrong(name)

    async def _me_network(self, ctx: Context) -> str:
        """``me <network> <words>``: a one-time code for one's own identity there."""
        network = ctx.args[0].lower()
        connector = self.hub.connectors.get(network)
        if connector is None or not connector.links_people:
            lines = [f"`me` has no command `{ctx.args[0]}`; it has:"]
            lines += [self._entry_line(e, ctx) for e in self.declared()
                      if _command_words(e.usage).split(" ")[0] == ME]
            return "\n".join(lines)
        usage = f"{ME} {network} {connector.me_words}"
        words = ctx.args[1:]
        if not word_count(connector.me_words).allows(len(words)):
            return self._usage_reply(usage, UsageError(), ctx.is_direct)
        return await self._run_handler(ctx, f"{ME} {network}",
                                       _me_ask(self, ctx, network, words), usage)

    def _group_reply(self, ctx: Context, group: str) -> str:
        """``people`` alone, or with a word that is none of its commands: its commands."""
        commands = _group(group)
        if not ctx.is_admin and all(cmd.admin_only for cmd in commands):
            return (f"Sorry, only bridge admins may use `{group}`. Ask your bridge "
                    "administrator to add you to `bridge.admins`.")
        opening = (f"`{group}` has no command `{ctx.args[0]}`; it has:" if ctx.args
                   else f"`{group}` commands:")
        return "\n".join([opening, *(f"- `{self._prefixed(cmd.usage, ctx.is_direct)}`: "
                                      f"{cmd.summary}" for cmd in commands)])

    async def _network_command(self, ctx: Context, network: str) -> str:
        connector = self.hub.connectors[network]
        if connector.not_started is not None:
            return f"{connector.display_name} is not started: {connector.not_started}"
        subs = {sub.name: sub for sub in connector.commands()}
        chosen = subs.get(ctx.args[0].lower()) if ctx.args else None
        if chosen is None:
            opening = (f"{connector.display_name} has no command `{ctx.args[0]}`; it has:"
                       if ctx.args else f"{connector.display_name} commands:")
            entries = [e for e in self.declared() if e.network == network]
            return "\n".join([opening, *(self._entry_line(e, ctx) for e in entries)])
        if chosen.admin_only and not ctx.is_admin:
            return f"Sorry, only bridge admins may use `{network} {chosen.name}`."
        if not word_count(chosen.arguments).allows(len(ctx.args) - 1):
            return self._usage_reply(chosen.usage(network), UsageError(), ctx.is_direct)
        return await self._run_handler(
            ctx, f"{network} {chosen.name}",
            chosen.handler(self.hub, ctx.room_id, ctx.sender, ctx.args[1:]),
            chosen.usage(network))

    # --- help: built from the declarations only ---------------------------------------

    def declared(self) -> list[HelpEntry]:
        """Every command with its usage and summary: the bot's own in the order they are
        declared, then each enabled network's sub-commands."""
        entries = []
        for cmd in COMMANDS.values():
            entries.append(HelpEntry(cmd.usage, cmd.summary, cmd.admin_only, network=None))
            if cmd.name == ME:
                entries += [
                    HelpEntry(f"{ME} {network} {connector.me_words}",
                              f"send your {connector.display_name} identity a one-time code "
                              "that links it to your account", admin_only=False, network=None)
                    for network, connector in sorted(self.hub.connectors.items())
                    if connector.links_people]
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
            "formatted_body": _markdown().render(markdown).strip(),
        }


def _went_wrong(name: str) -> str:
    return (f"Something went wrong while running `{name}`; the bridge's log has the details. "
            "Please try again later.")


# --- the commands ------------------------------------------------------------------------


@command("help", "help [<command>...]", "this list, or how to use one command",
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
    group = [e for e in entries if _command_words(e.usage).startswith(asked + " ")]
    found = exact + group or [e for e in entries if e.network == asked]
    if not found:
        return (f"There is no command `{asked}`. Send "
                f"`{bot._prefixed('help', ctx.is_direct)}` for the list of commands.")
    lines = []
    for entry in found:
        admins = " Only bridge admins may use it." if entry.admin_only else ""
        lines.append(f"`{bot._prefixed(entry.usage, ctx.is_direct)}`: {entry.summary}."
                     f"{admins}")
    return "\n".join(lines)


def _group(name: str) -> list[Command]:
    """The commands of two words whose first word is ``name`` (``people``)."""
    return [cmd for key, cmd in COMMANDS.items() if key.startswith(name + " ")]


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
        failed_here = await queues.count_failed(session, ctx.room_id)
        failed_overall = await queues.count_failed(session)
    outbox -= 1  # this very command runs as an outbox item and is still pending
    lines = ["**Links of this room**"]
    if not links:
        lines.append("- none: this room is not linked to any remote conversation")
    for link in links:
        connector = bot.hub.connectors.get(link.network)
        name = connector.display_name if connector else f"{link.network} (network disabled)"
        label = f"{link.remote_id}" + (f" ({link.remote_name})" if link.remote_name else "")
        lines.append(f"- {name}: {label}")
    encryption_line = await encryption.status_line(bot.matrix, ctx.room_id)
    if encryption_line is not None:
        lines.append(encryption_line)
    lines.append("**Networks**")
    sections = bot.hub.config.networks()
    for network in sorted(set(sections) | set(bot.hub.connectors)):
        connector = bot.hub.connectors.get(network)
        if connector is None:
            section = sections.get(network)
            state = ("enabled, but not available in this version"
                     if section is not None and section.enabled else "disabled")
        else:
            health = connector.state()
            state = ("✅ " if health.ok else "❌ ") + health.detail
        lines.append(f"- {network}: {state}")
    lines.append(f"**Queues**: {inbox} event(s) waiting to be handled, "
                 f"{outbox} delivery(ies) waiting")
    if ctx.is_direct:
        failed = f"{failed_overall} overall"
    else:
        failed = f"{failed_here} in this room, {failed_overall} overall"
    lines.append(f"**Failed deliveries**: {failed}"
                 + (f" (see `{bot._prefixed('failed', ctx.is_direct)}`)"
                    if failed_overall else ""))
    if not ctx.is_direct:
        report = await bot.matrix.power_report(ctx.room_id)
        if report.missing:
            lines.append(report.describe())
    return "\n".join(lines)


@command("link", "link <network> <remote-id> [workspace]",
         "link this room to a remote conversation"
         + "".join(f" ({n.link_hint})" for n in networks() if n.link_hint), admin_only=True,
         usage_note=lambda hub: actions.networks_sentence(hub).strip())
async def _link(bot: Bot, ctx: Context) -> str:
    hub = bot.hub
    if len(ctx.args) < 2:
        raise UsageError(actions.networks_sentence(hub).strip())
    network, remote_id, extra = ctx.args[0].lower(), ctx.args[1], ctx.args[2:]
    actions.started_connector(hub, network)
    if ctx.is_direct:
        raise CommandError("This is our direct chat. Invite me to the room you want to link "
                           f"and send `{hub.prefix} link {network} {remote_id}` there.")
    outcome = await actions.link(hub, Actor.command(ctx.sender), ctx.room_id, network,
                                 remote_id, extra)
    if not outcome.changed:
        return outcome.message
    report = await bot.matrix.power_report(ctx.room_id)
    return outcome.message + ("\n" + report.describe() if report.missing else "")


@command("unlink", "unlink <network> [<remote-id>]",
         "end a link of this room (the remote ID is needed when there are several)",
         admin_only=True)
async def _unlink(bot: Bot, ctx: Context) -> str:
    if len(ctx.args) not in (1, 2):
        raise UsageError()
    outcome = await actions.unlink(
        bot.hub, Actor.command(ctx.sender), ctx.room_id, ctx.args[0].lower(),
        ctx.args[1] if len(ctx.args) == 2 else None,
        status_hint=f"`{bot._prefixed('status', ctx.is_direct)}`")
    return outcome.message


FAILED_LISTED = 10


@command("failed", "failed", "deliveries that failed for good (this room's; all in a "
         "direct chat), newest first", admin_only=True)
async def _failed(bot: Bot, ctx: Context) -> str:
    room = None if ctx.is_direct else ctx.room_id
    async with bot.hub.db.sessions() as session:
        total = await queues.count_failed(session, room)
        items = await queues.list_failed(session, room, FAILED_LISTED)
    where = "" if room is None else " in this room"
    if not items:
        return f"No failed deliveries{where}."
    lines = [f"**Failed deliveries{where}** (newest first)"]
    for item in items:
        connector = bot.hub.connectors.get(item.network)
        network = connector.display_name if connector else item.network
        when = datetime.fromtimestamp(item.failed_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        reason = " ".join(item.error.split())
        if len(reason) > 200:
            reason = reason[:199] + "…"
        lines.append(f"- `{item.id}` to {network} ({item.kind}) in {item.room_id}, "
                     f"{when}: {reason}")
    if total > len(items):
        lines.append(f"… and {total - len(items)} more")
    lines.append(f"Send `{bot._prefixed('retry <id>', ctx.is_direct)}` or "
                 f"`{bot._prefixed('retry all', ctx.is_direct)}` to try again.")
    return "\n".join(lines)


@command("retry", "retry <id>|all", "try failed deliveries again (`all`: this room's; "
         "every room's in a direct chat)", admin_only=True)
async def _retry(bot: Bot, ctx: Context) -> str:
    if len(ctx.args) != 1:
        raise UsageError()
    which = ctx.args[0].lower()
    item_id: int | None = None
    if which != "all":
        if not which.isdigit():
            raise UsageError(f"`{ctx.args[0]}` is not a delivery ID; "
                             f"`{bot._prefixed('failed', ctx.is_direct)}` lists the IDs.")
        item_id = int(which)
    room = None if ctx.is_direct or item_id is not None else ctx.room_id
    try:
        _, outcome = await actions.retry(bot.hub, Actor.command(ctx.sender), item_id=item_id,
                                         room_id=room)
    except NotFoundError as exc:
        raise CommandError(f"{exc} `{bot._prefixed('failed', ctx.is_direct)}` lists "
                           "them.") from None
    return outcome.message


# --- people: identity links (bridge/people/actions.py) ------------------------------------

_PERSON_FORMS = "; ".join(f"{n.name} {n.person_words}" for n in networks() if n.person_words)


@command("people link", "people link <network> <identity> <@user:domain>",
         "link a person's remote identity to their Matrix account"
         + (f" ({_PERSON_FORMS})" if _PERSON_FORMS else ""), admin_only=True,
         usage_note=lambda hub: people.link_forms(hub))
async def _people_link(bot: Bot, ctx: Context) -> str:
    network, identity, user_id = ctx.args[0].lower(), ctx.args[1], ctx.args[2]
    outcome = await people.link(bot.hub, Actor.command(ctx.sender), user_id, network,
                                [identity])
    return outcome.message


@command("people unlink", "people unlink <network> <identity> [<@user:domain>]",
         "remove an identity link (with the Matrix user: only if it is theirs)",
         admin_only=True)
async def _people_unlink(bot: Bot, ctx: Context) -> str:
    network, identity = ctx.args[0].lower(), ctx.args[1]
    user_id = ctx.args[2] if len(ctx.args) == 3 else None
    outcome = await people.unlink(bot.hub, Actor.command(ctx.sender), network, [identity],
                                  user_id)
    return outcome.message


@command("people list", "people list [<@user:domain>]",
         "who is linked to which remote identities (everyone, or one person)",
         admin_only=True)
async def _people_list(bot: Bot, ctx: Context) -> str:
    user_id = ctx.args[0] if ctx.args else None
    identities = await people.people(bot.hub, user_id)
    return people.listing(bot.hub, identities, user_id)


# --- me: one's own identity links, proven with a one-time code (bridge/people/) ------------

ME = "me"


def _direct_only(bot: Bot, ctx: Context) -> None:
    """``me`` commands are answered only in a direct chat with the bot: codes are private."""
    if not ctx.is_direct:
        raise CommandError(f"Send `me` commands to me in a direct chat (start one with "
                           f"{bot.hub.bot_mxid}); codes and links are private.")


async def _me_ask(bot: Bot, ctx: Context, network: str, words: list[str]) -> str:
    _direct_only(bot, ctx)
    return await self_service.request_code(bot.hub, ctx.sender, network, words)


@command(ME, ME, "your own linked identities, and codes waiting for confirmation "
         "(in a direct chat with me)", admin_only=False)
async def _me(bot: Bot, ctx: Context) -> str:
    _direct_only(bot, ctx)
    return await self_service.own_links(bot.hub, ctx.sender)


@command(f"{ME} confirm", f"{ME} confirm <code>",
         "link the identity that one-time code was sent to", admin_only=False)
async def _me_confirm(bot: Bot, ctx: Context) -> str:
    _direct_only(bot, ctx)
    return await self_service.confirm(bot.hub, ctx.sender, ctx.args[0])


@command(f"{ME} unlink", f"{ME} unlink <network> <identity>...",
         "remove one of your own linked identities", admin_only=False)
async def _me_unlink(bot: Bot, ctx: Context) -> str:
    _direct_only(bot, ctx)
    return await self_service.unlink_own(bot.hub, ctx.sender, ctx.args[0].lower(),
                                         ctx.args[1:])
