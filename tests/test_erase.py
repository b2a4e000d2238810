"""``bridge erase``: a person asks to be forgotten. Against a live bridge (real Synapse, the
Slack simulator, real SMTP both ways), on SQLite and PostgreSQL:

- ``--dry-run`` prints what would go and changes nothing;
- ``--email ADDRESS --redact`` removes their subscription, puppet, mappings, threads and
  stored mail, scrubs them from earlier audit entries, records the erasure without them,
  redacts their messages, clears the puppet's profile and makes it leave the room;
- ``--slack WORKSPACE:USER`` (no ``--redact``) does the same and leaves messages be;
- a name that names nobody is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from bridge.cli import main as bridge_cli
from bridge.db.models import AuditEntry, MessageMapping, Puppet
from bridge.email.models import EmailSubscriber, EmailThread
from testkit.helpers import command
from testkit.matrix_client import MatrixRequestError, MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import (
    ANNA,
    CHANNEL,
    SlackBridge,
    linked_room,
    running_slack_and_email_bridge,
)
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body, puppet_of
from tests.test_all_directions import plain, send_mail

# An address no other test uses: the suite's Synapse outlives a test, and the erasure makes
# the puppet leave every room it is in, other tests' rooms included.
ERIKA = "erika.loeschen@stadt.example"
ERIKA_PUPPET = "@email_erika.loeschen=40stadt.example:bridge.test"


@pytest.fixture
async def both_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        yield running


async def erase_cli(config_path: Path, *args: str,
                    capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    def run() -> int:
        try:
            return bridge_cli(["erase", "-c", str(config_path), *args])
        except SystemExit as exit_:
            return int(exit_.code or 0)

    code = await asyncio.to_thread(run)  # (in a thread: it runs its own event loop)
    out, err = capsys.readouterr()
    return code, out, err


async def membership(admin: MatrixTestClient, room: str, user_id: str) -> str | None:
    state = await admin.get_state(room, "m.room.member", user_id)
    return state.get("membership") if state else None


async def rows(bridge: SlackBridge, query: Any) -> list[Any]:
    async with bridge.hub.db.sessions() as session:
        return list(await session.scalars(query))


async def test_erase_removes_a_person_and_their_puppet_leaves(
        both_bridge: SlackBridge, admin: MatrixTestClient, team: Any, sink: SmtpSink,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim, bot = both_bridge.sim, both_bridge.homeserver.bot
    room = await linked_room(both_bridge, admin)
    await command(bot, admin, room, "!bridge link email bauamt-erase", expect="Linked")
    await command(bot, admin, room, f"!bridge email subscribe {ERIKA} Erika Mustermann",
                  expect="Subscribed")
    await send_mail(both_bridge.smtp_port, f"Erika Mustermann <{ERIKA}>",  # type: ignore[attr-defined]
                    f"bauamt-erase@{MAIL_DOMAIN}", "Bauantrag 17", "Meine Telefonnummer ist 123")
    from_erika = await admin.wait_for_event(room, has_body("Meine Telefonnummer ist 123"),
                                            timeout=20)
    assert from_erika["sender"] == ERIKA_PUPPET
    await sim.post_message(team, CHANNEL, ANNA, text="Anna schreibt")
    from_anna = await admin.wait_for_event(room, has_body("Anna schreibt"), timeout=15)
    anna = puppet_of(team, ANNA)
    # Mail to Erika (a delivery naming her): then everything before it is finished too.
    await admin.send_text(room, "Antwort an alle")
    await sink.wait_for(lambda r: "Antwort an alle" in plain(r))
    assert await membership(admin, room, ERIKA_PUPPET) == "join"

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(both_bridge.config.model_dump(mode="json")))

    # A dry run: what would go, nothing changed.
    code, out, err = await erase_cli(config_path, "--email", ERIKA.upper(), "--redact",
                                     "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "Dry run: nothing changed" in out and "email_subscriber: would remove 1 row" in out
    assert await membership(admin, room, ERIKA_PUPPET) == "join"
    assert await rows(both_bridge, select(EmailSubscriber.address)) == [ERIKA]

    # Named wrongly: refused, nothing changed.
    code, out, err = await erase_cli(config_path, "--email", "erika at stadt", capsys=capsys)
    assert code == 1 and "is not a mail address" in err, (out, err)
    code, out, err = await erase_cli(config_path, "--slack", "nirgendwo:U0ANNA",
                                     capsys=capsys)
    assert code == 1 and "slack.workspaces" in err, (out, err)
    assert await membership(admin, room, ERIKA_PUPPET) == "join"

    code, out, err = await erase_cli(config_path, "--email", ERIKA, "--redact",
                                     capsys=capsys)
    assert code == 0, err
    for line in ("email_subscriber: removed 1 row", "puppet: removed 1 row",
                 "email_thread: removed 1 row", "message_mapping: removed",
                 "left 1 room", "redacted 1 of 1 message"):
        assert line in out, out
    # In Matrix: her message redacted, her puppet gone from the room, its profile cleared.
    event = await admin.request("GET", f"/rooms/{room}/event/{from_erika['event_id']}")
    assert event["content"] == {}, event
    assert await membership(admin, room, ERIKA_PUPPET) == "leave"
    try:
        profile = await admin.request("GET", f"/profile/{ERIKA_PUPPET}")
    except MatrixRequestError as exc:  # Synapse: nothing left to show is "not found"
        assert exc.status == 404, exc
        profile = {}
    assert not profile.get("displayname") and not profile.get("avatar_url"), profile
    # Others' messages stay.
    anna_event = await admin.request("GET", f"/rooms/{room}/event/{from_anna['event_id']}")
    assert anna_event["content"]["body"] == "Anna schreibt"
    # In the database: nothing of her is left.
    assert await rows(both_bridge, select(EmailSubscriber.address)) == []
    topics = await rows(both_bridge, select(EmailThread.topic))
    assert "Bauantrag 17" not in topics and "[Bauamt] Anna schreibt" in topics, topics
    assert await rows(both_bridge, select(Puppet.user_id).where(
        Puppet.user_id == ERIKA_PUPPET)) == []
    assert await rows(both_bridge, select(MessageMapping.id).where(
        MessageMapping.event_id == from_erika["event_id"])) == []
    entries = await rows(both_bridge, select(AuditEntry).order_by(AuditEntry.id))
    assert [e.details for e in entries if "erika" in e.details.lower()] == []
    erased = entries[-1]
    assert (erased.action, erased.via, erased.actor) == ("erase", "cli", "operator")
    details = json.loads(erased.details)
    assert details["network"] == "email" and details["rows"]["email_subscriber"] == 1
    assert details["messages_redacted"] == 1 and details["rooms_left"] == 1
    # The earlier subscription is still on record, without whom it concerned.
    subscribed = [e for e in entries if e.action == "subscribe"]
    assert subscribed and "(erased)" in subscribed[0].details

    # Slack, without --redact: the puppet leaves, the messages stay.
    code, out, err = await erase_cli(config_path, "--slack", f"{team.name}:{ANNA.lower()}",
                                     capsys=capsys)
    assert code == 0, err
    # (Her puppet may be in rooms of other tests too: the homeserver is shared.)
    assert "puppet: removed 1 row" in out and re.search(r"left [1-9]\d* room", out), out
    assert await membership(admin, room, anna) == "leave"
    anna_event = await admin.request("GET", f"/rooms/{room}/event/{from_anna['event_id']}")
    assert anna_event["content"]["body"] == "Anna schreibt"

    # Erased is not banned: when Anna writes again, her message arrives (a new puppet).
    await sim.post_message(team, CHANNEL, ANNA, text="Anna ist wieder da")
    again = await admin.wait_for_event(room, has_body("Anna ist wieder da"), timeout=20)
    assert again["sender"] == anna


async def test_a_slack_person_is_named_by_workspace_name_or_team_id(sqlite_url: str) -> None:
    """From what the bridge holds, without asking Slack. A user ID is one person (in an
    Enterprise Grid the same in every workspace): all their puppets are found."""
    import time

    from bridge.config import parse_config
    from bridge.db.engine import Database
    from bridge.networks import network

    slack = network("slack")
    assert slack.find_person is not None
    config = parse_config({
        "homeserver": {"domain": "stadt.example"},
        "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
        "slack": {"enabled": True, "workspaces": [
            {"name": "rathaus", "bot_token": "xoxb-1", "app_token": "xapp-1"},
            {"name": "Tiefbau", "bot_token": "xoxb-2", "app_token": "xapp-2"}]}}, environ={})
    db = Database(sqlite_url)
    try:
        await db.upgrade()
        async with db.transaction() as session:
            for remote_id in ("T0RATHAUS_U0ANNA", "T0TIEF_U0ANNA", "T0RATHAUS_U0BEN"):
                session.add(Puppet(user_id=f"@slack_{remote_id.lower()}:stadt.example",
                                   network="slack", remote_id=remote_id,
                                   created_at=time.time(), updated_at=time.time()))
        async with db.sessions() as session:
            assert await slack.find_person(session, config, "rathaus:u0ben") == \
                ["T0RATHAUS_U0BEN"]
            assert await slack.find_person(session, config, "T0TIEF:U0ANNA") == \
                ["T0TIEF_U0ANNA"]
            # "Tiefbau" looks like a team ID (T…) but is a configured name.
            assert await slack.find_person(session, config, "Tiefbau:U0BEN") == \
                ["T0RATHAUS_U0BEN"]
            assert await slack.find_person(session, config, "rathaus:U0ANNA") == \
                ["T0RATHAUS_U0ANNA", "T0TIEF_U0ANNA"]
            for words, why in (("rathaus", "WORKSPACE:USER"), ("rathaus:anna", "WORKSPACE:USER"),
                               ("stadtwerke:U0ANNA", "slack.workspaces")):
                with pytest.raises(ValueError, match=why):
                    await slack.find_person(session, config, words)
    finally:
        await db.close()
