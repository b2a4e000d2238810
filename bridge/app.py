"""Wires the parts together and runs them: database, hub, queues, Matrix side, connectors."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from bridge.config import Config
from bridge.core.connector import Connector
from bridge.core.hub import Hub
from bridge.core.inbox import InboxWorker
from bridge.core.outbox import OutboxWorker
from bridge.db.engine import Database
from bridge.matrix.appservice import AppserviceServer
from bridge.matrix.bot import Bot
from bridge.matrix.side import MatrixSide

log = logging.getLogger("bridge")


def build_connectors(config: Config) -> list[Connector]:
    """The connectors of the networks enabled in the config."""
    connectors: list[Connector] = []
    if config.email.enabled:
        from bridge.email.connector import EmailConnector

        connectors.append(EmailConnector(config))
    if config.slack.enabled:
        from bridge.slack.connector import SlackConnector

        connectors.append(SlackConnector(config))
    return connectors


class Bridge:
    def __init__(self, config: Config, connectors: list[Connector] | None = None) -> None:
        self.config = config
        self.db = Database(config.database.url)
        self.hub = Hub(config, self.db,
                       connectors if connectors is not None else build_connectors(config))
        self.outbox = OutboxWorker(self.db, self.hub.deliver, self.hub.on_delivery_failed,
                                   config.bridge.outbox)
        self.inbox = InboxWorker(self.db, self.hub.route_batch, on_enqueued=self.outbox.wake)
        self.hub.wake_outbox = self.outbox.wake
        self.server = AppserviceServer(self)
        self.http: aiohttp.ClientSession | None = None
        self._matrix: MatrixSide | None = None
        self._setup_task: asyncio.Task[None] | None = None
        self.ready = False

    @property
    def matrix(self) -> MatrixSide:
        assert self._matrix is not None, "the bridge is not started"
        return self._matrix

    async def start(self) -> None:
        before, after = await self.db.upgrade()
        if before != after:
            log.info("database schema upgraded from %s to %s", before or "empty", after)
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120, connect=10),
            connector=aiohttp.TCPConnector(
                limit=100, ssl=self.config.homeserver.verify_tls
            ),
        )
        self._matrix = MatrixSide(self.hub, self.http)
        self._matrix.bot = Bot(self.hub, self._matrix)
        self.hub.matrix = self._matrix
        await self.server.start(self.config.appservice.hostname, self.config.appservice.port)
        log.info("listening on %s:%d", self.config.appservice.hostname,
                 self.config.appservice.port)
        for connector in self.hub.connectors.values():
            await connector.start(self.hub)
        await self.inbox.start()
        await self.outbox.start()
        self._setup_task = asyncio.create_task(self._setup_bot(), name="setup-bot")
        await asyncio.wait([self._setup_task], timeout=15)
        self.ready = True

    async def _setup_bot(self) -> None:
        """Register the bot and ask the homeserver to send what it held back while we were away.

        Retried until the homeserver answers: a bridge started before its homeserver must come
        up by itself, not need a second start.
        """
        delay = 1.0
        while True:
            try:
                await self.matrix.bot_intent.ensure_registered()
                await self.matrix.bot_intent.set_displayname(self.config.appservice.bot_displayname)
                break
            except Exception as exc:
                log.warning("homeserver not ready (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
        try:
            # Synapse backs off after failed transactions; a ping makes it retry now.
            await self.matrix.bot_intent.appservice_ping(
                self.config.appservice.id, txn_id=f"startup-{int(time.time())}")
        except Exception as exc:
            log.warning("appservice ping failed: %s (run `bridge check` for details)", exc)

    async def stop(self) -> None:
        """Stop taking work, finish what is in flight; the rest waits in the database."""
        self.ready = False
        if self._setup_task is not None:
            self._setup_task.cancel()
        # First close the door: the homeserver keeps unacknowledged transactions for later.
        await self.server.stop()
        await self.inbox.stop()
        await self.outbox.stop()
        for connector in self.hub.connectors.values():
            try:
                await connector.stop()
            except Exception:
                log.exception("stopping the %s connector failed", connector.network)
        if self.http is not None:
            await self.http.close()
        await self.db.close()

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        await self.start()
        log.info("bridge running as %s", self.config.bot_mxid)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
