"""Fixtures for the Slack connector: the Slack simulator with one workspace, and a bridge
talking to it through slack-sdk as it would to Slack."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.synapse import free_port
from tests.conftest import Homeserver, RunningBridge

TEAM_ID = "T0RATHAUS"
CHANNEL = "C0BAUAMT"
OTHER_CHANNEL = "C0SCHULE"
ANNA = "U0ANNA"
BEN = "U0BEN"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
# Where a reverse proxy would publish the bridge's listener (avatars for Slack's icon_url).
PUBLIC_URL = "https://bridge.example.test"


@dataclass
class Workspace:
    sim: SlackSimulator
    team: Any


def add_workspace(sim: SlackSimulator, team_id: str = TEAM_ID, name: str = "rathaus",
                  socket_mode: bool = True) -> Any:
    team = sim.add_team(team_id=team_id, name=name, domain=name,
                        bot_token=f"xoxb-{name}-token",
                        app_token=f"xapp-{name}-token" if socket_mode else None,
                        signing_secret=SIGNING_SECRET)
    sim.add_user(team, ANNA, name="anna", real_name="Anna Schmidt", display_name="Anna")
    sim.add_user(team, BEN, name="ben", real_name="Ben Weber", display_name="")
    sim.add_channel(team, CHANNEL, name="bauamt", topic="Bauanträge", purpose="",
                    members=[ANNA, BEN])
    sim.add_channel(team, OTHER_CHANNEL, name="schule", members=[ANNA])
    return team


def workspace_config(team: Any) -> dict[str, Any]:
    entry = {"name": team.name, "bot_token": team.bot_token,
             "signing_secret": team.signing_secret}
    if team.app_token:
        entry["app_token"] = team.app_token
    return entry


@pytest.fixture
async def slack_sim() -> AsyncIterator[SlackSimulator]:
    sim = SlackSimulator(host="127.0.0.1", port=0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@pytest.fixture
def team(slack_sim: SlackSimulator) -> Any:
    return add_workspace(slack_sim)


class SlackBridge(RunningBridge):
    sim: SlackSimulator
    events_port: int

    @property
    def slack(self) -> Any:
        return self.hub.connectors["slack"]

    async def connected(self, timeout: float = 15) -> None:
        """Until every workspace is identified and receiving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.slack.workspaces and all(
                ws.team_id and ws.connected for ws in self.slack.workspaces)):
            assert loop.time() < deadline, f"Slack not connected: {self.slack.health()}"
            await asyncio.sleep(0.05)


@asynccontextmanager
async def running_slack_bridge(homeserver: Homeserver, database_url: str,
                               sim: SlackSimulator, teams: list[Any],
                               **overrides: Any) -> AsyncIterator[SlackBridge]:
    events_port = free_port()
    for team in teams:
        if not team.app_token:
            team.events_url = f"http://127.0.0.1:{events_port}/slack/events"
    config = homeserver.config(
        database_url,
        slack__enabled=True, slack__api_url=sim.api_url,
        slack__workspaces=[workspace_config(t) for t in teams],
        slack__events_api={"hostname": "127.0.0.1", "port": events_port,
                           "path": "/slack/events"},
        bridge__outbox={"retry_base_seconds": 0.2, "retry_max_seconds": 1.0,
                        "give_up_after_hours": 1.0},
        bridge__public_url=PUBLIC_URL,
        **overrides,
    )
    running = SlackBridge(homeserver, config, with_connectors=True)
    running.sim = sim
    running.events_port = events_port
    await running.start()
    try:
        await running.connected()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def slack_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                       team: Any) -> AsyncIterator[SlackBridge]:
    async with running_slack_bridge(homeserver, database_url, slack_sim, [team]) as running:
        yield running


async def linked_room(bridge: SlackBridge, admin: MatrixTestClient, channel: str = CHANNEL,
                      *extra: str) -> str:
    """A room with the bot as admin (it may rename and redact), linked to the channel."""
    bot = bridge.homeserver.bot
    room_id = await open_room(bot, admin, bot_power=100, name="Bauamt")
    args = " ".join([channel, *extra])
    await command(bot, admin, room_id, f"!bridge link slack {args}", expect="Linked")
    return room_id


@asynccontextmanager
async def running_slack_and_email_bridge(homeserver: Homeserver, database_url: str,
                                         sim: SlackSimulator, team: Any,
                                         sink: Any, **overrides: Any
                                         ) -> AsyncIterator[SlackBridge]:
    """A bridge with Slack (the simulator's ``team``) and email on (mail out to ``sink``,
    trusted senders), besides the test network; ``smtp_port`` is where it takes mail in."""
    from tests.email.conftest import MAIL_DOMAIN

    smtp_port = free_port()
    async with running_slack_bridge(
            homeserver, database_url, sim, [team],
            email__enabled=True, email__domain=MAIL_DOMAIN, email__sender_auth="none",
            email__token_secret="test-token-secret-0123456789",
            email__smtp_in={"hostname": "127.0.0.1", "port": smtp_port},
            email__smtp_out={"host": sink.host, "port": sink.port}, **overrides) as running:
        running.smtp_port = smtp_port  # type: ignore[attr-defined]
        yield running
