"""`bridge report` and `bridge audit` on what really happened in a room: a real Synapse,
the Slack simulator and real SMTP, one room linked to a Slack channel and an email address,
SQLite and PostgreSQL. Each message counts once, on the side it was written on: not again
when the bridge relays it, not when it is edited or reacted to, and the bot's notices and
commands to it never. The commands run as the operator runs them, as processes reading the
database while the bridge runs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.smtp_sink import SmtpSink
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, BEN, CHANNEL, SlackBridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import posted
from tests.test_all_directions import both_bridge as both_bridge
from tests.test_all_directions import send_mail

REPO = Path(__file__).resolve().parents[2]
ERIKA = "erika@stadt.example"


async def bridge_cli(database_url: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """``bridge <args> -c <a config naming the database>`` as its own process."""
    config = tmp_path / f"cli-{uuid.uuid4().hex[:6]}.yaml"
    config.write_text(yaml.safe_dump({
        "homeserver": {"domain": "bridge.test"}, "database": {"url": database_url},
        "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32}}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, "-c", str(config), env=environ, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def new_message(fragment: str) -> Any:
    def match(event: dict[str, Any]) -> bool:
        content = event["content"]
        return (event["type"] == "m.room.message" and "m.new_content" not in content
                and fragment in content.get("body", ""))
    return match


def edit_of(fragment: str) -> Any:
    def match(event: dict[str, Any]) -> bool:
        new = event["content"].get("m.new_content") or {}
        return event["type"] == "m.room.message" and fragment in new.get("body", "")
    return match


async def test_report_counts_each_message_once_where_it_was_written(
        both_bridge: SlackBridge, admin: MatrixTestClient, outsider: MatrixTestClient,
        team: Any, sink: SmtpSink, database_url: str, tmp_path: Path) -> None:
    sim, bot = both_bridge.sim, both_bridge.homeserver.bot
    alias_local = f"bauamt-{uuid.uuid4().hex[:6]}"
    alias = f"#{alias_local}:bridge.test"
    # Named and given an alias before the bot comes in: it reads them when it joins.
    room = await open_room(bot, admin, bot_power=100, name="Bauamt",
                           extra={"room_alias_name": alias_local})
    await command(bot, admin, room, f"!bridge link slack {CHANNEL}", expect="Linked")
    localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
    await command(bot, admin, room, f"!bridge link email {localpart}", expect="Linked")
    await command(bot, admin, room, f"!bridge email subscribe {ERIKA}", expect="Subscribed")
    await command(bot, admin, room, "!bridge status", expect="")
    # Renamed afterwards: the portal follows the room's state.
    await admin.send_state(room, "m.room.name", "", {"name": "Bauamt, Allgemeines"})
    await admin.invite(room, outsider.user_id)
    await outsider.join(room)

    # Slack: Anna twice (one edited, one reacted to), Ben once.
    first = await sim.post_message(team, CHANNEL, ANNA, text="Anna eins")
    await admin.wait_for_event(room, new_message("Anna eins"), timeout=20)  # (to edit it)
    await sim.post_message(team, CHANNEL, ANNA, text="Anna zwei")
    await sim.post_message(team, CHANNEL, BEN, text="Ben eins")
    await sim.edit_message(team, CHANNEL, first, text="Anna eins, korrigiert")
    await sim.add_reaction(team, CHANNEL, first, BEN, "thumbsup")
    # Email: Erika once.
    await send_mail(both_bridge.smtp_port, f"Erika Mustermann <{ERIKA}>",  # type: ignore[attr-defined]
                    f"{localpart}@{MAIL_DOMAIN}", "Frage", "Erika eins")
    # Matrix: the admin twice (one edited), the colleague once.
    edited = await admin.send_text(room, "Admin eins")
    await admin.send_text(room, "* Admin eins, korrigiert", extra={
        "m.new_content": {"msgtype": "m.text", "body": "Admin eins, korrigiert"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": edited}})
    await outsider.send_text(room, "Kollegin eins")
    await admin.send_text(room, "Admin zwei")

    # Everything has been counted once it is in the room (remote messages are counted when
    # they are queued for it) and once the last Matrix message reached Slack (the room's
    # events are routed in order).
    for fragment in ("Anna zwei", "Ben eins", "Erika eins"):
        await admin.wait_for_event(room, new_message(fragment), timeout=20)
    await admin.wait_for_event(room, edit_of("Anna eins, korrigiert"), timeout=20)
    await admin.wait_for_event(room, lambda e: e["type"] == "m.reaction", timeout=20)
    await posted(sim, team, "Admin zwei", timeout=20)

    code, out, err = await bridge_cli(database_url, tmp_path, "report", "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    [department] = report["departments"]
    assert department["name"] is None  # no plan put the room in a department
    [entry] = department["rooms"]
    assert entry["room_id"] == room
    assert (entry["name"], entry["alias"]) == ("Bauamt, Allgemeines", alias)
    assert [lk["network"] for lk in entry["links"]] == ["slack", "email"]
    assert entry["sides"] == {"matrix": {"messages": 3, "people": 2},
                              "slack": {"messages": 3, "people": 2},
                              "email": {"messages": 1, "people": 1}}
    assert entry["messages"] == 7
    assert entry["matrix_share"] == round(3 / 7, 4)
    assert entry["daily"][-1] == {"day": report["until"], "matrix": 3, "slack": 3, "email": 1}
    assert sum(day["matrix"] for day in entry["daily"]) == 3
    assert report["totals"]["messages"] == 7

    code, out, err = await bridge_cli(database_url, tmp_path, "report")
    assert code == 0, err
    assert "No department: 1 room, 7 messages, 43% on Matrix" in out
    assert any(line.split()[-4:] == ["(2)", "1", "(1)", "43%"]
               and line.strip().startswith(f"Bauamt, Allgemeines ({alias})")
               for line in out.splitlines()), out

    # The audit log: the links and the subscription, by the admin, through bot commands.
    code, out, err = await bridge_cli(database_url, tmp_path, "audit", "--room", room)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[1:5] for line in lines] == [
        [admin.user_id, "command", room, "link"],
        [admin.user_id, "command", room, "link"],
        [admin.user_id, "command", room, "subscribe"]], out
    assert "network=slack" in lines[0] and CHANNEL in lines[0]
    assert f"remote_id={localpart}" in lines[1] or localpart in lines[1]
    assert f"address={ERIKA}" in lines[2]
    code, out, err = await bridge_cli(database_url, tmp_path, "audit", "--format", "json",
                                      "--since", report["until"])
    assert code == 0, err
    entries = [e for e in json.loads(out)["entries"] if e["room_id"] == room]
    assert [(e["actor"], e["via"], e["action"]) for e in entries] == [
        (admin.user_id, "command", "link"), (admin.user_id, "command", "link"),
        (admin.user_id, "command", "subscribe")]
    assert entries[0]["details"]["network"] == "slack"
    code, out, err = await bridge_cli(database_url, tmp_path, "audit", "--since", "2999-01-01",
                                      "--room", room)
    assert (code, out) == (0, "")
    code, out, err = await bridge_cli(database_url, tmp_path, "audit", "--since", "last week")
    assert code == 2
    assert "--since" in err and "'last week'" in err
