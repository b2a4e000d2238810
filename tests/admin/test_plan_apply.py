"""``bridge plan check`` and ``bridge plan apply`` end to end: the real command in a process of
its own, talking to the bridge's provisioning API, which runs in-process against a real
Synapse with the Slack simulator and real SMTP; SQLite and PostgreSQL.

What a person would notice is checked where they would notice it: the rooms, their aliases,
names, the admins' invitations and power, the space in Matrix; a Slack message arriving in a
planned room; mail reaching a planned subscriber; the audit log saying via=plan.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from bridge.admin import audit
from testkit.helpers import SLOW_STEP, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.admin.api_client import ApiClient
from tests.admin.test_api import both_bridge as both_bridge
from tests.admin.test_api import operator
from tests.conftest import SERVER_NAME
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, OTHER_CHANNEL, SlackBridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body

REPO = Path(__file__).resolve().parents[2]
# With the en dash of the example: names are text, not identifiers.
GENERAL_NAME = "Bauamt – Allgemein"  # noqa: RUF001


async def bridge_command(bridge: SlackBridge, tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``bridge <args>`` as an operator would, with the running bridge's config; the
    exit code and everything it printed."""
    config = tmp_path / "config.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(bridge.config.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args[:2], "-c", str(config), *args[2:],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=REPO)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode()


def write_plan(tmp_path: Path, plan: dict[str, Any], name: str = "plan.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(plan, allow_unicode=True, sort_keys=False))
    return str(path)


def alias(localpart: str) -> str:
    return f"#{localpart}:{SERVER_NAME}"


async def room_of(api: ApiClient, localpart: str) -> dict[str, Any]:
    status, found = await api.get(f"/aliases/{localpart}")
    assert status == 200, found
    status, room = await api.get(f"/rooms/{found['room_id']}")
    assert status == 200, room
    return room  # type: ignore[no-any-return]


async def test_check_and_apply_a_plan(both_bridge: SlackBridge, admin: MatrixTestClient,
                                      slack_sim: SlackSimulator, team: Any, sink: SmtpSink,
                                      tmp_path: Path) -> None:
    api = operator(both_bridge)
    tag = uuid.uuid4().hex[:6]
    general, projects, people = f"bau-allg-{tag}", f"bau-proj-{tag}", f"personal-{tag}"
    space = f"bauamt-{tag}"
    mailbox, staff_box = f"bauamt-{tag}", f"personal-{tag}"
    erika, otto = "erika@stadt.example", "otto@stadt.example"

    # --- check: what the live systems would refuse, each named by its path -------------
    status, taken_room = await api.post("/rooms", {"alias": f"taken-{tag}", "name": "Besetzt"})
    assert status == 201, taken_room
    status, body = await api.put(f"/rooms/{taken_room['room_id']}/links/email",
                                 {"localpart": mailbox})
    assert status == 200, body
    broken = {"version": 1, "departments": [{
        "name": "Bauamt", "admins": [admin.user_id, f"@niemand-{tag}:{SERVER_NAME}"],
        "rooms": [{"alias": general, "slack": {"workspace": "rathaus", "channel": "C0GIBTSNICHT"},
                   "email": {"localpart": mailbox}}]}]}
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "check",
                                     write_plan(tmp_path, broken, "broken.yaml"))
    assert code == 1, out
    lines = out.splitlines()
    assert any(line.startswith("departments[0].admins[1]: ") and "niemand" in line
               for line in lines), out
    assert any(line.startswith("departments[0].rooms[0].slack.channel: ")
               and "C0GIBTSNICHT" in line for line in lines), out
    assert any(line.startswith("departments[0].rooms[0].email.localpart: ")
               and taken_room["room_id"] in line for line in lines), out
    assert "3 finding(s)" in out
    status, _ = await api.get(f"/aliases/{general}")
    assert status == 404  # checking made nothing
    # Nor does it act in Slack: the app is not made to join a public channel it is not in.
    lobby = slack_sim.add_channel(team, f"C0LOBBY{tag.upper()}", name=f"lobby-{tag}",
                                  members=[ANNA])
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "check", write_plan(
        tmp_path, {"version": 1, "departments": [{"name": "Bauamt", "rooms": [
            {"alias": f"lobby-{tag}", "slack": {"channel": lobby.id}}]}]}, "lobby.yaml"))
    assert code == 0, out
    assert team.bot_user_id not in lobby.members

    # --- a good plan: check passes, a dry run changes nothing --------------------------
    plan = {"version": 1, "departments": [
        {"name": "Bauamt", "space": space, "admins": [admin.user_id], "rooms": [
            {"alias": general, "name": GENERAL_NAME,
             "slack": {"workspace": "rathaus", "channel": CHANNEL},
             "email": {"localpart": f"{mailbox}-b", "policy": "open", "subscribers": [
                 {"address": erika, "name": "Erika Mustermann"}, otto]}},
            {"alias": projects, "name": "Bauamt - Projekte",
             "slack": [{"channel": f"rathaus/{OTHER_CHANNEL}"}]}]},
        {"name": "Personalamt", "admins": [admin.user_id], "rooms": [
            {"alias": people, "name": "Personalamt",
             "email": {"localpart": staff_box, "policy": "domain:stadt.example"}}]}]}
    plan_path = write_plan(tmp_path, plan)
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "check", plan_path)
    assert code == 0 and "All is well: 3 room(s) in 2 department(s)" in out, out

    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", plan_path,
                                     "--dry-run")
    assert code == 0, out
    expected = {
        f"+ create space {alias(space)}",
        f"+ create room {alias(general)}",
        f"+ add {alias(general)} to space {alias(space)}",
        f"+ link slack rathaus/{CHANNEL} -> {alias(general)}",
        f"+ link email {mailbox}-b@{MAIL_DOMAIN} -> {alias(general)}",
        f"+ policy open -> {alias(general)}",
        f"+ subscribe {erika} -> {alias(general)}",
        f"+ subscribe {otto} -> {alias(general)}",
        f"+ create room {alias(projects)}",
        f"+ add {alias(projects)} to space {alias(space)}",
        f"+ link slack rathaus/{OTHER_CHANNEL} -> {alias(projects)}",
        f"+ create room {alias(people)}",
        f"+ link email {staff_box}@{MAIL_DOMAIN} -> {alias(people)}",
        f"+ policy domain:stadt.example -> {alias(people)}",
    }
    assert {line for line in out.splitlines() if line[:2] in ("+ ", "- ")} == expected, out
    assert "nothing was changed" in out
    status, _ = await api.get(f"/aliases/{space}")
    assert status == 404

    # --- apply ---------------------------------------------------------------------------
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", plan_path)
    assert code == 0, out
    assert {line for line in out.splitlines() if line[:2] in ("+ ", "- ")} == expected, out
    assert f"Done: {len(expected)} action(s)." in out

    room = await room_of(api, general)
    room_id = room["room_id"]
    assert (room["name"], room["alias"], room["department"]) == (
        GENERAL_NAME, alias(general), "Bauamt")
    assert {(lk["network"], lk.get("channel") or lk.get("localpart"))
            for lk in room["links"]} == {("slack", CHANNEL), ("email", f"{mailbox}-b")}
    assert room["email"]["policy"] == "open"
    assert {(s["address"], s["name"]) for s in room["email"]["subscribers"]} == {
        (erika, "Erika Mustermann"), (otto, None)}
    assert (await room_of(api, people))["email"]["policy"] == "domain"

    # In Matrix: the admin is invited to the space and the rooms, with power level 100; the
    # rooms have their alias and name; the space holds the department's rooms.
    space_id = (await api.get(f"/aliases/{space}"))[1]["room_id"]
    projects_id = (await room_of(api, projects))["room_id"]
    for joined in (space_id, room_id, projects_id):
        await admin.join(joined)
    levels = await admin.get_state(room_id, "m.room.power_levels")
    assert levels is not None and levels["users"][admin.user_id] == 100
    assert (await admin.get_state(room_id, "m.room.name") or {}).get("name") == \
        GENERAL_NAME
    assert (await admin.get_state(room_id, "m.room.canonical_alias") or {}).get("alias") == \
        alias(general)
    create = await admin.get_state(space_id, "m.room.create")
    assert create is not None and create.get("type") == "m.space"
    for child in (room_id, projects_id):
        assert (await admin.get_state(space_id, "m.space.child", child) or {}).get("via") == \
            [SERVER_NAME]
        assert (await admin.get_state(child, "m.space.parent", space_id) or {}).get("via") == \
            [SERVER_NAME]

    # The planned links work: Slack into the room, the room out to its subscribers.
    await slack_sim.post_message(team, CHANNEL, ANNA, text=f"Hallo aus Slack {tag}")
    await admin.wait_for_event(room_id, has_body(f"Hallo aus Slack {tag}"), timeout=SLOW_STEP)
    await admin.send_text(room_id, f"An alle {tag}")
    await sink.wait_for(lambda r: erika in r.rcpt_tos and f"An alle {tag}"
                        in r.message.get_body(("plain",)).get_content(), timeout=SLOW_STEP)

    # The audit log says the plan did it.
    async with both_bridge.hub.db.sessions() as session:
        entries = await audit.entries(session, room_id=room_id)
    actions = {(e.action, e.via, e.actor) for e in entries}
    assert {("create_room", "plan", "operator"), ("link", "plan", "operator"),
            ("subscribe", "plan", "operator"), ("policy", "plan", "operator"),
            ("space", "plan", "operator")} <= actions, actions

    # --- applying again: nothing to do ----------------------------------------------------
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", plan_path)
    assert code == 0 and out.startswith("Nothing to do"), out

    # A room taken out of its department (through the API) is put back by the plan.
    for changed in (True, False):
        status, body = await api.put(f"/rooms/{room_id}/department", {"department": None})
        assert status == 200 and body["changed"] is changed, body
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", plan_path)
    assert code == 0 and out.splitlines()[0] == f"+ department Bauamt -> {alias(general)}", out
    assert (await room_of(api, general))["department"] == "Bauamt"

    # --- --prune removes what the plan no longer lists, and only with --prune -------------
    rooms = plan["departments"][0]["rooms"]
    rooms[0]["email"]["subscribers"] = [{"address": erika, "name": "Erika Mustermann"}]
    del rooms[1]["slack"]
    plan_path = write_plan(tmp_path, plan, "smaller.yaml")
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", plan_path)
    assert code == 0 and out.startswith("Nothing to do"), out
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", plan_path,
                                     "--prune")
    assert code == 0, out
    assert {line for line in out.splitlines() if line[:2] in ("+ ", "- ")} == {
        f"- unsubscribe {otto} from {alias(general)}",
        f"- unlink slack rathaus/{OTHER_CHANNEL} from {alias(projects)}"}, out
    assert (await room_of(api, projects))["links"] == []
    assert [s["address"] for s in (await room_of(api, general))["email"]["subscribers"]] == \
        [erika]


async def test_a_failed_step_leaves_the_rest_for_the_next_apply(
        both_bridge: SlackBridge, admin: MatrixTestClient, tmp_path: Path) -> None:
    api = operator(both_bridge)
    bot = both_bridge.homeserver.bot
    tag = uuid.uuid4().hex[:6]
    first, second = f"eins-{tag}", f"zwei-{tag}"
    # Rooms that are there already: one the bot is in (the plan adopts it), one private room
    # it is not in (it cannot join; the plan says how to fix that).
    adopted, closed = f"schon-da-{tag}", f"privat-{tag}"
    # The API refuses a room whose admins do not exist, and makes nothing.
    status, body = await api.post("/rooms", {"alias": first,
                                             "admins": [f"@niemand-{tag}:{SERVER_NAME}"]})
    assert status == 404 and "niemand" in body["error"] and "nothing" in body["error"], body
    assert (await api.get(f"/aliases/{first}"))[0] == 404
    adopted_id = await open_room(bot, admin, bot_power=100, name="Schon da",
                                 extra={"room_alias_name": adopted})
    await admin.create_room(name="Privat", extra={"room_alias_name": closed})
    plan = {"version": 1, "departments": [{"name": "Amt", "admins": [admin.user_id], "rooms": [
        {"alias": first, "slack": {"channel": CHANNEL}},
        {"alias": second, "slack": {"channel": "C0GIBTSNICHT"},
         "email": {"localpart": f"zwei-{tag}", "subscribers": ["erika@stadt.example"]}},
        {"alias": adopted}, {"alias": closed}]}]}
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "check",
                                     write_plan(tmp_path, plan))
    assert code == 1, out
    assert [line.split(": ")[0] for line in out.splitlines()[:-1]] == [
        "departments[0].rooms[1].slack.channel", "departments[0].rooms[3].alias"], out
    assert "the bridge bot is not in it" in out

    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply",
                                     write_plan(tmp_path, plan))
    assert code == 1, out
    assert f"+ department Amt -> {alias(adopted)}" in out.splitlines()
    # Sorted: "+ join ..." before "+ link ...".
    failed = sorted(line for line in out.splitlines() if line.startswith("! failed: "))
    assert len(failed) == 2, out
    assert f"+ join room {alias(closed)}" in failed[0] and f"invite {bot}" in failed[0], out
    assert f"+ link slack rathaus/C0GIBTSNICHT -> {alias(second)}" in failed[1] and \
        "C0GIBTSNICHT" in failed[1].split(": ", 2)[2], out
    assert "2 later step(s) of this room skipped" in failed[1]
    assert "apply again" in out
    listing = await room_of(api, adopted)
    assert (listing["room_id"], listing["department"]) == (adopted_id, "Amt")
    del plan["departments"][0]["rooms"][3]
    # Room 1 is done; room 2 exists, but has nothing of what came after the failed step.
    assert [lk["channel"] for lk in (await room_of(api, first))["links"]] == [CHANNEL]
    assert (await room_of(api, second))["links"] == []

    plan["departments"][0]["rooms"][1]["slack"] = {"channel": OTHER_CHANNEL}
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply",
                                     write_plan(tmp_path, plan))
    assert code == 0, out
    assert {line for line in out.splitlines() if line[:2] == "+ "} == {
        f"+ link slack rathaus/{OTHER_CHANNEL} -> {alias(second)}",
        f"+ link email zwei-{tag}@{MAIL_DOMAIN} -> {alias(second)}",
        f"+ subscribe erika@stadt.example -> {alias(second)}"}, out
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply",
                                     write_plan(tmp_path, plan))
    assert code == 0 and out.startswith("Nothing to do"), out

    # The bridge gone: one clear line, exit 1.
    await both_bridge.stop()
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply",
                                     write_plan(tmp_path, plan))
    assert code == 1 and "is the bridge running? `bridge run -c " in out, out
    assert len(out.strip().splitlines()) == 1, out
