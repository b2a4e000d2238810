"""Fixtures for encrypted rooms: a bridge with encryption allowed, Slack and email on, and
users whose client is matrix-nio with end-to-end encryption (testkit/nio_client.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from testkit.nio_client import EncryptingUser
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.slack.conftest import SlackBridge, running_slack_and_email_bridge

ENCRYPTION = {"allow": True, "key_wait_seconds": 8}


@asynccontextmanager
async def encrypted_bridge(homeserver: Homeserver, database_url: str, sim: SlackSimulator,
                           team: Any, sink: SmtpSink, double_puppet: bool = False,
                           **encryption: Any) -> AsyncIterator[SlackBridge]:
    """Slack and email on (see running_slack_and_email_bridge), encryption allowed (and
    ``encryption``'s keys set)."""
    extra = {"double_puppet__enabled": True} if double_puppet else {}
    async with running_slack_and_email_bridge(
            homeserver, database_url, sim, team, sink,
            encryption={**ENCRYPTION, **encryption}, **extra) as running:
        yield running


@pytest.fixture
async def e2ee_bridge(homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator,
                      team: Any, sink: SmtpSink) -> AsyncIterator[SlackBridge]:
    async with encrypted_bridge(homeserver, database_url, slack_sim, team, sink) as running:
        yield running


@pytest.fixture
async def nio_users(homeserver: Homeserver,
                    tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Makes encrypting users (admins of the bridge unless ``admin=False``); closes them."""
    made: list[EncryptingUser] = []

    async def make(admin: bool = True) -> EncryptingUser:
        localpart = f"{'admin' if admin else 'user'}{uuid.uuid4().hex[:8]}"
        user = await EncryptingUser.register(homeserver.synapse, localpart,
                                             tmp_path / "nio" / localpart)
        made.append(user)
        return user

    try:
        yield make
    finally:
        for user in made:
            await user.close()
