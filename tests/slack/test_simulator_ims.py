"""The Slack simulator's direct messages and scopes, against slack-sdk and Slack's published
Web API description (../shared/slack-fixtures/slack-api-specs): ``conversations.open`` gives
the app one IM per person (``D…``, the same again next time), ``chat.postMessage`` posts into
it, ``users.lookupByEmail`` finds people by address, and a method whose scope the app lacks
answers ``missing_scope`` with ``needed`` and ``provided``, as Slack does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from testkit.slack_sim import SlackSimulator, Team
from testkit.slack_sim.webapi import SCOPES
from tests.slack.test_simulator import FIXTURES, assert_shape, needs_fixtures, sample

MANIFEST = Path(__file__).parents[2] / "slack-app-manifest.yaml"
ANNA, GONE = "U0ANNA", "U0GONE"

pytestmark = pytest.mark.integration


@pytest.fixture
async def sim() -> AsyncIterator[SlackSimulator]:
    simulator = SlackSimulator()
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
def rathaus(sim: SlackSimulator) -> Team:
    team = sim.add_team(team_id="T0RATHAUS", name="rathaus", bot_token="xoxb-rathaus-bot")
    sim.add_user(team, ANNA, name="anna", real_name="Anna Schmidt",
                 email="anna.schmidt@rathaus.example")
    sim.add_user(team, GONE, name="gone", real_name="Gerd Gone", deleted=True)
    sim.add_user(team, "U0JENKINS", name="jenkins", is_bot=True)
    sim.add_channel(team, "C0BAUAMT", name="bauamt", members=[ANNA, team.bot_user_id])
    return team


@pytest.fixture
def client(sim: SlackSimulator, rathaus: Team) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-rathaus-bot", base_url=sim.api_url)


async def error_of(call: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as caught:
        await call
    return dict(caught.value.response.data)  # type: ignore[arg-type]


def _spec_method(path: str) -> dict[str, Any]:
    spec = sample("slack-api-specs/web-api/slack_web_openapi_v2.json")
    return next(iter(spec["paths"][path].values()))  # type: ignore[no-any-return]


@needs_fixtures
async def test_conversations_open_gives_one_im_per_person(sim: SlackSimulator, rathaus: Team,
                                                          client: AsyncWebClient) -> None:
    first = dict((await client.conversations_open(users=ANNA)).data)  # type: ignore[arg-type]
    example = _spec_method("/conversations.open")["responses"]["200"]["examples"][
        "application/json"]
    assert_shape(first, example, "conversations.open")
    assert set(first) == {"ok", "channel"} and first["channel"]["id"].startswith("D")
    again = dict((await client.conversations_open(users=ANNA)).data)  # type: ignore[arg-type]
    assert again == {"ok": True, "no_op": True, "already_open": True,
                     "channel": {"id": first["channel"]["id"]}}
    full = dict((await client.conversations_open(users=ANNA, return_im=True)).data)  # type: ignore[arg-type]
    assert full["channel"]["is_im"] is True and full["channel"]["user"] == ANNA
    by_id = dict((await client.conversations_open(channel=first["channel"]["id"])).data)  # type: ignore[arg-type]
    assert by_id["channel"]["id"] == first["channel"]["id"]

    # Slack's errors for people who cannot get a DM, as the published method lists them
    # (cannot_dm_bot is Slack's answer for bots, which the description leaves out).
    listed = set(_spec_method("/conversations.open")["responses"]["default"]["schema"][
        "properties"]["error"]["enum"]) | {"cannot_dm_bot"}
    for users, code in ((GONE, "user_disabled"), ("U0NOBODY", "user_not_found"),
                        ("U0JENKINS", "cannot_dm_bot"), (rathaus.bot_user_id, "cannot_dm_bot"),
                        (",".join(f"U0{i}" for i in range(9)), "too_many_users")):
        answer = await error_of(client.conversations_open(users=users))
        assert answer["error"] == code, (users, answer)
        assert code in listed
    answer = await error_of(client.api_call("conversations.open", params={}))
    assert answer["error"] == "users_list_not_supplied"
    answer = await error_of(client.conversations_open(channel="D0NOTHERE"))
    assert answer["error"] == "channel_not_found"


async def test_the_app_posts_into_its_im_and_the_test_reads_it(
        sim: SlackSimulator, rathaus: Team, client: AsyncWebClient) -> None:
    opened = await client.conversations_open(users=ANNA)
    im = opened["channel"]["id"]
    posted = dict((await client.chat_postMessage(channel=im, text="Ihr Code: 12345678")).data)  # type: ignore[arg-type]
    assert posted["ok"] and posted["channel"] == im
    assert posted["message"]["bot_id"] == rathaus.bot_id
    (message,) = sim.im_messages(rathaus, ANNA)
    assert message["text"] == "Ihr Code: 12345678" and message["ts"] == posted["ts"]
    assert sim.im_messages(rathaus, "U0NOBODY") == []
    # The app subscribes to no message.im: nothing about the IM reaches it as an event.
    assert all(e.get("event", {}).get("channel") != im for e in sim.events(rathaus))
    answer = await error_of(client.api_call("chat.postMessage",
                                            json={"channel": im, "text": ""}))
    assert answer["error"] == "no_text"


@needs_fixtures
async def test_lookup_by_email(sim: SlackSimulator, rathaus: Team,
                               client: AsyncWebClient) -> None:
    found = dict((await client.users_lookupByEmail(email="Anna.Schmidt@rathaus.example")).data)  # type: ignore[arg-type]
    assert found["user"]["id"] == ANNA
    answer = await error_of(client.users_lookupByEmail(email="niemand@rathaus.example"))
    assert answer["error"] == "users_not_found"
    listed = _spec_method("/users.lookupByEmail")["responses"]["default"]["schema"][
        "properties"]["error"]["enum"]
    assert "users_not_found" in listed


async def test_a_missing_scope_is_refused_as_slack_does(sim: SlackSimulator, rathaus: Team,
                                                        client: AsyncWebClient) -> None:
    rathaus.scopes = {"chat:write", "users:read"}
    answer = await error_of(client.conversations_open(users=ANNA))
    assert answer == {"ok": False, "error": "missing_scope",
                      "needed": "channels:write,groups:write,mpim:write,im:write",
                      "provided": "chat:write,users:read"}
    answer = await error_of(client.users_lookupByEmail(email="anna.schmidt@rathaus.example"))
    assert answer["error"] == "missing_scope" and answer["needed"] == "users:read.email"
    rathaus.scopes = {"im:write", "users:read.email"}
    assert (await client.conversations_open(users=ANNA))["ok"]
    assert (await client.users_lookupByEmail(email="anna.schmidt@rathaus.example"))["ok"]


def test_the_manifest_grants_the_scopes_the_bridge_is_checked_for() -> None:
    granted = set(yaml.safe_load(MANIFEST.read_text())["oauth_config"]["scopes"]["bot"])
    for method, needed in SCOPES.items():
        assert granted & set(needed), f"{method} needs one of {needed}"
    assert {"im:write", "users:read.email"} <= granted


@needs_fixtures
def test_the_checked_scopes_are_slacks() -> None:
    assert FIXTURES is not None
    for method, needed in SCOPES.items():
        security = _spec_method(f"/{method}")["security"][0]["slackAuth"]
        assert set(needed) == set(security), method
