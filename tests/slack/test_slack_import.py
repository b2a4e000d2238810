"""`bridge import slack-export`: a channel's history from Slack's export (written in Slack's
format by testkit/slack_export.py, partly from the Slack simulator's own history) into a room
of a real Synapse, as the command is run by an operator (a separate process)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import signal
import struct
import sys
import termios
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select

from bridge.core.origin import HISTORY_KEY
from bridge.db.engine import Database
from bridge.db.models import InboundKey, MessageMapping
from bridge.slack.export.importer import txn_id
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_export import (
    channel,
    export_of_channel,
    message,
    small_export,
    ts_of,
    user,
    write_export,
)
from testkit.slack_sim import SlackSimulator
from testkit.synapse import free_port
from tests.conftest import Homeserver
from tests.slack.conftest import (
    ANNA,
    BEN,
    CHANNEL,
    TEAM_ID,
    SlackBridge,
    running_slack_bridge,
    workspace_config,
)

REPO = Path(__file__).resolve().parents[2]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def people(avatar_url: str | None = None) -> list[dict[str, Any]]:
    """Anna and Ben in users.json; their pictures at ``avatar_url`` (else none)."""
    users = [user(ANNA, "anna", "Anna Schmidt", "Anna"), user(BEN, "ben", "Ben Weber")]
    for entry in users:
        entry["profile"].pop("image_72")
        if avatar_url:
            entry["profile"]["image_192"] = f"{avatar_url}/{entry['id']}.png"
    return users


USERS = people()
BAUAMT = channel(CHANNEL, "bauamt", [ANNA, BEN], topic="Bauanträge")


def config_for(homeserver: Homeserver, database_url: str, sim: SlackSimulator,
               team: Any) -> Path:
    return homeserver.config_file(database_url, slack__enabled=True,
                                  slack__api_url=sim.api_url,
                                  slack__workspaces=[workspace_config(team)])


async def run_import(config: Path, export: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "import", "slack-export", "-c", str(config),
        str(export), *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def run_import_on_terminal(config: Path, export: Path, *args: str
                                 ) -> tuple[int, str, str]:
    """As run_import, with stderr on a terminal (a pseudo-terminal the test reads)."""
    master, slave = pty.openpty()
    # A terminal of 100 columns and 30 rows, as a console has.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "import", "slack-export", "-c", str(config),
        str(export), *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=slave)
    os.close(slave)

    def read_terminal() -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return data
            if not chunk:
                return data
            data += chunk

    try:
        terminal, (out, _) = await asyncio.gather(asyncio.to_thread(read_terminal),
                                                  process.communicate())
    finally:
        os.close(master)
    assert process.returncode is not None
    return process.returncode, out.decode(), terminal.decode(errors="replace")


def puppet(bridge: SlackBridge, remote: str) -> str:
    return str(bridge.slack.puppet_user_id(f"{TEAM_ID}_{remote}"))


async def timeline(client: MatrixTestClient, room_id: str, senders: set[str]
                   ) -> list[dict[str, Any]]:
    """The room's events from these senders, oldest first."""
    events = await client.messages(room_id, limit=1000)
    return [e for e in reversed(events) if e["sender"] in senders
            and e["type"] in ("m.room.message", "m.reaction")]


async def count_rows(database_url: str, model: Any) -> int:
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        await db.close()


@pytest.fixture
async def bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                 team: Any) -> Any:
    async with running_slack_bridge(homeserver, database_url, slack_sim, [team]) as running:
        yield running


async def test_import_then_link_then_a_live_edit(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        bridge: SlackBridge, tmp_path: Path) -> None:
    """History from the export: puppets, original times, a thread, a reaction, a file from
    the archive and one named by a line, a bot under its name, joins not posted. A second
    run posts nothing; linking the channel (backfill of the same messages) posts nothing
    again; a live edit in Slack edits the imported event."""
    # The channel's history in Slack (the channel is not linked: nothing is bridged live).
    root = await slack_sim.post_message(team, CHANNEL, ANNA, "Der Grundriss, *final*")
    reply = await slack_sim.post_message(team, CHANNEL, BEN, "<@U0ANNA> passt so",
                                         thread_ts=root)
    await slack_sim.add_reaction(team, CHANNEL, root, BEN, "thumbsup")
    later = await slack_sim.post_message(team, CHANNEL, ANNA, "Danke!")
    history = slack_sim.messages(team, CHANNEL) + slack_sim.replies(team, CHANNEL, root)
    earlier_day = ts_of("2024-03-04", 0)
    extras = [
        {"type": "message", "subtype": "channel_join", "user": BEN,
         "text": "<@U0BEN> has joined the channel", "ts": ts_of("2024-03-04", 1)},
        {"type": "message", "subtype": "bot_message", "text": "Build passed",
         "ts": ts_of("2024-03-04", 5), "bot_id": "B0CI", "username": "CI"},
        message(ts_of("2024-03-04", 9), ANNA, "Die Zeichnung", files=[
            {"id": "F0PLAN", "name": "plan.pdf", "title": "plan.pdf",
             "mimetype": "application/pdf", "size": 5, "mode": "hosted",
             "url_private": "https://files.slack.com/files-pri/T0RATHAUS-F0PLAN/plan.pdf"},
            {"id": "F0MISSING", "name": "foto.jpg", "title": "foto.jpg",
             "mimetype": "image/jpeg", "size": 9, "mode": "hosted",
             "url_private": "https://files.slack.com/files-pri/T0RATHAUS-F0MISSING/foto.jpg"},
            {"id": "F0LOCAL", "name": "scan.png", "title": "scan.png",
             "mimetype": "image/png", "size": len(PNG), "mode": "hosted",
             "url_private": "https://files.slack.com/files-pri/T0RATHAUS-F0LOCAL/scan.png"}]),
    ]
    async def picture(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    pictures = web.Application()
    pictures.router.add_get("/{name}", picture)
    runner = web.AppRunner(pictures)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    export = export_of_channel(tmp_path / "export.zip",
                               users=people(f"http://127.0.0.1:{port}"), channel_entry=BAUAMT,
                               messages=extras + history,
                               extra={"__uploads/F0PLAN/plan.pdf": b"%PDF-"})
    assert earlier_day < root

    admin = await homeserver.user(f"admin-import-{uuid.uuid4().hex[:6]}")
    room_id = await open_room(homeserver.bot, admin, bot_power=100, name="Bauamt")
    config = config_for(homeserver, database_url, slack_sim, team)
    try:
        files = tmp_path / "files"
        (files / "F0LOCAL").mkdir(parents=True)
        (files / "F0LOCAL" / "scan.png").write_bytes(PNG)
        code, out, err = await run_import(config, export, "--channel", "bauamt",
                                          "--room", room_id, "--files", str(files))
    finally:
        await runner.cleanup()
    assert code == 0, err
    assert "messages: 5 posted, 0 already in the room" in out
    assert "threads: 1 (1 replies)" in out and "reactions: 1" in out
    assert "files: 2 uploaded, 1 not in the export" in out
    assert "skipped: 1 channel joins and leaves" in out

    anna, ben, ci = puppet(bridge, ANNA), puppet(bridge, BEN), puppet(bridge, "B0CI")
    events = await timeline(admin, room_id, {anna, ben, ci})
    texts = [(e["sender"], e["content"].get("body")) for e in events
             if e["type"] == "m.room.message"]
    assert texts == [(ci, "Build passed"),
                     (anna, "Die Zeichnung\n📎 foto.jpg (file F0MISSING, not in the export)"),
                     (anna, "plan.pdf"), (anna, "scan.png"),
                     (anna, "Der Grundriss, final"), (ben, "Anna passt so"),
                     (anna, "Danke!")]
    by_body = {e["content"].get("body"): e for e in events if e["type"] == "m.room.message"}
    imported_root = by_body["Der Grundriss, final"]
    assert imported_root["origin_server_ts"] == int(float(root) * 1000)
    assert "<strong>final</strong>" in imported_root["content"]["formatted_body"]
    threaded = by_body["Anna passt so"]
    assert threaded["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert threaded["content"]["m.relates_to"]["event_id"] == imported_root["event_id"]
    assert threaded["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == \
        imported_root["event_id"]
    assert anna in threaded["content"]["formatted_body"]  # the mention is Anna's puppet pill
    assert threaded["origin_server_ts"] == int(float(reply) * 1000)
    plan = by_body["plan.pdf"]
    assert plan["content"]["msgtype"] == "m.file" and plan["content"]["url"].startswith("mxc:")
    scan = by_body["scan.png"]
    assert scan["content"]["msgtype"] == "m.image" and scan["content"]["info"]["size"] == len(PNG)
    reactions = [e for e in events if e["type"] == "m.reaction"]
    assert [(e["sender"], e["content"]["m.relates_to"]["event_id"],
             e["content"]["m.relates_to"]["key"]) for e in reactions] == [
        (ben, imported_root["event_id"], "👍")]
    # Names as live Slack gives them; the bot under the name it posted with.
    ci_member = await admin.get_state(room_id, "m.room.member", ci)
    anna_member = await admin.get_state(room_id, "m.room.member", anna)
    assert (ci_member["displayname"], anna_member["displayname"]) == ("CI", "Anna")
    assert anna_member["avatar_url"].startswith("mxc://")

    # Again: nothing new.
    code, out, err = await run_import(config, export, "--channel", "C0BAUAMT",
                                      "--room", room_id)
    assert code == 0, err
    assert "messages: 0 posted, 5 already in the room" in out and "reactions: 0" in out
    assert len(await timeline(admin, room_id, {anna, ben, ci})) == len(events)

    # Linking the channel backfills its history: all of it imported already.
    await command(homeserver.bot, admin, room_id, f"!bridge link slack {CHANNEL}",
                  expect="Linked")
    fresh = await slack_sim.post_message(team, CHANNEL, BEN, "nach dem Link")
    await admin.wait_for_event(room_id, lambda e: e["content"].get("body") == "nach dem Link",
                               timeout=30)
    after = await timeline(admin, room_id, {anna, ben, ci})
    assert [e["content"].get("body") for e in after[len(events):]] == ["nach dem Link"]
    assert fresh > later

    # A live edit in Slack of an imported message edits the imported event.
    await slack_sim.edit_message(team, CHANNEL, root, "Der Grundriss, Version 2")
    edit = await admin.wait_for_event(
        room_id, lambda e: e["content"].get("m.relates_to", {}).get("rel_type") == "m.replace",
        timeout=30)
    assert edit["content"]["m.relates_to"]["event_id"] == imported_root["event_id"]
    assert edit["content"]["m.new_content"]["body"] == "Der Grundriss, Version 2"
    # So do a live thread reply and a live reaction.
    await slack_sim.post_message(team, CHANNEL, ANNA, "noch eine Frage", thread_ts=root)
    live_reply = await admin.wait_for_event(
        room_id, lambda e: e["content"].get("body") == "noch eine Frage", timeout=30)
    assert live_reply["content"]["m.relates_to"]["rel_type"] == "m.thread"
    assert live_reply["content"]["m.relates_to"]["event_id"] == imported_root["event_id"]
    await slack_sim.add_reaction(team, CHANNEL, root, ANNA, "tada")
    live_reaction = await admin.wait_for_event(
        room_id, lambda e: e["type"] == "m.reaction" and e["sender"] == anna, timeout=30)
    assert live_reaction["content"]["m.relates_to"]["event_id"] == imported_root["event_id"]


async def test_import_into_a_linked_room_leaves_what_the_bridge_brought(
        homeserver: Homeserver, sqlite_url: str, slack_sim: SlackSimulator, team: Any,
        tmp_path: Path) -> None:
    """Linked first (the backfill brings the recent messages), imported afterwards: the
    older history arrives, nothing the bridge brought is posted again."""
    old = [message(ts_of("2024-03-04", n), ANNA, f"alt {n}") for n in range(3)]
    recent = [await slack_sim.post_message(team, CHANNEL, BEN, f"neu {n}") for n in range(2)]
    async with running_slack_bridge(homeserver, sqlite_url, slack_sim, [team]) as bridge:
        admin = await homeserver.user(f"admin-linked-{uuid.uuid4().hex[:6]}")
        room_id = await open_room(homeserver.bot, admin, bot_power=100, name="Verknüpft")
        await command(homeserver.bot, admin, room_id, f"!bridge link slack {CHANNEL}",
                      expect="Linked")
        await admin.wait_for_event(room_id, lambda e: e["content"].get("body") == "neu 1",
                                   timeout=30)
        export = export_of_channel(tmp_path / "export.zip", users=USERS, channel_entry=BAUAMT,
                                   messages=old + slack_sim.messages(team, CHANNEL))
        config = config_for(homeserver, sqlite_url, slack_sim, team)
        code, out, err = await run_import(config, export, "--channel", "bauamt",
                                          "--room", room_id)
        assert code == 0, err
        assert "messages: 3 posted, 2 already in the room" in out
        senders = {puppet(bridge, ANNA), puppet(bridge, BEN)}
        bodies = [e["content"]["body"] for e in await timeline(admin, room_id, senders)]
        assert sorted(bodies) == ["alt 0", "alt 1", "alt 2", "neu 0", "neu 1"]
        assert len(recent) == 2


async def test_dry_run_changes_nothing_and_errors_name_what_is_wrong(
        homeserver: Homeserver, sqlite_url: str, slack_sim: SlackSimulator, team: Any,
        tmp_path: Path) -> None:
    async with running_slack_bridge(homeserver, sqlite_url, slack_sim, [team]) as bridge:
        admin = await homeserver.user(f"admin-dry-{uuid.uuid4().hex[:6]}")
        room_id = await open_room(homeserver.bot, admin, name="Trocken")
        elsewhere = await admin.create_room(name="Ohne Bot")
        elsewhere_linked = await open_room(homeserver.bot, admin, bot_power=100, name="Andere")
        config = config_for(homeserver, sqlite_url, slack_sim, team)
        export = small_export(tmp_path / "export.zip")
        before = await count_rows(sqlite_url, InboundKey)

        code, out, err = await run_import(config, export, "--channel", "#bauamt",
                                          "--room", room_id, "--dry-run")
        assert code == 0, err
        assert "Dry run, nothing posted or written" in out
        assert "messages: 6 would post, 0 already in the room" in out
        assert "reactions: 3" in out and "threads: 1 (2 replies)" in out
        assert "files: 1 to upload, 1 not in the export" in out
        assert "skipped: 1 topic, purpose and name changes" in out
        senders = {puppet(bridge, u) for u in (ANNA, BEN, "U0CARL", "B0CI")}
        assert await timeline(admin, room_id, senders) == []
        assert await count_rows(sqlite_url, MessageMapping) == 0
        assert await count_rows(sqlite_url, InboundKey) == before

        code, _, err = await run_import(config, export, "--channel", "bauamtt",
                                        "--room", room_id)
        assert code == 1 and "no channel named or with ID 'bauamtt'" in err
        assert "did you mean #bauamt" in err
        code, _, err = await run_import(config, export, "--channel", "bauamt",
                                        "--room", "#nirgends:bridge.test")
        assert code == 1 and "--room #nirgends:bridge.test: no such room alias" in err
        code, _, err = await run_import(config, export, "--channel", "bauamt",
                                        "--room", elsewhere)
        assert code == 1 and f"the bridge's bot {homeserver.bot} is not in that room" in err
        assert "Invite the bot there" in err
        code, _, err = await run_import(config, export, "--channel", "bauamt",
                                        "--room", room_id, "--files", str(tmp_path / "nix"))
        assert code == 1 and "--files " in err and "nix: no such folder" in err
        # A channel linked to another room: its history belongs there.
        await command(homeserver.bot, admin, elsewhere_linked, f"!bridge link slack {CHANNEL}",
                      expect="Linked")
        code, _, err = await run_import(config, export, "--channel", "bauamt",
                                        "--room", room_id)
        assert code == 1 and f"is linked to the room {elsewhere_linked}" in err
        encrypted = await open_room(homeserver.bot, admin, name="Verschlüsselt", extra={
            "initial_state": [{"type": "m.room.encryption", "state_key": "",
                               "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]})
        code, _, err = await run_import(config, export, "--channel", "bauamt",
                                        "--room", encrypted)
        assert code == 1 and "the room is encrypted" in err and "posted unencrypted" in err
        code, _, err = await run_import(config, tmp_path / "missing.zip", "--channel",
                                        "bauamt", "--room", room_id)
        assert code == 1 and "missing.zip: cannot be read as a zip archive" in err
        disabled = homeserver.config_file(sqlite_url, slack__enabled=False)
        code, _, err = await run_import(disabled, export, "--channel", "bauamt",
                                        "--room", room_id)
        assert code == 2 and "slack.enabled must be true" in err
        assert await timeline(admin, room_id, senders) == []


async def test_a_malformed_day_stops_and_a_rerun_after_the_fix_goes_on(
        homeserver: Homeserver, sqlite_url: str, slack_sim: SlackSimulator, team: Any,
        tmp_path: Path) -> None:
    good = [message(ts_of("2024-03-04", n), ANNA, f"Tag eins, {n}") for n in range(3)]
    second = [message(ts_of("2024-03-05", n), BEN, f"Tag zwei, {n}") for n in range(3)]
    broken = json.dumps([*second[:1], {"type": "message", "user": BEN, "text": "kein ts"}])
    path = write_export(tmp_path / "broken.zip", users=USERS, channels=[BAUAMT],
                        days={"bauamt/2024-03-04": good,
                              "bauamt/2024-03-05": broken.encode()})
    async with running_slack_bridge(homeserver, sqlite_url, slack_sim, [team]) as bridge:
        admin = await homeserver.user(f"admin-broken-{uuid.uuid4().hex[:6]}")
        room_id = await open_room(homeserver.bot, admin, name="Kaputt")
        # The room has another link: history is for the room, never relayed to it.
        await command(homeserver.bot, admin, room_id, "!bridge link test C-history",
                      expect="Linked")
        config = config_for(homeserver, sqlite_url, slack_sim, team)
        senders = {puppet(bridge, ANNA), puppet(bridge, BEN)}

        code, out, err = await run_import(config, path, "--channel", "bauamt",
                                          "--room", room_id)
        assert code == 1
        # Not a terminal: plain progress lines.
        assert "importing 2 day file(s)" in err and "up to 2024-03-04: 3 messages" in err
        assert 'bauamt/2024-03-05.json, message 1: "ts" is missing' in err
        assert "Fix the file and run the same command again" in err
        bodies = [e["content"]["body"] for e in await timeline(admin, room_id, senders)]
        assert bodies == ["Tag eins, 0", "Tag eins, 1", "Tag eins, 2"]

        fixed = write_export(tmp_path / "fixed.zip", users=USERS, channels=[BAUAMT],
                             days={"bauamt/2024-03-04": good, "bauamt/2024-03-05": second})
        code, out, terminal = await run_import_on_terminal(config, fixed, "--channel",
                                                           "bauamt", "--room", room_id)
        assert code == 0, terminal
        assert "messages: 3 posted, 3 already in the room" in out
        # On a terminal: a progress bar (redrawn in place) with the rate.
        assert "\r" in terminal and "100%" in terminal and "msg/s" in terminal, terminal
        bodies = [e["content"]["body"] for e in await timeline(admin, room_id, senders)]
        assert bodies == [f"Tag eins, {n}" for n in range(3)] + \
            [f"Tag zwei, {n}" for n in range(3)]

        # The marker is trusted on puppets only: a Matrix user's message with it is relayed.
        await admin.send_event(room_id, "m.room.message", {
            "msgtype": "m.text", "body": "from Matrix", HISTORY_KEY: True})
        await bridge.connector.wait_for(lambda e: e["content"].get("body") == "from Matrix",
                                        timeout=30)
        relayed = [item["event"]["content"].get("body") for item in bridge.connector.delivered
                   if item["event"]["type"] in ("m.room.message", "m.reaction")]
        assert relayed == ["from Matrix"]


async def test_killed_half_way_then_run_again_posts_each_message_once(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        tmp_path: Path) -> None:
    """SIGKILL in the middle of a day (mappings of that day not yet written), then the same
    command: every message and reaction is in the room exactly once."""
    items = []
    for n in range(240):
        extra: dict[str, Any] = {}
        if n % 10 == 0:
            extra["reactions"] = [{"name": "tada", "users": [BEN], "count": 1}]
        if n % 10 == 1:
            extra.update(thread_ts=ts_of("2024-03-04", (n - 1) * 10), parent_user_id=ANNA)
        items.append(message(ts_of("2024-03-04", n * 10), ANNA if n % 2 else BEN,
                             f"Nachricht {n}", **extra))
    path = write_export(tmp_path / "export.zip", users=USERS, channels=[BAUAMT],
                        days={"bauamt/2024-03-04": items[:120],
                              "bauamt/2024-03-05": [
                                  {**m, "ts": ts_of("2024-03-05", i)}
                                  for i, m in enumerate(items[120:])
                                  if "thread_ts" not in m]})
    async with running_slack_bridge(homeserver, database_url, slack_sim, [team]) as bridge:
        admin = await homeserver.user(f"admin-kill-{uuid.uuid4().hex[:6]}")
        room_id = await open_room(homeserver.bot, admin, name="Abbruch")
        config = config_for(homeserver, database_url, slack_sim, team)
        senders = {puppet(bridge, ANNA), puppet(bridge, BEN)}

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "import", "slack-export", "-c", str(config),
            str(path), "--channel", "bauamt", "--room", room_id, cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(600):
                if len(await timeline(admin, room_id, senders)) >= 40:
                    break
                await asyncio.sleep(0.1)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        posted_before = len(await timeline(admin, room_id, senders))
        assert 40 <= posted_before < 200, posted_before

        code, _, err = await run_import(config, path, "--channel", "bauamt",
                                        "--room", room_id)
        assert code == 0, err
        events = await timeline(admin, room_id, senders)
        bodies = [e["content"]["body"] for e in events if e["type"] == "m.room.message"]
        expected_messages = 120 + sum(1 for m in items[120:] if "thread_ts" not in m)
        assert len(bodies) == len(set(bodies)) == expected_messages
        reactions = [e for e in events if e["type"] == "m.reaction"]
        targets = [e["content"]["m.relates_to"]["event_id"] for e in reactions]
        assert len(targets) == len(set(targets)) == 24
        assert await count_rows(database_url, MessageMapping) == expected_messages + 24


def test_transaction_ids_are_the_same_on_every_run() -> None:
    assert txn_id("T1:C1", "1.000100", "0") == txn_id("T1:C1", "1.000100", "0")
    assert txn_id("T1:C1", "1.000100", "0") != txn_id("T1:C1", "1.000100", "1")
    assert len({txn_id("T1:C1", str(n), "0") for n in range(1000)}) == 1000



async def test_a_linked_person_s_history_comes_from_their_own_account_and_goes_nowhere(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        tmp_path: Path) -> None:
    """With double puppeting on, Anna (linked, in the room) gets her history as herself, her
    reaction too; Ben (not linked) as his puppet. The channel is linked and the bridge
    runs: the imported history is not posted back to Slack."""
    from tests.slack.conftest import linked_room
    from tests.slack.relay_helpers import count_in_slack, posted

    async with running_slack_bridge(homeserver, database_url, slack_sim, [team],
                                    double_puppet__enabled=True) as running:
        admin = await homeserver.user(f"admin-import-{uuid.uuid4().hex[:6]}")
        anna = await homeserver.user(f"anna-{uuid.uuid4().hex[:6]}")
        try:
            room_id = await linked_room(running, admin)
            await admin.invite(room_id, anna.user_id)
            await anna.join(room_id)
            await command(homeserver.bot, admin, room_id,
                          f"!bridge people link slack rathaus:{ANNA} {anna.user_id}",
                          expect="Linked")
            first, second = ts_of("2023-05-02", 0), ts_of("2023-05-02", 60)
            export = export_of_channel(
                tmp_path / "export.zip", users=USERS, channel_entry=BAUAMT,
                messages=[message(first, ANNA, "Annas alte Nachricht"),
                          message(second, BEN, "Bens alte Nachricht",
                                  reactions=[{"name": "thumbsup", "users": [ANNA],
                                              "count": 1}])])
            config = homeserver.config_file(database_url, slack__enabled=True,
                                            slack__api_url=slack_sim.api_url,
                                            slack__workspaces=[workspace_config(team)],
                                            double_puppet__enabled=True)
            code, _out, err = await run_import(config, export, "--channel", "bauamt",
                                              "--room", room_id)
            assert code == 0, err
            ben = puppet(running, BEN)
            events = await timeline(admin, room_id, {anna.user_id, ben})
            by_body = {e["content"].get("body"): e for e in events}
            assert by_body["Annas alte Nachricht"]["sender"] == anna.user_id
            assert by_body["Annas alte Nachricht"]["origin_server_ts"] == int(float(first) * 1000)
            assert by_body["Bens alte Nachricht"]["sender"] == ben
            reaction = next(e for e in events if e["type"] == "m.reaction")
            assert reaction["sender"] == anna.user_id
            assert reaction["content"]["m.relates_to"]["event_id"] == \
                by_body["Bens alte Nachricht"]["event_id"]
            # A live message after the import reaches Slack; the history before it did not.
            await admin.send_text(room_id, "Nach dem Import")
            await posted(slack_sim, team, "Nach dem Import")
            assert count_in_slack(slack_sim, team, "alte Nachricht") == 0
            assert not slack_sim.calls_to("reactions.add")
        finally:
            await admin.close()
            await anna.close()
