"""Wires the parts together and runs them: database, hub, queues, Matrix side, connectors."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from sqlalchemy.engine import make_url

from bridge.config import Config, Listener
from bridge.core import retention
from bridge.core.connector import Connector
from bridge.core.heartbeat import Heartbeat
from bridge.core.hub import Hub
from bridge.core.inbox import InboxWorker
from bridge.core.outbox import OutboxWorker
from bridge.db.engine import Database, MigrationError
from bridge.db.single_process import DatabaseInUse, SingleProcessLock
from bridge.matrix.appservice import AppserviceServer
from bridge.matrix.bot import Bot
from bridge.matrix.side import MatrixSide
from bridge.networks import networks
from bridge.registration import HomeserverUnavailable, namespace_refusal, regenerate_hint

if TYPE_CHECKING:
    from bridge.matrix.crypto import BridgeCrypto

log = logging.getLogger("bridge")

# /_bridge/health asks the homeserver at most this often (seconds), and waits this long.
HOMESERVER_PROBE_TTL = 5.0
HOMESERVER_PROBE_TIMEOUT = 3.0


class StartError(Exception):
    """The bridge cannot start; the message is one line for the operator."""


def _port_in_use(listener: Listener) -> StartError:
    return StartError(f"cannot listen on {listener.hostname}:{listener.port} ({listener.key}): "
                      "the address is already in use; is another program (or the bridge "
                      "itself) already listening there?")


def build_connectors(config: Config) -> list[Connector]:
    """The connectors of the networks enabled in the config, in registry order."""
    sections = config.networks()
    return [network.connector(config) for network in networks()
            if network.name in sections and sections[network.name].enabled]


class Bridge:
    def __init__(self, config: Config, connectors: list[Connector] | None = None) -> None:
        self.config = config
        self.db = Database(config.database.url)
        # SQLite: one process per database file (a second one refuses to start).
        self._single_process = SingleProcessLock(config.database.url)
        self.hub = Hub(config, self.db,
                       connectors if connectors is not None else build_connectors(config))
        beat = config.bridge.heartbeat
        self.heartbeat = Heartbeat(self.db, beat.interval_seconds, beat.expiry_seconds)
        self.hub.heartbeat = self.heartbeat
        self.outbox = OutboxWorker(self.db, self.hub.deliver, self.hub.on_delivery_failed,
                                   config.bridge.outbox, holder=self.heartbeat.process_id,
                                   lease_seconds=beat.expiry_seconds)
        self.heartbeat.on_released = self.outbox.wake
        self.inbox = InboxWorker(self.db, self.hub.route_batch, on_enqueued=self.outbox.wake)
        self.hub.wake_outbox = self.outbox.wake
        self.hub.claim_outbox = self.outbox.claim_queued
        self.hub.start_outbox = self.outbox.start_claimed
        self.server = AppserviceServer(self)
        self.http: aiohttp.ClientSession | None = None
        self._matrix: MatrixSide | None = None
        # The bot's encryption device (encryption.allow), made with the Matrix side.
        self.crypto: BridgeCrypto | None = None
        self._setup_task: asyncio.Task[None] | None = None
        self._networks_task: asyncio.Task[None] | None = None
        self._homeserver_state: tuple[float, str] | None = None
        self._homeserver_probe: asyncio.Lock = asyncio.Lock()
        self.ready = False
        # Set by `bridge run`: apply the migrations in a short-lived child process.
        self.migrate_in_subprocess = False

    @property
    def matrix(self) -> MatrixSide:
        assert self._matrix is not None, "the bridge is not started"
        return self._matrix

    async def start(self) -> None:
        """Start everything; on failure, close what was opened and raise (StartError for a
        reason the operator must fix, such as a port in use)."""
        self._state_defaults()
        try:
            self._single_process.acquire()
        except DatabaseInUse as exc:
            await self.db.close()
            raise StartError(str(exc)) from None
        try:
            # `bridge run` migrates in a child process: alembic need not stay resident.
            before, after = await (self.db.upgrade_in_subprocess() if self.migrate_in_subprocess
                                   else self.db.upgrade())
        except Exception as exc:
            await self.db.close()
            self._single_process.release()
            if isinstance(exc, OSError) or exc.__class__.__module__.startswith(
                    ("sqlalchemy", "asyncpg", "sqlite3")) or (
                    isinstance(exc, MigrationError) and exc.database_error):
                where = make_url(self.config.database.url).render_as_string(hide_password=True)
                detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
                raise StartError(f"cannot use the database {where} (database.url): "
                                 f"{detail}") from None
            raise
        self.db.head = after  # what the health check compares with (without alembic)
        if before != after:
            log.info("database schema upgraded from %s to %s", before or "empty", after)
        try:
            # Before any work is claimed: claims name this process, its beats keep them.
            await self.heartbeat.start()
        except Exception:
            await self.db.close()
            self._single_process.release()
            raise
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120, connect=10),
            connector=aiohttp.TCPConnector(
                limit=100, ssl=self.config.homeserver.verify_tls
            ),
        )
        try:
            await self._start_parts()
        except BaseException:
            await self.stop()
            raise
        self.ready = True

    def _state_defaults(self) -> None:
        """Say which defaults the bridge runs with where an operator may not expect them."""
        if self.config.database_is_default:
            path = make_url(self.config.database.url).database or ""
            log.warning("the config has no database section: using the SQLite file %s (set "
                        "database.url to choose; PostgreSQL for production)",
                        Path(path).resolve())
        if not self.config.bridge.admins:
            log.warning("bridge.admins is empty: nobody can invite the bot, link rooms or use "
                        "its admin commands; add your Matrix user ID to bridge.admins")

    async def _start_parts(self) -> None:
        assert self.http is not None
        self._matrix = MatrixSide(self.hub, self.http)
        self._matrix.bot = Bot(self.hub, self._matrix)
        self.hub.matrix = self._matrix
        if self.config.encryption.allow:
            # Imported only here: Olm and its store stay out of a bridge without encryption.
            from bridge.matrix.crypto import BridgeCrypto

            self.crypto = self._matrix.crypto = BridgeCrypto(self._matrix, self.config)
        appservice = self.config.listeners()[0]
        await self._listen(appservice, self.server.start(appservice.hostname, appservice.port))
        log.info("listening on %s:%d", appservice.hostname, appservice.port)
        for connector in self.hub.connectors.values():
            # Until the homeserver has said that it accepts the network's puppets.
            connector.not_started = "waiting for the homeserver to confirm this network's " \
                                    "namespace"
        if not await self._start_networks():
            # Accept nothing before the homeserver has been asked: mail taken in for puppets
            # it refuses could never be posted.
            self._networks_task = asyncio.create_task(self._start_networks_later(),
                                                      name="start-networks")
        await self.inbox.start()
        await self.outbox.start()
        # Retention (bridge/core/retention.py): in one process of all (the housekeeper), at
        # start or take-over, then once a day.
        self.heartbeat.schedule("retention", retention.DAY, lambda: retention.run_retention(
            self.db, self.config.retention))
        self._setup_task = asyncio.create_task(self._setup_bot(), name="setup-bot")
        await asyncio.wait([self._setup_task], timeout=15)

    @staticmethod
    async def _listen(listener: Listener, starting: Awaitable[None]) -> None:
        try:
            await starting
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise _port_in_use(listener) from None
            raise StartError(f"cannot listen on {listener.hostname}:{listener.port} "
                             f"({listener.key}): {exc.strerror or exc}") from None

    async def _start_networks(self, *, at_start: bool = True) -> bool:
        """Ask the homeserver whether each network's puppets are ours, then start those that
        are. False if the homeserver could not be asked (nothing started then).

        A network that cannot start (its port in use) fails the bridge's start; later, when
        the rest of the bridge already runs, it only stays "not started" with the reason.
        """
        assert self.http is not None
        refusals: dict[str, str | None] = {}
        for network, connector in self.hub.connectors.items():
            try:
                refusals[network] = await namespace_refusal(self.http, self.config,
                                                            connector.puppet_prefix)
            except HomeserverUnavailable as exc:
                log.warning("cannot ask the homeserver about the networks' namespaces (%s); "
                            "the networks start once it answers", exc)
                return False
        listeners = {lst.network: lst for lst in self.config.listeners()}
        for network, connector in self.hub.connectors.items():
            refusal = refusals[network]
            if refusal is not None:
                connector.not_started = f"{refusal}; {regenerate_hint()}"
                log.error("%s is not started: %s", connector.display_name,
                          connector.not_started)
                continue
            try:
                if network in listeners:
                    await self._listen(listeners[network], connector.start(self.hub))
                else:
                    await connector.start(self.hub)
            except Exception as exc:
                # Its half-opened resources (sessions, sockets) are closed by stop().
                connector.not_started = f"failed to start: {exc}"
                if at_start:
                    raise
                log.error("%s failed to start: %s", connector.display_name, exc,
                          exc_info=not isinstance(exc, StartError))
                continue
            connector.not_started = None
        return True

    async def _start_networks_later(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            if await self._start_networks(at_start=False):
                return
            delay = min(delay * 2, 60)

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
        if self.crypto is not None:
            await self._start_crypto()
        try:
            # Synapse backs off after failed transactions; a ping makes it retry now.
            await self.matrix.bot_intent.appservice_ping(
                self.config.appservice.id, txn_id=f"startup-{int(time.time())}")
        except Exception as exc:
            log.warning("appservice ping failed: %s (run `bridge check` for details)", exc)

    async def _start_crypto(self) -> None:
        """Log the bot's encryption device in; until then transactions wait (503). If the
        homeserver refuses, the bridge runs on without decrypting (encrypted messages wait
        for their keys, then the room is told) and says why; `bridge check` says it too."""
        assert self.crypto is not None and self._matrix is not None
        try:
            await self.crypto.start()
        except Exception as exc:
            self.crypto.failed = f"{exc.__class__.__name__}: {exc}"
            log.error("encryption could not start, encrypted rooms are not bridged: %s "
                      "(see the README's \"Encrypted rooms\" for what the homeserver must "
                      "enable)", self.crypto.failed, exc_info=True)
            return
        self._matrix.api.crypto = self.crypto  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop taking work, finish what is in flight; the rest waits in the database."""
        self.ready = False
        for task in (self._setup_task, self._networks_task):
            if task is not None:
                task.cancel()
        # First close the door: the homeserver keeps unacknowledged transactions for later.
        await self.server.stop()
        await self.inbox.stop()
        await self.outbox.stop()
        for connector in self.hub.connectors.values():
            try:
                await connector.stop()
            except Exception:
                log.exception("stopping the %s connector failed", connector.network)
        await self.hub.finish_commits()
        if self.crypto is not None:
            try:
                await self.crypto.stop()
            except Exception:
                log.exception("closing the crypto store failed")
        if self.http is not None:
            await self.http.close()
        await self.heartbeat.stop()
        await self.db.close()
        self._single_process.release()

    async def homeserver_state(self) -> str:
        """"ok" if the homeserver answers, else why not. Cached for a few seconds, so a
        monitor polling /_bridge/health does not turn into load on the homeserver."""
        now = time.monotonic()
        if self._homeserver_state and now - self._homeserver_state[0] < HOMESERVER_PROBE_TTL:
            return self._homeserver_state[1]
        async with self._homeserver_probe:  # concurrent health calls share one probe
            if (self._homeserver_state
                    and time.monotonic() - self._homeserver_state[0] < HOMESERVER_PROBE_TTL):
                return self._homeserver_state[1]
            state = await self._probe_homeserver()
            self._homeserver_state = (time.monotonic(), state)
            return state

    async def _probe_homeserver(self) -> str:
        if self.http is None:
            return "not started"
        url = f"{self.config.homeserver.address}/_matrix/client/versions"
        try:
            async with self.http.get(
                    url, timeout=aiohttp.ClientTimeout(total=HOMESERVER_PROBE_TIMEOUT)) as r:
                if r.status == 200:
                    return "ok"
                return f"{url} answered HTTP {r.status}"
        except TimeoutError:
            return f"unreachable: {url} did not answer within {HOMESERVER_PROBE_TIMEOUT:.0f} s"
        except aiohttp.ClientError as exc:
            return f"unreachable: {exc.__class__.__name__}: {exc}"

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        await self.start()
        log.info("bridge running as %s", self.config.bot_mxid)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
