"""Fixtures for the email connector: a bridge with email on, and a real SMTP sink as the
relay that staff's mailboxes sit behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from testkit.smtp_sink import SmtpSink
from testkit.synapse import free_port
from tests.conftest import Homeserver, RunningBridge

MAIL_DOMAIN = "mail.bridge.test"
# Where a reverse proxy would publish the bridge's listener; tests call the listener directly.
PUBLIC_URL = "https://bridge.example.test"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


class EmailBridge(RunningBridge):
    smtp_port: int

    @property
    def email(self):  # type: ignore[no-untyped-def]
        return self.hub.connectors["email"]


@pytest.fixture
def email_settings(request: pytest.FixtureRequest) -> dict[str, object]:
    """Overrides of the email section; tests change it with pytest's indirect parametrize."""
    return getattr(request, "param", {"sender_auth": "none"})


@pytest.fixture
async def email_bridge(homeserver: Homeserver, database_url: str, sink: SmtpSink,
                       email_settings: dict[str, object]) -> AsyncIterator[EmailBridge]:
    async with running_email_bridge(homeserver, database_url, sink, email_settings) as running:
        yield running


@asynccontextmanager
async def running_email_bridge(homeserver: Homeserver, database_url: str, sink: SmtpSink,
                               email_settings: dict[str, object]) -> AsyncIterator[EmailBridge]:
    """The bridge of `email_bridge`, for fixtures of a wider scope (one bridge per module)."""
    smtp_port = free_port()
    settings = dict(email_settings)
    # smtp_out settings of a test (a login, idle_seconds) go with the sink's address.
    smtp_out = {"host": sink.host, "port": sink.port, **dict(settings.pop("smtp_out", {}))}
    config = homeserver.config(
        database_url,
        email__enabled=True, email__domain=MAIL_DOMAIN,
        **{f"email__{key}": value for key, value in settings.items()},
        email__token_secret="test-token-secret-0123456789",
        email__smtp_in={"hostname": "127.0.0.1", "port": smtp_port,
                        "max_message_size": 2 * 1024 * 1024},
        email__smtp_out=smtp_out,
        email__max_attachment_size=100_000,
        bridge__outbox={"retry_base_seconds": 0.2, "retry_max_seconds": 1.0,
                        "give_up_after_hours": 1.0},
        bridge__public_url=PUBLIC_URL,
    )
    running = EmailBridge(homeserver, config, with_connectors=True)
    running.smtp_port = smtp_port
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
