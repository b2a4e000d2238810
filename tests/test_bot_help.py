"""The bot's help and usage answers, with Slack and email switched on, as users see them.

`help` lists every command with its syntax (the connectors' sub-commands too), `help <command>`
answers for that command alone, and a wrong call is answered with the usage line, which ends
where it ends. Real Synapse, the Slack simulator, real SMTP; SQLite only (the help does not
touch the database).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import sink as sink
from tests.slack.conftest import SlackBridge, running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team

# Every command an admin should find in `help`, with its syntax.
ADMIN_USAGES = [
    "help [<command>...]",
    "ping",
    "version",
    "status",
    "link <network> <remote-id> [workspace]",
    "unlink <network> [<remote-id>]",
    "failed",
    "retry <id>|all",
    "people link <network> <identity> <@user:domain>",
    "people unlink <network> <identity> [<@user:domain>]",
    "people list [<@user:domain>]",
    "me",
    "me email <address>",
    "me slack <workspace> <user-id-or-e-mail>",
    "me confirm <code>",
    "me unlink <network> <identity>...",
    "email subscribe <address> [name...]",
    "email unsubscribe <address>",
    "email list",
    "email policy subscribers|domain <domain>|open",
    "slack channels [workspace]",
    "slack finish [<channel>]",
    "test break",
]
USAGE_LINE = re.compile(r"^Usage: `[^`]+`$")


@pytest.fixture
async def both_bridge(homeserver: Homeserver, sqlite_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with running_slack_and_email_bridge(homeserver, sqlite_url, slack_sim, team,
                                              sink) as running:
        yield running


def body(reply: dict[str, Any]) -> str:
    return str(reply["content"]["body"])


async def test_help_lists_every_command_with_its_syntax(
        homeserver: Homeserver, both_bridge: SlackBridge, admin: MatrixTestClient,
        outsider: MatrixTestClient) -> None:
    bot = homeserver.bot
    direct = await open_room(bot, admin, direct=True)
    listing = body(await command(bot, admin, direct, "help", expect="Bridge bot commands"))
    entries = [line for line in listing.splitlines() if line.startswith("- `")]
    assert [line.split("`")[1] for line in entries] == ADMIN_USAGES
    assert all(re.match(r"^- `[^`]+`: \S", line) for line in entries), entries

    # Someone who is not an admin sees what they may use, and is not shown the rest.
    room = await open_room(bot, admin, name="Hilfe")
    await admin.invite(room, outsider.user_id)
    await outsider.join(room)
    listing = body(await command(bot, outsider, room, "!bridge help",
                                 expect="Bridge bot commands"))
    shown = [line.split("`")[1] for line in listing.splitlines() if line.startswith("- `")]
    assert shown == ["help [<command>...]", "ping", "version",
                     *(usage for usage in ADMIN_USAGES if usage.split()[0] == "me")]
    assert "Start each command with `!bridge`" in listing


async def test_help_for_one_command(homeserver: Homeserver, both_bridge: SlackBridge,
                                    admin: MatrixTestClient) -> None:
    bot = homeserver.bot
    direct = await open_room(bot, admin, direct=True)
    # In a direct chat without the prefix; the answer is that command's line alone.
    answer = body(await command(bot, admin, direct, "help email subscribe"))
    assert answer.startswith("`email subscribe <address> [name...]`: ")
    assert len(answer.splitlines()) == 1

    room = await open_room(bot, admin, name="Hilfe")
    answer = body(await command(bot, admin, room, "!bridge help link"))
    assert answer.startswith("`!bridge link <network> <remote-id> [workspace]`: ")
    assert len(answer.splitlines()) == 1 and "unlink" not in answer
    assert "Only bridge admins" in answer
    answer = body(await command(bot, admin, room, "!bridge help ping"))
    assert answer.startswith("`!bridge ping`: ") and "admins" not in answer

    # A network's name gives its sub-commands, and only those.
    answer = body(await command(bot, admin, room, "!bridge help email"))
    assert [line.split("`")[1] for line in answer.splitlines()] == [
        f"!bridge {usage}" for usage in ADMIN_USAGES if usage.startswith("email ")]
    answer = body(await command(bot, admin, room, "!bridge help slack channels"))
    assert answer.startswith("`!bridge slack channels [workspace]`: ")

    # The first word of commands of two words gives them all.
    answer = body(await command(bot, admin, room, "!bridge help people"))
    assert [line.split("`")[1] for line in answer.splitlines()] == [
        f"!bridge {usage}" for usage in ADMIN_USAGES if usage.startswith("people ")]
    answer = body(await command(bot, admin, room, "!bridge help people link"))
    assert answer.startswith("`!bridge people link <network> <identity> <@user:domain>`: ")
    assert "slack <workspace>:<user id>" in answer and "email <address>" in answer

    # `me` gives the self-service commands, the networks' forms included.
    answer = body(await command(bot, admin, direct, "help me"))
    assert [line.split("`")[1] for line in answer.splitlines()] == [
        usage for usage in ADMIN_USAGES if usage.split()[0] == "me"]

    answer = body(await command(bot, admin, room, "!bridge help frobnicate"))
    assert "no command `frobnicate`" in answer and "`!bridge help`" in answer


async def test_usage_messages_end_where_they_end(homeserver: Homeserver,
                                                 both_bridge: SlackBridge,
                                                 admin: MatrixTestClient) -> None:
    bot = homeserver.bot
    room = await open_room(bot, admin, name="Nutzung", bot_power=100)
    answer = body(await command(bot, admin, room, "!bridge email subscribe", expect="Usage"))
    assert answer == "Usage: `!bridge email subscribe <address> [name...]`"

    # The usage line stands alone; what else there is to say follows on a line of its own.
    answer = body(await command(bot, admin, room, "!bridge link", expect="Usage"))
    first, *rest = answer.splitlines()
    assert first == "Usage: `!bridge link <network> <remote-id> [workspace]`"
    assert rest == ["Networks: `email`, `slack`, `test`."]

    answer = body(await command(bot, admin, room, "!bridge unlink", expect="Usage"))
    assert answer == "Usage: `!bridge unlink <network> [<remote-id>]`"

    answer = body(await command(bot, admin, room, "!bridge people link slack", expect="Usage"))
    first, *rest = answer.splitlines()
    assert first == "Usage: `!bridge people link <network> <identity> <@user:domain>`"
    assert rest == ["`!bridge people link slack <workspace>:<user id> <@user:domain>` or "
                    "`!bridge people link email <address> <@user:domain>`"]
    answer = body(await command(bot, admin, room, "!bridge people list a b", expect="Usage"))
    assert answer == "Usage: `!bridge people list [<@user:domain>]`"
    direct = await open_room(bot, admin, direct=True)
    answer = body(await command(bot, admin, direct, "me slack rathaus", expect="Usage"))
    assert answer == "Usage: `me slack <workspace> <user-id-or-e-mail>`"
    answer = body(await command(bot, admin, direct, "me confirm", expect="Usage"))
    assert answer == "Usage: `me confirm <code>`"
    answer = body(await command(bot, admin, direct, "me teams x", expect="has no command"))
    assert "`me email <address>`" in answer and "`me confirm <code>`" in answer

    # A sub-command's usage needs the room's link to be checked first for some commands.
    await command(bot, admin, room, "!bridge link email nutzung", expect="Linked")
    for wrong, usage in [
        ("email unsubscribe", "email unsubscribe <address>"),
        ("email policy", "email policy subscribers|domain <domain>|open"),
        ("email policy domain", "email policy subscribers|domain <domain>|open"),
        ("email policy open now", "email policy subscribers|domain <domain>|open"),
        # More words than the declaration allows: refused before anything runs.
        ("email unsubscribe a@stadt.example b@stadt.example", "email unsubscribe <address>"),
        ("slack channels rathaus extra", "slack channels [workspace]"),
        ("failed now", "failed"),
        ("retry 1 2", "retry <id>|all"),
    ]:
        answer = body(await command(bot, admin, room, f"!bridge {wrong}", expect="Usage"))
        assert answer == f"Usage: `!bridge {usage}`", wrong
        assert USAGE_LINE.match(answer)

    # In a direct chat the usage has no prefix, as commands there have none.
    direct = await open_room(bot, admin, direct=True)
    answer = body(await command(bot, admin, direct, "email subscribe", expect="Usage"))
    assert answer == "Usage: `email subscribe <address> [name...]`"

    # A network's name alone, or with a command it does not have, lists what it has.
    answer = body(await command(bot, admin, room, "!bridge email frobnicate"))
    assert answer.splitlines()[0] == "Email has no command `frobnicate`; it has:"
    assert "`email subscribe <address> [name...]`" in answer
    answer = body(await command(bot, admin, room, "!bridge slack"))
    assert answer.splitlines() == [
        "Slack commands:",
        "- `slack channels [workspace]`: the channels the app sees and the rooms they are "
        "linked to",
        "- `slack finish [<channel>]`: point the linked Slack channel at this room (a pinned "
        "message), end the link, and archive the channel if so configured"]
