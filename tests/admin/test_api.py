"""The provisioning API end to end: who may call it, every endpoint's answer and refusals
(with nothing changed), idempotent PUTs, the audit log, and links made through it relaying.

Real Synapse, the bridge in-process with Slack (simulator) and email (real SMTP both ways);
SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from bridge.db import queues
from testkit.helpers import open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.admin.api_client import ApiClient
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, SlackBridge, running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body

ERIKA = "erika@stadt.example"


@pytest.fixture
async def both_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    """A bridge with Slack (one workspace, "rathaus") and email on, besides the test
    network."""
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        yield running


def operator(bridge: SlackBridge, via: str | None = None) -> ApiClient:
    return ApiClient(bridge.homeserver.bridge_port,
                     bridge.config.provisioning.shared_secret, via)


async def failed_count(bridge: SlackBridge) -> int:
    async with bridge.hub.db.sessions() as session:
        return await queues.count_failed(session)


async def test_who_may_call_the_api(both_bridge: SlackBridge, admin: MatrixTestClient,
                                    outsider: MatrixTestClient) -> None:
    api = operator(both_bridge)
    anonymous = api.as_(None)
    status, body = await anonymous.get("/rooms")
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN"
    assert "Bearer" in body["error"] and "Bearer" in anonymous.last_headers["WWW-Authenticate"]
    status, body = await api.as_("not-the-secret-nor-a-token").get("/rooms")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    status, body = await api.as_(outsider.access_token).get("/rooms")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"
    assert outsider.user_id in body["error"] and "bridge.admins" in body["error"]
    # A refused caller changes nothing, even with a valid body.
    room = await open_room(both_bridge.homeserver.bot, admin, bot_power=100, name="Amt")
    status, _ = await api.as_(outsider.access_token).put(
        f"/rooms/{room}/links/email", {"localpart": "verboten"})
    assert status == 403
    assert (await api.get(f"/rooms/{room}"))[1]["links"] == []

    # A room where the bot has no power: as the bot's `link` would, the answer says what the
    # bot cannot do there.
    powerless = await open_room(both_bridge.homeserver.bot, admin, name="Ohne Macht")
    status, body = await api.put(f"/rooms/{powerless}/links/test",
                                 {"remote_id": "T-ohne-macht"})
    assert status == 200 and body["changed"]
    assert any("redact" in warning for warning in body["warnings"]), body
    assert "power level" in body["message"]

    status, body = await api.as_(admin.access_token).get("/rooms")
    assert status == 200 and room in [r["room_id"] for r in body["rooms"]]
    # A room ID percent-encoded in the path, as URL builders write it, is the same room.
    status, body = await api.get("/rooms/" + quote(room, safe=""))
    assert status == 200 and body["room_id"] == room
    status, body = await api.get("/status")
    assert status == 200 and body["version"]
    assert body["networks"]["slack"]["ok"] and body["networks"]["email"]["ok"]
    assert isinstance(body["failed_deliveries"], int)
    assert set(body["queues"]) == {"inbox", "outbox"}

    # Unknown paths and methods answer JSON too.
    status, body = await api.get("/nothing/here")
    assert status == 404 and body["errcode"] == "M_UNRECOGNIZED"
    status, body = await api.post("/status")
    assert status == 405 and "GET" in body["error"]
    status, body = await api.put(f"/rooms/{room}/links/xmpp", {"remote_id": "x"})
    assert status == 404


async def test_links_subscribers_policy_and_audit(
        both_bridge: SlackBridge, admin: MatrixTestClient, slack_sim: SlackSimulator,
        team: Any, sink: SmtpSink) -> None:
    bot = both_bridge.homeserver.bot
    api = operator(both_bridge)
    as_admin = api.as_(admin.access_token)
    started = time.time()
    room = await open_room(bot, admin, bot_power=100, name="Bauamt")
    other = await open_room(bot, admin, bot_power=100, name="Schulamt")

    status, body = await api.get(f"/rooms/{room}")
    assert status == 200 and body["links"] == [] and body["email"] is None
    status, body = await api.get("/rooms/!nirgends:bridge.test")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND" and bot in body["error"]

    # --- Slack, by a bridge admin with their Matrix token ---------------------------------
    path = f"/rooms/{room}/links/slack"
    for bad, says in (({}, "`channel`"), ({"channel": 5}, "`channel`"),
                      ({"channel": CHANNEL, "workspace": "rathuas"}, "`rathuas`"),
                      ({"channel": CHANNEL, "colour": "red"}, "`colour`"),
                      ({"channel": "C0GIBTESNICHT"}, "C0GIBTESNICHT")):
        status, body = await as_admin.put(path, bad)
        assert status == 400 and says in body["error"], (bad, body)
    status, body = await as_admin.call("PUT", path, raw=b"{not json")
    assert status == 400 and body["errcode"] == "M_BAD_JSON"
    assert (await api.get(f"/rooms/{room}"))[1]["links"] == []

    status, body = await as_admin.put(path, {"channel": CHANNEL})
    assert status == 200 and body["changed"] is True, body
    assert (body["workspace"], body["channel"], body["remote_name"]) == (
        "rathaus", CHANNEL, "#bauamt")
    assert "Linked" in body["message"] and body["warnings"] == []
    status, again = await as_admin.put(path, {"channel": CHANNEL, "workspace": "rathaus"})
    assert status == 200 and again["changed"] is False
    assert again["remote_id"] == body["remote_id"]
    # The channel is this room's: another room is refused, and stays unlinked.
    status, body = await api.put(f"/rooms/{other}/links/slack", {"channel": CHANNEL})
    assert status == 409 and body["errcode"] == "BRIDGE_CONFLICT" and room in body["error"]
    # The link made through the API relays.
    await slack_sim.post_message(team, CHANNEL, ANNA, text="Hallo über die API")
    await admin.wait_for_event(room, has_body("Hallo über die API"), timeout=20)

    # --- email, by the operator -------------------------------------------------------
    localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
    address = f"{localpart}@{MAIL_DOMAIN}"
    status, body = await api.put(f"/rooms/{room}/links/email", {"localpart": "Bau Amt!"})
    assert status == 400 and "cannot be a room address" in body["error"]
    status, body = await api.put(f"/rooms/{room}/email/subscribers/{ERIKA}", {})
    assert status == 404 and "no email address" in body["error"]
    status, body = await api.put(f"/rooms/{room}/links/email", {"localpart": localpart})
    assert status == 200 and body["changed"] and body["address"] == address, body
    status, body = await api.put(f"/rooms/{room}/links/email", {"localpart": localpart})
    assert status == 200 and not body["changed"] and body["address"] == address
    status, body = await api.put(f"/rooms/{other}/links/email", {"localpart": localpart})
    assert status == 409 and room in body["error"]
    status, body = await api.put(f"/rooms/{room}/links/email", {"localpart": "zweite"})
    assert status == 409 and "Unlink it first" in body["error"]
    assert (await api.get(f"/rooms/{other}"))[1]["links"] == []

    subs = f"/rooms/{room}/email/subscribers"
    status, body = await api.put(f"{subs}/kein-mensch", {"name": "Niemand"})
    assert status == 400 and "not an email address" in body["error"]
    status, body = await api.put(f"{subs}/{address}", {})
    assert status == 400 and "loop" in body["error"]
    status, body = await api.put(f"{subs}/{ERIKA}", {"name": "Erika Mustermann"})
    assert status == 200 and body["changed"], body
    assert body["subscriber"] == {"address": ERIKA, "name": "Erika Mustermann",
                                  "status": "active", "bounces": 0}
    status, body = await api.put(f"{subs}/{ERIKA.upper()}", {"name": "Erika Mustermann"})
    assert status == 200 and not body["changed"] and "already" in body["message"]
    status, body = await api.put(f"{subs}/max@stadt.example")
    assert status == 200 and body["subscriber"]["name"] is None
    status, body = await api.get(subs)
    assert status == 200 and [s["address"] for s in body["subscribers"]] == [
        ERIKA, "max@stadt.example"]
    # A subscriber made through the API gets the room by mail.
    await admin.send_text(room, "Sitzung um zehn")
    mails = await sink.wait_for(lambda r: ERIKA in r.rcpt_tos and "Sitzung um zehn"
                                in r.message.get_body(("plain",)).get_content())
    assert mails[0].message["From"].addresses[0].addr_spec == address

    policy = f"/rooms/{room}/email/policy"
    for bad, says in (({"policy": "domain"}, "mail domain"), ({"policy": "alle"}, "`alle`"),
                      ({"policy": "open", "domain": "stadt.example"}, "Only the `domain`"),
                      ({}, "`policy`")):
        status, body = await api.put(policy, bad)
        assert status == 400 and says in body["error"], (bad, body)
    status, body = await operator(both_bridge, via="plan").put(
        policy, {"policy": "domain", "domain": "Stadt.Example"})
    assert status == 200 and body["changed"], body
    assert (body["policy"], body["domain"]) == ("domain", "stadt.example")
    status, body = await api.put(policy, {"policy": "domain", "domain": "stadt.example"})
    assert status == 200 and not body["changed"]

    status, body = await as_admin.get(f"/rooms/{room}")
    assert status == 200 and body["name"] in (None, "Bauamt")
    assert [(lk["network"], lk["remote_name"]) for lk in body["links"]] == [
        ("slack", "#bauamt"), ("email", address)]
    assert body["email"]["policy"] == "domain" and body["email"]["domain"] == "stadt.example"
    assert len(body["email"]["subscribers"]) == 2
    status, body = await api.get("/rooms")
    listed = {r["room_id"]: r for r in body["rooms"]}
    assert {room, other} <= set(listed) and len(listed[room]["links"]) == 2

    # The report counts what went through the links made here: Anna on Slack, the admin on
    # Matrix.
    status, body = await as_admin.get("/report", days="7")
    assert status == 200 and body["days"] == 7
    rooms = {r["room_id"]: r for d in body["departments"] for r in d["rooms"]}
    assert rooms[room]["sides"]["slack"] == {"messages": 1, "people": 1}
    assert rooms[room]["sides"]["matrix"] == {"messages": 1, "people": 1}
    assert rooms[room]["matrix_share"] == 0.5 and len(rooms[room]["daily"]) == 7
    assert other not in rooms  # no links, nothing to report
    status, body = await api.call("GET", "/report", params={"format": "csv"})
    assert status == 200 and api.last_headers["Content-Type"].startswith("text/csv")
    assert body.splitlines()[0].startswith("department,room")
    for days in ("0", "367", "eine Woche"):
        status, body = await api.get("/report", days=days)
        assert status == 400 and "`days`" in body["error"]

    status, body = await api.delete(f"{subs}/max@stadt.example")
    assert status == 200 and body["changed"]
    status, body = await api.delete(f"{subs}/max@stadt.example")
    assert status == 404 and "not subscribed" in body["error"]

    # --- unlinking -----------------------------------------------------------------------
    status, body = await as_admin.delete(path, {"channel": "C0ANDERER"})
    assert status == 404 and "C0ANDERER" in body["error"]
    status, body = await as_admin.call("DELETE", path, params={"channel": CHANNEL,
                                                               "workspace": "rathaus"})
    assert status == 200 and body["changed"] and body["channel"] == CHANNEL, body
    status, body = await as_admin.delete(path)
    assert status == 404 and "no `slack` link" in body["error"]
    assert [lk["network"] for lk in (await api.get(f"/rooms/{room}"))[1]["links"]] == ["email"]

    # --- the audit log: every change above, with who and how; refusals left nothing -------
    status, body = await api.get("/audit", room_id=room)
    assert status == 200
    seen = [(e["action"], e["actor"], e["via"]) for e in body["entries"]]
    assert seen == [
        ("link", admin.user_id, "api"), ("link", "operator", "api"),
        ("subscribe", "operator", "api"), ("subscribe", "operator", "api"),
        ("policy", "operator", "plan"), ("unsubscribe", "operator", "api"),
        ("unlink", admin.user_id, "api")], seen
    assert body["entries"][0]["details"]["network"] == "slack"
    assert body["entries"][3]["details"]["address"] == "max@stadt.example"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 5))
    status, body = await api.get("/audit", since=since + "Z")
    assert status == 200 and len([e for e in body["entries"] if e["room_id"] == room]) == 7
    status, body = await api.get("/audit", since="2999-01-01")
    assert status == 200 and body["entries"] == []
    status, body = await api.get("/audit", since="gestern")
    assert status == 400 and "`since`" in body["error"]
    status, body = await api.get("/audit", room_id=other)
    assert status == 200 and body["entries"] == []


async def test_failed_deliveries_are_listed_and_retried(
        both_bridge: SlackBridge, admin: MatrixTestClient) -> None:
    bot = both_bridge.homeserver.bot
    api = operator(both_bridge)
    room = await open_room(bot, admin, bot_power=100, name="Sozialamt")
    # The test network (a link of one ID) gets its link route from the same declaration.
    status, body = await api.put(f"/rooms/{room}/links/test", {"remote_id": "T-api"})
    assert status == 200 and body["changed"] and body["remote_id"] == "T-api"

    status, body = await api.post("/failed/retry")
    assert status == 200 and (body["changed"], body["retried"]) == (False, 0)
    both_bridge.connector.failures.append("permanent")
    await admin.send_text(room, "Das scheitert erst")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await failed_count(both_bridge) != 1:
        assert loop.time() < deadline, "the delivery never failed"
        await asyncio.sleep(0.05)

    status, body = await api.get("/failed", room_id=room)
    assert status == 200 and body["total"] == 1
    item = body["failed"][0]
    assert (item["network"], item["room_id"]) == ("test", room)
    assert "refused" in item["error"]
    status, body = await api.get("/failed", limit="0")
    assert status == 400 and "`limit`" in body["error"]
    status, body = await api.post("/failed/retry", {"id": item["id"] + 1000})
    assert status == 404
    status, body = await api.post("/failed/retry", {"id": item["id"], "room_id": room})
    assert status == 400 and await failed_count(both_bridge) == 1
    status, body = await api.post("/failed/retry", {"id": str(item["id"])})
    assert status == 400 and "`id`" in body["error"]
    status, body = await api.post("/failed/retry", {"id": item["id"]})
    assert status == 200 and (body["changed"], body["retried"]) == (True, 1), body
    await both_bridge.connector.wait_for(
        lambda event: event["content"].get("body") == "Das scheitert erst", timeout=20)
    assert await failed_count(both_bridge) == 0
    status, body = await api.get("/audit")
    assert [(e["action"], e["details"]) for e in body["entries"]][-1] == (
        "retry", {"deliveries": 1, "delivery_id": item["id"]})
