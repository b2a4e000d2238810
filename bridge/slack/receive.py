"""How Slack's events reach the bridge: Socket Mode or the Events API, then the intake.

Both ways end in :class:`Intake`, which stores events durably, in arrival order, a batch
per database transaction, and only then acknowledges them to Slack. While the database is
away, the batch is tried again before anything later, and nothing is acknowledged meanwhile
(Slack's re-sends are dropped by their natural keys once stored). An event that can never be
stored (the database refuses its data, not the connection) is set aside after a few tries:
logged with its payload, the linked room told, and acknowledged, so it does not hold up the
workspace's intake for good. The queue is bounded: while it is full, events are not
acknowledged and Slack sends them again later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from bridge import json_codec
from bridge.core.cache import BoundedCache
from bridge.slack.workspace import Workspace

log = logging.getLogger("bridge.slack")

# Stores a batch of event_callback payloads of one workspace; raises if it could not.
StoreEvents = Callable[[Workspace, list[dict[str, Any]]], Awaitable[None]]
# Told about an event that was set aside (the workspace, the payload, why).
SetAside = Callable[[Workspace, dict[str, Any], str], Awaitable[None]]
Ack = Callable[[bool], Awaitable[None]]

MAX_BATCH = 200
# Storing a batch again while the database is away: first after this, doubling up to max.
RETRY_FIRST = 0.2
RETRY_MAX = 5.0
# Received events waiting to be stored, per workspace (slack.intake_queue_limit).
DEFAULT_QUEUE_LIMIT = 10_000
# How often an event the database refuses is tried, alone, before it is set aside: an
# integrity error can be a race with another bridge process that the next try resolves.
UNSTORABLE_TRIES = 3


class _Outcome(enum.Enum):
    STORED = "stored"
    UNSTORABLE = "unstorable"  # the database refuses the data: trying again will not help
    FAILED = "failed"  # something else (a bug): left to Slack's own retries


def can_never_be_stored(exc: BaseException) -> bool:
    """Errors about the event's data, not about reaching the database."""
    if isinstance(exc, (IntegrityError, DataError)):
        return True
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        return True  # the statement could not even be built from the event's values
    # The payload cannot be encoded (a lone surrogate in a text, say).
    return isinstance(exc, (TypeError, ValueError))


def database_away(exc: BaseException) -> bool:
    """The database (or the way to it) is unavailable: the same write will work later."""
    return isinstance(exc, (SQLAlchemyError, OSError, TimeoutError))


def loggable_payload(payload: dict[str, Any]) -> str:
    """The payload as JSON for the log: whatever it holds (it just failed to encode), and
    without Slack's legacy verification token."""
    shown = {k: v for k, v in payload.items() if k != "token"}
    return json.dumps(shown, ensure_ascii=True, default=repr, sort_keys=True)


class Intake:
    """Per workspace: a bounded queue of received events, stored in order, then
    acknowledged."""

    def __init__(self, workspace: Workspace, store: StoreEvents, *,
                 queue_limit: int = DEFAULT_QUEUE_LIMIT,
                 set_aside: SetAside | None = None) -> None:
        self.workspace = workspace
        self._store = store
        self._set_aside = set_aside
        self._queue: asyncio.Queue[tuple[dict[str, Any], Ack]] = asyncio.Queue(
            maxsize=queue_limit)
        # When each event taken and not yet stored was received, oldest first: what this
        # intake may still store is no older than the first (its watermark for the
        # heartbeat, see bridge/core/heartbeat.py).
        self._received: collections.deque[float] = collections.deque()
        self._drained = asyncio.Event()  # set while nothing received waits to be stored
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._full_warned = False
        self.refused_while_full = 0
        self.set_aside_count = 0
        self._last_refusal = "refused by the database"
        # Events set aside, by Slack's event_id: when Slack sends one again (its
        # acknowledgement came after Slack's timeout, the tries take seconds) it is
        # acknowledged at once, not logged, counted and told to the room a second time.
        # Forgetting one (bounded, an hour) costs only that repeated notice.
        self._set_aside_ids: BoundedCache[str, bool] = BoundedCache(1000, 3600)

    def submit(self, payload: dict[str, Any], ack: Ack) -> bool:
        """Queue one event; ``ack(stored)`` is called once it is stored (or could not be).
        False: the queue is full, the event was not taken (do not acknowledge it).

        Not a coroutine on purpose: callers run concurrently, and queuing before their first
        ``await`` keeps Slack's order.
        """
        try:
            self._queue.put_nowait((payload, ack))
            self._received.append(time.time())
            self._drained.clear()
        except asyncio.QueueFull:
            self.refused_while_full += 1
            if not self._full_warned:
                self._full_warned = True
                log.warning("the intake of Slack workspace %s holds %d events not yet stored; "
                            "further events are left unacknowledged until it drains (Slack "
                            "sends them again)", self.workspace.name, self._queue.maxsize)
            return False
        if self._full_warned and self._queue.qsize() < self._queue.maxsize // 2:
            self._full_warned = False
        return True

    def oldest_unstored(self) -> float | None:
        """When the oldest event received and not stored yet came (None: none waits)."""
        return self._received[0] if self._received else None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"slack-intake-{self.workspace.name}")

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Store what was received (its acknowledgements may no longer get through: Slack
        sends those again, and the copies are dropped as duplicates), then stop."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), drain_seconds)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                acks = await self._store_in_order(batch)
            finally:
                for _ in batch:  # stored, or left to Slack's re-sends: not waiting here
                    self._received.popleft()
                if not self._received:
                    self._drained.set()
            for (_, ack), stored in zip(batch, acks, strict=True):
                try:
                    await ack(stored)
                except Exception as exc:  # the connection went away: Slack re-sends
                    log.info("could not acknowledge a Slack event: %r", exc)

    async def _store_in_order(self, batch: list[tuple[dict[str, Any], Ack]]) -> list[bool]:
        """Store the batch; for each event, whether to acknowledge it.

        While the database is unreachable, the same batch is tried again before anything
        received after it: Slack re-sends an unacknowledged event only later (and may give
        up), so moving on would let later events of a channel overtake it. When the database
        refuses the batch's data, its events are stored one by one, in order, and the one it
        refuses is set aside (and acknowledged). Anything else (a bug) is left to Slack's
        retries."""
        again = [self._set_aside_ids.get(str(payload.get("event_id"))) is not None
                 for payload, _ in batch]
        if any(again):
            fresh = [item for item, seen in zip(batch, again, strict=True) if not seen]
            fresh_acks = iter(await self._store_in_order(fresh) if fresh else [])
            return [True if seen else next(fresh_acks) for seen in again]
        payloads = [payload for payload, _ in batch]
        outcome = await self._store_retrying(payloads, tries=1 if len(batch) > 1 else
                                             UNSTORABLE_TRIES)
        if outcome is _Outcome.STORED:
            return [True] * len(batch)
        if outcome is _Outcome.FAILED:
            return [False] * len(batch)
        if len(batch) == 1:
            return [await self._put_aside(payloads[0])]
        acks = []
        for payload in payloads:
            if self._set_aside_ids.get(str(payload.get("event_id"))) is not None:
                acks.append(True)  # its first copy in this batch was just set aside
                continue
            single = await self._store_retrying([payload], tries=UNSTORABLE_TRIES)
            if single is _Outcome.UNSTORABLE:
                acks.append(await self._put_aside(payload))
            else:
                acks.append(single is _Outcome.STORED)
        return acks

    async def _store_retrying(self, payloads: list[dict[str, Any]], tries: int) -> _Outcome:
        delay = RETRY_FIRST
        refused = 0
        while True:
            try:
                await self._store(self.workspace, payloads)
                return _Outcome.STORED
            except Exception as exc:
                if can_never_be_stored(exc):
                    refused += 1
                    self._last_refusal = f"{type(exc).__name__}: {exc}"
                    if refused >= tries:
                        return _Outcome.UNSTORABLE
                    log.warning("could not store %d Slack event(s) of %s, their data was "
                                "refused (%s); trying again in %.1fs", len(payloads),
                                self.workspace.name,
                                self._last_refusal.splitlines()[0], delay)
                elif database_away(exc):
                    log.warning("could not store %d Slack event(s) of %s (%r); trying again "
                                "in %.1fs", len(payloads), self.workspace.name, exc, delay)
                else:
                    log.exception("could not store %d Slack event(s) of %s; Slack will send "
                                  "them again", len(payloads), self.workspace.name)
                    return _Outcome.FAILED
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _put_aside(self, payload: dict[str, Any]) -> bool:
        """Give up on an event the database will never take: acknowledged, so it does not
        block the workspace, but never silently: its payload goes to the log at ERROR and
        the linked room is told."""
        reason = self._last_refusal.splitlines()[0]
        if payload.get("event_id"):
            self._set_aside_ids.set(str(payload["event_id"]), True)
        self.set_aside_count += 1
        log.error("set aside Slack event %s of %s after %d tries, it can never be stored (%s); "
                  "its payload: %s", payload.get("event_id"), self.workspace.name,
                  UNSTORABLE_TRIES, reason, loggable_payload(payload))
        if self._set_aside is not None:
            try:
                await self._set_aside(self.workspace, payload, reason)
            except Exception:
                log.exception("could not tell the room about the Slack event set aside")
        return True


class _SocketModeClient(SocketModeClient):
    """slack-sdk's Socket Mode client, parsing what Slack sends with orjson
    (:mod:`bridge.json_codec`) instead of the standard library, which took a visible share
    of a Slack message's CPU (an envelope with the message's blocks is a few kilobytes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The listeners' tasks, held until done (the event loop keeps only weak references).
        self._listening: set[asyncio.Task[None]] = set()

    async def process_message(self) -> None:
        # AsyncBaseSocketModeClient.process_message (tests/test_workarounds.py notices when
        # it changes), with json_codec.loads: the same dict, or the same ValueError.
        raw_message = await self.message_queue.get()
        if raw_message is not None:
            message: dict[str, Any] = {}
            if raw_message.startswith("{"):
                message = json_codec.loads(raw_message)
            task = asyncio.ensure_future(self.run_message_listeners(message, raw_message))
            self._listening.add(task)
            task.add_done_callback(self._listening.discard)


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
        self.client = _SocketModeClient(
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

        # Not taken (the intake is full): no ack, so Slack sends the envelope again.
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
        try:
            workspace = self._signed_by(body, request.headers)
        except UnicodeDecodeError:
            # slack-sdk's verifier decodes the body to check it, and Slack only sends UTF-8
            # JSON: such a body is not Slack's, whoever signed it (it was a 500 before).
            return web.json_response({"error": "body is not UTF-8"}, status=400)
        if workspace is None:
            log.warning("refused a Slack Events API request with a missing, wrong or stale "
                        "signature from %s", request.remote)
            return web.json_response({"error": "invalid signature"}, status=401)
        try:
            payload = json_codec.loads(body)  # as Socket Mode's frames (_SocketModeClient)
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

        if not self.intakes[workspace.name].submit(payload, ack):
            # The intake is full (the database is slow or away): Slack sends it again.
            return web.json_response({"error": "busy, try again"}, status=503)
        try:
            stored = await asyncio.wait_for(asyncio.shield(done), self.ACK_WITHIN)
        except TimeoutError:
            # Not stored in time: an error makes Slack send it again, and should the event
            # be stored meanwhile after all, the repeat is dropped by its event_id.
            stored = False
        if not stored:
            return web.json_response({"error": "try again"}, status=503)
        return web.Response(status=200)
