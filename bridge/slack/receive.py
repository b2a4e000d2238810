"""How Slack's events reach the bridge: Socket Mode or the Events API, then the intake.

Both ways end in :class:`Intake`, which stores events durably, in arrival order, a batch
per database transaction, and only then acknowledges them to Slack. While the database is
away, the batch is tried again before anything later, and nothing is acknowledged meanwhile
(Slack's re-sends are dropped by their natural keys once stored).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import SQLAlchemyError

from bridge.slack.workspace import Workspace

log = logging.getLogger("bridge.slack")

# Stores a batch of event_callback payloads of one workspace; raises if it could not.
StoreEvents = Callable[[Workspace, list[dict[str, Any]]], Awaitable[None]]
Ack = Callable[[bool], Awaitable[None]]

MAX_BATCH = 200
# Storing a batch again while the database is away: first after this, doubling up to max.
RETRY_FIRST = 0.2
RETRY_MAX = 5.0


class Intake:
    """Per workspace: a queue of received events, stored in order, then acknowledged."""

    def __init__(self, workspace: Workspace, store: StoreEvents) -> None:
        self.workspace = workspace
        self._store = store
        self._queue: asyncio.Queue[tuple[dict[str, Any], Ack]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def submit(self, payload: dict[str, Any], ack: Ack) -> None:
        """Queue one event; ``ack(stored)`` is called once it is stored (or could not be).

        Not a coroutine on purpose: callers run concurrently, and queuing before their first
        ``await`` keeps Slack's order.
        """
        self._queue.put_nowait((payload, ack))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"slack-intake-{self.workspace.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stored = await self._store_in_order(batch)
            for _, ack in batch:
                try:
                    await ack(stored)
                except Exception as exc:  # the connection went away: Slack re-sends
                    log.info("could not acknowledge a Slack event: %r", exc)


    async def _store_in_order(self, batch: list[tuple[dict[str, Any], Ack]]) -> bool:
        """Store the batch. While the database is unreachable, the same batch is tried
        again before anything received after it: Slack re-sends an unacknowledged event
        only later (and may give up), so moving on would let later events of a channel
        overtake it. Anything else (a bug with one event) is left to Slack's retries."""
        payloads = [payload for payload, _ in batch]
        delay = RETRY_FIRST
        while True:
            try:
                await self._store(self.workspace, payloads)
                return True
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                log.warning("could not store %d Slack event(s) of %s (%r); trying again in "
                            "%.1fs", len(batch), self.workspace.name, exc, delay)
            except Exception:
                log.exception("could not store %d Slack event(s) of %s; Slack will send them "
                              "again", len(batch), self.workspace.name)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


class SocketModeReceiver:
    """Socket Mode: the bridge connects out to Slack; no public URL needed.

    slack-sdk's client handles ``hello``, ``disconnect`` (it fetches a fresh URL) and
    reconnects; every (re)connection triggers a catch-up, since events sent while the
    connection was down may be gone for good.
    """

    def __init__(self, workspace: Workspace, api_url: str, intake: Intake,
                 on_connected: Callable[[], None]) -> None:
        assert workspace.settings.app_token is not None
        self.workspace = workspace
        self.intake = intake
        self.on_connected = on_connected
        self.client = SocketModeClient(
            app_token=workspace.settings.app_token,
            web_client=AsyncWebClient(base_url=api_url),
            logger=logging.getLogger("bridge.slack.socket"),
            # slack-sdk runs listeners as separate tasks; ours only queues (see Intake.submit).
            auto_reconnect_enabled=True,
        )
        self.client.message_listeners.append(self._on_message)
        self._connect_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # connect() retries until Slack answers; the bridge must not wait for that.
        self._connect_task = asyncio.create_task(self.client.connect(),
                                                 name=f"slack-socket-{self.workspace.name}")

    async def stop(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
        await self.client.close()
        self.workspace.connected = False

    @property
    def is_open(self) -> bool:
        """Is the websocket up right now? A lost one (no ``disconnect`` first) leaves
        ``connected`` set while slack-sdk reconnects, for as long as Slack is away."""
        session = self.client.current_session
        return session is not None and not session.closed

    async def _on_message(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        kind = message.get("type")
        if kind == "hello":
            self.workspace.connected = True
            self.on_connected()
            return
        if kind == "disconnect":
            self.workspace.connected = False
            return
        envelope_id = message.get("envelope_id")
        if kind != "events_api" or not envelope_id:
            if envelope_id:  # slash commands, interactivity: not ours, but must be acked
                await client.send_socket_mode_response(SocketModeResponse(envelope_id))
            return
        payload = message.get("payload")
        if not isinstance(payload, dict):
            await client.send_socket_mode_response(SocketModeResponse(envelope_id))
            return

        async def ack(stored: bool) -> None:
            if stored:
                await client.send_socket_mode_response(SocketModeResponse(envelope_id))

        self.intake.submit(payload, ack)


class EventsApiServer:
    """The Events API: Slack POSTs signed requests to ``slack.events_api``.

    A request must carry a valid ``X-Slack-Signature`` of one of the HTTP workspaces,
    made within five minutes; anything else gets 401 and changes nothing.
    """

    # Slack wants an answer within 3 s; leave room for the network.
    ACK_WITHIN = 2.5

    def __init__(self, hostname: str, port: int, path: str,
                 workspaces: list[Workspace], intakes: dict[str, Intake]) -> None:
        self.hostname, self.port, self.path = hostname, port, path
        self.workspaces = workspaces
        self.intakes = intakes  # by workspace name
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post(self.path, self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.hostname, self.port).start()
        for workspace in self.workspaces:
            workspace.connected = True
        log.info("Slack Events API listening on %s:%d%s", self.hostname, self.port, self.path)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _signed_by(self, body: bytes, headers: Any) -> Workspace | None:
        timestamp = headers.get("X-Slack-Request-Timestamp", "")
        signature = headers.get("X-Slack-Signature", "")
        if not timestamp or not signature:
            return None
        for workspace in self.workspaces:
            secret = workspace.settings.signing_secret
            if secret and SignatureVerifier(secret).is_valid(body, timestamp, signature):
                return workspace
        return None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        workspace = self._signed_by(body, request.headers)
        if workspace is None:
            log.warning("refused a Slack Events API request with a missing, wrong or stale "
                        "signature from %s", request.remote)
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"error": "body is not a JSON object"}, status=400)
        if payload.get("type") == "url_verification":
            return web.json_response({"challenge": payload.get("challenge", "")})
        if payload.get("type") != "event_callback" or not isinstance(payload.get("event"), dict):
            return web.Response(status=200)  # app_rate_limited notices and the like
        if workspace.team_id and payload.get("team_id") not in (workspace.team_id, None):
            log.warning("an Events API request signed by %s names team %s; refused",
                        workspace.name, payload.get("team_id"))
            return web.json_response({"error": "wrong team"}, status=401)
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            log.info("Slack re-sent event %s (retry %s: %s)", payload.get("event_id"), retry,
                     request.headers.get("X-Slack-Retry-Reason"))
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def ack(stored: bool) -> None:
            if not done.done():
                done.set_result(stored)

        self.intakes[workspace.name].submit(payload, ack)
        try:
            stored = await asyncio.wait_for(asyncio.shield(done), self.ACK_WITHIN)
        except TimeoutError:
            # Not stored in time: an error makes Slack send it again, and should the event
            # be stored meanwhile after all, the repeat is dropped by its event_id.
            stored = False
        if not stored:
            return web.json_response({"error": "try again"}, status=503)
        return web.Response(status=200)
