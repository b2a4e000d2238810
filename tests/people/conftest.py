"""Fixtures for identity links: a bridge with Slack (the simulator's "rathaus") and email on,
on SQLite and PostgreSQL, and a person with a Matrix account of their own to link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import sink as sink
from tests.slack.conftest import SlackBridge, running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team


@pytest.fixture
async def both_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        yield running


@pytest.fixture
async def anna(homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    """Anna Schmidt's own Matrix account (she is U0ANNA in Slack)."""
    client = await homeserver.user()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def ben(homeserver: Homeserver) -> AsyncIterator[MatrixTestClient]:
    client = await homeserver.user()
    try:
        yield client
    finally:
        await client.close()
