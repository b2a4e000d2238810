"""`!bridge people link|unlink|list`: what an admin types and what they are told, the
refusals (not an admin, bad words, an unknown Slack user, a conflict) that change nothing,
and the audit log's entries as `bridge audit` prints them.

Real Synapse, the Slack simulator, real SMTP; SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from tests.admin.test_report_e2e import bridge_cli
from tests.conftest import SERVER_NAME
from tests.slack.conftest import ANNA, BEN, TEAM_ID, SlackBridge


def body(reply: dict[str, Any]) -> str:
    return str(reply["content"]["body"])


async def links(bridge: SlackBridge) -> list[tuple[str, str, str, str]]:
    from bridge.db import people

    async with bridge.hub.db.sessions() as session:
        return [(i.matrix_user_id, i.network, i.remote_id, i.label)
                for i in await people.all_identities(session)]


async def test_an_admin_links_lists_and_unlinks_people(
        both_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        ben: MatrixTestClient, database_url: str, tmp_path: Path) -> None:
    bot = both_bridge.homeserver.bot
    room = await open_room(bot, admin, direct=True)

    async def say(text: str, expect: str = "") -> str:
        return body(await command(bot, admin, room, text, expect=expect))

    assert "Nobody is linked yet" in await say("people list")
    answer = await say(f"people link slack rathaus:{ANNA} {anna.user_id}", "Linked")
    assert answer == f"Linked Slack `rathaus:{ANNA}` (Anna) to {anna.user_id}."
    # Typed in another case, the same Slack user: nothing to do.
    answer = await say(f"people link slack rathaus:{ANNA.lower()} {anna.user_id}", "already")
    assert answer == f"Slack `rathaus:{ANNA}` is already linked to {anna.user_id}."
    answer = await say(f"people link email Anna.Schmidt@Stadt.Example {anna.user_id}",
                       "Linked")
    assert answer == f"Linked Email `anna.schmidt@stadt.example` to {anna.user_id}."
    # In a room, with the prefix, too.
    group = await open_room(bot, admin, name="Personal")
    answer = body(await command(bot, admin, group,
                                f"!bridge people link slack rathaus:{BEN} {ben.user_id}",
                                expect="Linked"))
    assert answer == f"Linked Slack `rathaus:{BEN}` (Ben Weber) to {ben.user_id}."

    slack = both_bridge.slack
    assert sorted(await links(both_bridge)) == sorted([
        (anna.user_id, "slack", f"{TEAM_ID}_{ANNA}", f"rathaus:{ANNA}"),
        (anna.user_id, "email", "anna.schmidt@stadt.example", "anna.schmidt@stadt.example"),
        (ben.user_id, "slack", f"{TEAM_ID}_{BEN}", f"rathaus:{BEN}")])
    # The remote ID is the puppet's: the puppet of the linked person is found from it.
    assert slack.puppet_user_id(f"{TEAM_ID}_{ANNA}") == \
        f"@slack_{TEAM_ID.lower()}_{ANNA.lower()}:{SERVER_NAME}"

    listing = await say("people list", "linked people")
    assert listing.splitlines()[0] == "2 linked people:"
    assert f"- {anna.user_id}: Slack `rathaus:{ANNA}` (linked by {admin.user_id})" in listing
    assert f"- {anna.user_id}: Email `anna.schmidt@stadt.example` (linked by " \
        f"{admin.user_id})" in listing
    assert f"- {ben.user_id}: Slack `rathaus:{BEN}`" in listing
    one = await say(f"people list {anna.user_id}", "linked identities")
    assert one.splitlines()[0] == f"{anna.user_id}'s linked identities:"
    assert ben.user_id not in one and len(one.splitlines()) == 3

    # Unlinking: by the identity as it is listed, or as the network knows it, any case.
    answer = await say(f"people unlink email ANNA.SCHMIDT@stadt.example {anna.user_id}",
                       "Unlinked")
    assert answer == f"Unlinked Email `anna.schmidt@stadt.example` from {anna.user_id}."
    answer = await say("people unlink email anna.schmidt@stadt.example", "not linked")
    assert answer == "Email `anna.schmidt@stadt.example` is not linked."
    answer = await say(f"people unlink slack rathaus:{BEN}", "Unlinked")
    assert answer == f"Unlinked Slack `rathaus:{BEN}` from {ben.user_id}."
    assert await links(both_bridge) == [
        (anna.user_id, "slack", f"{TEAM_ID}_{ANNA}", f"rathaus:{ANNA}")]
    assert f"{ben.user_id} has no linked identities." == \
        await say(f"people list {ben.user_id}", "no linked")

    # Each change is in the audit log, by the admin through a command, and only changes.
    code, out, err = await bridge_cli(database_url, tmp_path, "audit", "--format", "json")
    assert code == 0, err
    entries = [e for e in json.loads(out)["entries"] if e["action"].startswith("people-")]
    assert [(e["actor"], e["via"], e["room_id"], e["action"], e["details"]["network"],
             e["details"]["label"], e["details"]["matrix_user"]) for e in entries] == [
        (admin.user_id, "command", None, "people-link", "slack", f"rathaus:{ANNA}",
         anna.user_id),
        (admin.user_id, "command", None, "people-link", "email",
         "anna.schmidt@stadt.example", anna.user_id),
        (admin.user_id, "command", None, "people-link", "slack", f"rathaus:{BEN}",
         ben.user_id),
        (admin.user_id, "command", None, "people-unlink", "email",
         "anna.schmidt@stadt.example", anna.user_id),
        (admin.user_id, "command", None, "people-unlink", "slack", f"rathaus:{BEN}",
         ben.user_id)]
    code, out, err = await bridge_cli(database_url, tmp_path, "audit")
    assert code == 0, err
    lines = [line for line in out.splitlines() if "people-link" in line]
    assert len(lines) == 3 and f"label=rathaus:{ANNA}" in lines[0]
    assert f"matrix_user={anna.user_id}" in lines[0] and "network=slack" in lines[0]


async def test_refusals_name_what_is_wrong_and_change_nothing(
        both_bridge: SlackBridge, admin: MatrixTestClient, anna: MatrixTestClient,
        ben: MatrixTestClient, outsider: MatrixTestClient, team: Any) -> None:
    bot = both_bridge.homeserver.bot
    room = await open_room(bot, admin, direct=True)

    async def say(text: str, expect: str = "") -> str:
        return body(await command(bot, admin, room, text, expect=expect))

    await say(f"people link slack rathaus:{ANNA} {anna.user_id}", "Linked")
    before = await links(both_bridge)

    # Not an admin: refused, whatever the words.
    theirs = await open_room(bot, admin, name="Gemeinsam")
    await admin.invite(theirs, outsider.user_id)
    await outsider.join(theirs)
    for text in (f"!bridge people link slack rathaus:{BEN} {outsider.user_id}",
                 "!bridge people list", f"!bridge people unlink slack rathaus:{ANNA}",
                 "!bridge people"):
        answer = body(await command(bot, outsider, theirs, text, expect="Sorry"))
        assert "only bridge admins" in answer and "bridge.admins" in answer, answer

    slack = both_bridge.slack
    puppet = slack.puppet_user_id(f"{TEAM_ID}_{BEN}")
    wrong = {
        # wrong number of words: the usage line
        "people link slack": "Usage: `people link <network> <identity> <@user:domain>`",
        "people unlink": "Usage: `people unlink <network> <identity> [<@user:domain>]`",
        "people frobnicate": "`people` has no command `frobnicate`; it has:",
        # the Slack user
        f"people link slack {BEN} {ben.user_id}":
            "Name the Slack user as `<workspace>:<user id>`, like `rathaus:U0123ABCD`.",
        f"people link slack rathaus:U0NIEMAND {ben.user_id}":
            "Slack workspace `rathaus` has no user with the ID U0NIEMAND (Slack answered "
            "`user_not_found`).",
        f"people link slack rathaus:ben {ben.user_id}":
            "`ben` is not a Slack user ID. Slack shows it in the person's profile "
            "(⋮ → Copy member ID); it looks like U0123ABCD.",
        f"people link slack nirgends:{BEN} {ben.user_id}":
            "No Slack workspace `nirgends`; configured: `rathaus`",
        # the address
        f"people link email ben(at)stadt.example {ben.user_id}":
            "`ben(at)stadt.example` is not an email address (like "
            "anna.schmidt@stadt.example).",
        # the Matrix account
        f"people link slack rathaus:{BEN} ben": "`ben` is not a Matrix user ID (like "
                                               "@anna.schmidt:stadt.example).",
        f"people link slack rathaus:{BEN} {bot}": f"{bot} is the bridge bot; link people to "
                                                  "their own Matrix account.",
        f"people link slack rathaus:{BEN} {puppet}": f"{puppet} is a Slack puppet of the "
                                                     "bridge, not a person's Matrix account.",
        f"people link slack rathaus:{BEN} @niemand:{SERVER_NAME}":
            f"The homeserver knows no user @niemand:{SERVER_NAME}; check how it is spelt",
        # the network
        f"people link teams someone {ben.user_id}": "Unknown or disabled network `teams`. "
            "Networks whose people can be linked: `email`, `slack`.",
        f"people link test someone {ben.user_id}": "Test network identities cannot be linked "
                                                   "to Matrix accounts.",
        # a conflict: the identity is someone else's
        f"people link slack rathaus:{ANNA} {ben.user_id}":
            f"Slack `rathaus:{ANNA}` is already linked to {anna.user_id}; an identity can be "
            f"linked to one Matrix account only. Unlink it first to link it to "
            f"{ben.user_id}.",
        f"people unlink slack rathaus:{ANNA} {ben.user_id}":
            f"Slack `rathaus:{ANNA}` is linked to {anna.user_id}, not to {ben.user_id}; "
            "nothing was unlinked.",
    }
    for text, expected in wrong.items():
        answer = await say(text)
        assert expected in answer, (text, answer)
    answer = await say(f"people link slack rathaus:{team.bot_user_id} {ben.user_id}")
    assert answer == f"`rathaus:{team.bot_user_id}` is a bot in Slack, not a person."
    # Nothing changed: Anna's link is as it was, Ben has none.
    assert await links(both_bridge) == before
