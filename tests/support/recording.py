"""A minimal real connector for a made-up network ``test``, to exercise the core.

It records what the hub relays to it and can post into rooms as its puppets, exactly like the
Slack and email connectors do, so core behaviour (relay rule, echo suppression, link
commands, bridge info, outbox retries) is tested without either network.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text

from bridge.core.connector import Connector, Health, LinkTarget, SubCommand
from bridge.core.errors import CommandError, PermanentError, TemporaryError
from bridge.core.hub import Hub
from bridge.db.queues import Delivery
from bridge.db.store import LinkInfo

TEST_PREFIX = "test_"


class RecordingConnector(Connector):
    network = "test"
    display_name = "Test network"

    def __init__(self, homeserver_domain: str) -> None:
        super().__init__(TEST_PREFIX, homeserver_domain)
        self.delivered: list[dict[str, Any]] = []
        self.arrived = asyncio.Condition()
        # Failures to inject, consumed one per delivery attempt: "temporary" / "permanent"
        # (the connector's own errors), "bug" (a ValueError, as from bad data) or
        # "connection" (the connection dropped).
        self.failures: list[str] = []
        # Runs of the `!bridge test break` command, which fails with a database error.
        self.command_runs = 0
        self.attempts = 0
        self.hub: Hub | None = None

    async def start(self, hub: Hub) -> None:
        self.hub = hub

    async def deliver(self, hub: Hub, delivery: Delivery, link: LinkInfo | None) -> str | None:
        self.attempts += 1
        if self.failures:
            failure = self.failures.pop(0)
            if failure == "temporary":
                raise TemporaryError("remote side unavailable", retry_after=0.2)
            if failure == "bug":
                raise ValueError("cannot encode this message")
            if failure == "connection":
                raise ConnectionResetError("connection reset by peer")
            raise PermanentError("remote side refused the message",
                                 hint="The test network said no.")
        if link is None:
            return None
        async with self.arrived:
            self.delivered.append({"link": link.remote_id, "event": delivery.payload["event"]})
            self.arrived.notify_all()
        return f"remote-{delivery.id}"

    async def wait_for(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            async with self.arrived:
                while True:
                    for item in self.delivered:
                        if predicate(item["event"]):
                            return item
                    await self.arrived.wait()

        return await asyncio.wait_for(find(), timeout)

    async def resolve_link(self, hub: Hub, room_id: str, remote_id: str,
                           args: list[str]) -> LinkTarget:
        if remote_id.startswith("missing"):
            raise CommandError(f"There is no conversation `{remote_id}` on the test network.")
        return LinkTarget(remote_id=remote_id, remote_name=f"Conversation {remote_id}",
                          external_url=f"https://test.invalid/{remote_id}")

    def commands(self) -> list[SubCommand]:
        return [SubCommand("break", "", "run a command whose database work fails",
                           self._break)]

    async def _break(self, hub: Hub, room_id: str, sender: str, args: list[str]) -> str:
        """A command whose database work fails (a query on a table that does not exist)."""
        self.command_runs += 1
        async with hub.db.transaction() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
        return "never reached"

    def health(self) -> Health:
        return Health(True, "connected to the test network")
