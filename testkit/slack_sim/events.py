"""Events: the payloads Slack builds, their event_callback wrapper, and delivery.

Delivery goes the way the team's app is configured:

* Socket Mode (the team has an app token): envelopes over the websockets the app opened
  with apps.connections.open (up to MAX_CONNECTIONS at once, as Slack allows; a further one
  gets a `too_many_websockets` disconnect), each event to one of them (in turn), to be
  acknowledged with its envelope_id. What is not acknowledged within `ack_timeout` is sent
  again with retry_attempt + 1 and the same event_id, to another open connection if there
  is one. An envelope written to a connection that is lost meanwhile comes again only then,
  too, not at once: like Slack, the simulator cannot tell a dead socket from a slow app, so
  with several connections the re-sent event arrives after newer ones sent over the others.
  An envelope not written yet goes to another connection at once. What is emitted while no
  socket is open waits and goes out once one connects.
* Events API (no app token): signed POSTs to the team's events_url, retried up to
  `max_retries` times with X-Slack-Retry-Num / X-Slack-Retry-Reason when the answer is not
  2xx within `http_timeout` seconds, unless the app answers with `X-Slack-No-Retry: 1`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import itertools
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from testkit.slack_sim.state import Channel, JsonDict, Team, dumps, new_id

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

_dumps = dumps


def sign(body: bytes, secret: str, timestamp: int | str) -> str:
    """Slack's request signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:{body}">."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


# -- payload builders -----------------------------------------------------------------------

def message_event(channel: Channel, message: JsonDict) -> JsonDict:
    """A stored message as a `message` event (adds channel, event_ts, channel_type)."""
    event = dict(message)
    event["channel"] = channel.id
    event["event_ts"] = message["ts"]
    event["channel_type"] = channel.channel_type
    return event


def event_context(team: Team, event: JsonDict) -> str:
    """An opaque string like Slack's ("4-eyJldCI6Im1lc3NhZ2UiLC...")."""
    channel = event.get("channel")
    if isinstance(channel, dict):
        channel = channel.get("id")
    elif channel is None:
        channel = (event.get("item") or {}).get("channel", "")
    raw = _dumps({"et": event.get("type"), "tid": team.id, "eid": None, "cid": channel or ""})
    return "4-" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def event_callback(team: Team, event: JsonDict, *, event_id: str, event_time: int) -> JsonDict:
    """The wrapper every Events API / Socket Mode event comes in."""
    return {
        "token": team.verification_token,
        "team_id": team.id,
        "context_team_id": team.id,
        "context_enterprise_id": None,
        "api_app_id": team.app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": event_time,
        "authorizations": [{
            "enterprise_id": None,
            "team_id": team.id,
            "user_id": team.bot_user_id,
            "is_bot": True,
            "is_enterprise_install": False,
        }],
        "is_ext_shared_channel": False,
        "event_context": event_context(team, event),
        # Deprecated by Slack but still sent (truncated to one user); the published wrapper
        # schema requires it.
        "authed_users": [team.bot_user_id],
    }


# Slack allows an app this many Socket Mode connections at once.
MAX_CONNECTIONS = 10


def new_event_id() -> str:
    return new_id("Ev", 10)


# -- delivery ------------------------------------------------------------------------------

@dataclass
class Envelope:
    """One event on its way through Socket Mode."""

    seq: int
    event_id: str
    payload_json: str
    attempt: int = 0
    reason: str = ""
    envelope_id: str = ""
    link: SocketLink | None = None
    written: bool = False
    timer: asyncio.TimerHandle | None = None
    ids: list[str] = field(default_factory=list)  # every envelope_id it was sent under

    def text(self) -> str:
        return ('{"envelope_id":"' + self.envelope_id + '","payload":' + self.payload_json
                + ',"type":"events_api","accepts_response_payload":false,"retry_attempt":'
                + str(self.attempt) + ',"retry_reason":"' + self.reason + '"}')


@dataclass
class HttpItem:
    seq: int
    event_id: str
    body: bytes
    attempt: int = 0
    reason: str = ""


@dataclass
class _Control:
    text: str
    done: asyncio.Future[None]


class SocketLink:
    """One open Socket Mode websocket."""

    _numbers = itertools.count(1)

    def __init__(self, ws: web.WebSocketResponse, team: Team) -> None:
        self.ws = ws
        self.team = team
        self.number = next(self._numbers)
        self.host = f"applink-sim-{self.number}"
        self.out: asyncio.Queue[Envelope | _Control | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None

    def control(self, message: JsonDict) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.out.put_nowait(_Control(_dumps(message), done))
        return done


@dataclass
class Delivered:
    """An event the app accepted (acked, or answered 2xx)."""

    event_id: str
    payload_json: str
    attempt: int

    @functools.cached_property
    def payload(self) -> JsonDict:
        result: JsonDict = json.loads(self.payload_json)
        return result


class TeamDelivery:
    """Delivery state of one team."""

    def __init__(self, team: Team) -> None:
        self.team = team
        self.links: list[SocketLink] = []
        self.queue: deque[Envelope] = deque()       # waiting for a socket
        self.pending: dict[str, Envelope] = {}       # sent, not acked: envelope_id -> envelope
        self.http_queue: deque[HttpItem] = deque()
        self.http_wake = asyncio.Event()
        self.http_workers: list[asyncio.Task[None]] = []
        self.emitted: list[str] = []                 # payload JSON, in order
        self.emitted_parsed: list[JsonDict] = []     # the same, parsed as far as asked for
        self.delivered: list[Delivered] = []
        self.dropped: list[Delivered] = []
        # (event_id, retry number, HTTP status, failure reason) of every Events API POST
        self.http_attempts: list[tuple[str, int, int | None, str]] = []
        self.rr = 0


class Dispatcher:
    """Sends events to apps, over Socket Mode or the Events API."""

    def __init__(self, *, ack_timeout: float = 3.0, max_retries: int = 3,
                 http_timeout: float = 3.0, retry_delay: float = 0.5,
                 http_concurrency: int = 1) -> None:
        self.ack_timeout = ack_timeout
        self.max_retries = max_retries
        self.http_timeout = http_timeout
        self.retry_delay = retry_delay
        self.http_concurrency = http_concurrency
        self.online = True
        self.teams: dict[str, TeamDelivery] = {}
        self._seq = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.changed = asyncio.Event()  # set whenever something was delivered or acked

    # -- lifecycle ------------------------------------------------------------------------
    def add_team(self, team: Team) -> TeamDelivery:
        delivery = TeamDelivery(team)
        self.teams[team.id] = delivery
        team.on_events_url_change.append(lambda _team: delivery.http_wake.set())
        return delivery

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for delivery in self.teams.values():
            if delivery.http_queue:
                self._ensure_http_workers(delivery)
            delivery.http_wake.set()

    async def stop(self) -> None:
        for delivery in self.teams.values():
            for link in list(delivery.links):
                await self.close_link(link, code=aiohttp.WSCloseCode.GOING_AWAY)
            for task in delivery.http_workers:
                task.cancel()
            for env in delivery.pending.values():
                if env.timer:
                    env.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        workers = [t for d in self.teams.values() for t in d.http_workers]
        await asyncio.gather(*self._tasks, *workers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def set_online(self, online: bool) -> None:
        self.online = online
        if online:
            for delivery in self.teams.values():
                delivery.http_wake.set()
        else:
            for delivery in self.teams.values():
                for link in list(delivery.links):
                    self._spawn(self.close_link(link, code=aiohttp.WSCloseCode.TRY_AGAIN_LATER))

    # -- emitting -------------------------------------------------------------------------
    def emit(self, team: Team, event: JsonDict, *, channel: Channel | None = None,
             visible: bool | None = None) -> str | None:
        """Queue an event for the team's app. Returns the event_id, or None when the app
        would not get it (not subscribed, or its bot is not in the channel)."""
        if team.event_types is not None and event["type"] not in team.event_types:
            return None
        if visible is None:
            visible = channel is None or team.bot_user_id in channel.members
        if not visible:
            return None
        event_id = new_event_id()
        payload = event_callback(team, event, event_id=event_id, event_time=int(time.time()))
        payload_json = _dumps(payload)
        delivery = self.teams[team.id]
        delivery.emitted.append(payload_json)
        seq = next(self._seq)
        if team.socket_mode:
            env = Envelope(seq, event_id, payload_json)
            if delivery.links and self.online:
                self._send(delivery, env)
            else:
                delivery.queue.append(env)
        else:
            self._ensure_http_workers(delivery)
            delivery.http_queue.append(HttpItem(seq, event_id, payload_json.encode()))
            delivery.http_wake.set()
        return event_id

    # -- socket mode ----------------------------------------------------------------------
    def attach(self, team: Team, ws: web.WebSocketResponse) -> SocketLink | None:
        """A new websocket of the team's app; None (and the socket told, then closed) when
        the app has MAX_CONNECTIONS open already."""
        delivery = self.teams[team.id]
        if len(delivery.links) >= MAX_CONNECTIONS:
            self._spawn(self._refuse(team, ws))
            return None
        link = SocketLink(ws, team)
        delivery.links.append(link)
        link.writer = asyncio.ensure_future(self._write(delivery, link))
        link.control({
            "type": "hello",
            "num_connections": len(delivery.links),
            "debug_info": {"host": link.host, "build_number": 1,
                           "approximate_connection_time": 18060},
            "connection_info": {"app_id": team.app_id},
        })
        self._flush(delivery)
        return link

    async def _refuse(self, team: Team, ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await ws.send_str(_dumps({"type": "disconnect", "reason": "too_many_websockets",
                                      "debug_info": {"host": "applink-sim-refused"}}))
            await asyncio.wait_for(ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION), 2)

    def _flush(self, delivery: TeamDelivery) -> None:
        while delivery.queue and delivery.links and self.online:
            self._send(delivery, delivery.queue.popleft())

    def _send(self, delivery: TeamDelivery, env: Envelope,
              avoid: SocketLink | None = None) -> None:
        links = [link for link in delivery.links if link is not avoid] or delivery.links
        link = links[delivery.rr % len(links)]
        delivery.rr += 1
        env.envelope_id = str(uuid.uuid4())
        env.ids.append(env.envelope_id)
        env.link = link
        env.written = False
        delivery.pending[env.envelope_id] = env
        link.out.put_nowait(env)

    async def _write(self, delivery: TeamDelivery, link: SocketLink) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await link.out.get()
                if item is None:
                    return
                if isinstance(item, _Control):
                    try:
                        await link.ws.send_str(item.text)
                    finally:
                        if not item.done.done():
                            item.done.set_result(None)
                    continue
                envelope_id = item.envelope_id
                if item.link is not link or delivery.pending.get(envelope_id) is not item:
                    continue  # re-routed meanwhile
                await link.ws.send_str(item.text())
                if item.link is link and delivery.pending.get(envelope_id) is item:
                    item.written = True
                    item.timer = loop.call_later(self.ack_timeout, self._ack_timeout, delivery,
                                                 item, envelope_id)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.debug("socket %s: write failed: %s", link.host, exc)
            self._spawn(self.close_link(link))
        finally:
            while not link.out.empty():
                item = link.out.get_nowait()
                if isinstance(item, _Control) and not item.done.done():
                    item.done.set_result(None)

    def ack(self, team: Team, envelope_id: str) -> bool:
        delivery = self.teams[team.id]
        env = delivery.pending.pop(envelope_id, None)
        if env is None:
            # A late ack for an earlier attempt of an envelope sent again since.
            for candidate in list(delivery.pending.values()):
                if envelope_id in candidate.ids:
                    env = delivery.pending.pop(candidate.envelope_id)
                    break
            if env is None:
                return False
        if env.timer is not None:
            env.timer.cancel()
        delivery.delivered.append(Delivered(env.event_id, env.payload_json, env.attempt))
        self.changed.set()
        return True

    def _ack_timeout(self, delivery: TeamDelivery, env: Envelope, envelope_id: str) -> None:
        if env.envelope_id != envelope_id or delivery.pending.get(envelope_id) is not env:
            return
        del delivery.pending[env.envelope_id]
        env.timer = None
        if env.attempt >= self.max_retries:
            delivery.dropped.append(Delivered(env.event_id, env.payload_json, env.attempt))
            self.changed.set()
            return
        env.attempt += 1
        env.reason = "timeout"
        if delivery.links and self.online:
            self._send(delivery, env, avoid=env.link)
        else:
            delivery.queue.appendleft(env)

    def detach(self, link: SocketLink) -> None:
        """The websocket is gone: what it carried without an ack goes out again."""
        delivery = self.teams[link.team.id]
        if link not in delivery.links:
            return
        delivery.links.remove(link)
        link.closed.set()
        link.out.put_nowait(None)
        # Written ones wait for their ack timeout (then _ack_timeout sends them again, to
        # another connection); those that never left go elsewhere now.
        orphans = sorted((env for env in delivery.pending.values()
                          if env.link is link and not env.written), key=lambda env: env.seq)
        for env in orphans:
            del delivery.pending[env.envelope_id]
            env.link = None
        delivery.queue.extendleft(reversed(orphans))
        self._flush(delivery)
        self.changed.set()

    async def close_link(self, link: SocketLink, *, code: int = aiohttp.WSCloseCode.OK,
                         message: bytes = b"") -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.ws.close(code=code, message=message), timeout=2)
        self.detach(link)

    async def disconnect(self, team: Team, reason: str, *, grace: float = 1.0) -> None:
        """Send {"type": "disconnect"} on every socket of the team, then close them (after the
        app closed them itself, or after `grace` seconds)."""
        delivery = self.teams[team.id]
        links = list(delivery.links)
        for link in links:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    link.control({"type": "disconnect", "reason": reason,
                                  "debug_info": {"host": link.host}}), timeout=2)
        for link in links:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(link.closed.wait(), timeout=grace)
            if not link.closed.is_set():
                await self.close_link(link)

    # -- events api -----------------------------------------------------------------------
    def _ensure_http_workers(self, delivery: TeamDelivery) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # set up outside a loop: start() makes the workers
        while len(delivery.http_workers) < self.http_concurrency:
            delivery.http_workers.append(asyncio.ensure_future(self._http_worker(delivery)))

    async def _http_worker(self, delivery: TeamDelivery) -> None:
        while True:
            if not (delivery.http_queue and self.online and delivery.team.events_url
                    and self._session is not None):
                delivery.http_wake.clear()
                await delivery.http_wake.wait()
                continue
            item = delivery.http_queue.popleft()
            await self._post_event(delivery, item)

    async def _post_event(self, delivery: TeamDelivery, item: HttpItem) -> None:
        team = delivery.team
        url = team.events_url
        assert url is not None and self._session is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": sign(item.body, team.signing_secret, timestamp),
        }
        if item.attempt:
            headers["X-Slack-Retry-Num"] = str(item.attempt)
            headers["X-Slack-Retry-Reason"] = item.reason
        status: int | None = None
        no_retry = False
        try:
            async with self._session.post(
                    url, data=item.body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.http_timeout),
                    allow_redirects=False) as response:
                await response.read()
                status = response.status
                no_retry = response.headers.get("X-Slack-No-Retry") == "1"
            reason = "" if 200 <= status < 300 else "http_error"
        except TimeoutError:
            reason = "http_timeout"
        except aiohttp.ClientConnectorError:
            reason = "connection_failed"
        except aiohttp.ClientError:
            reason = "unknown_error"
        delivery.http_attempts.append((item.event_id, item.attempt, status, reason))
        if not reason:
            delivery.delivered.append(Delivered(item.event_id, item.body.decode(), item.attempt))
            self.changed.set()
            return
        if no_retry or item.attempt >= self.max_retries:
            delivery.dropped.append(Delivered(item.event_id, item.body.decode(), item.attempt))
            self.changed.set()
            return
        retry = HttpItem(item.seq, item.event_id, item.body, item.attempt + 1, reason)

        def requeue() -> None:
            delivery.http_queue.append(retry)
            delivery.http_wake.set()

        asyncio.get_running_loop().call_later(self.retry_delay, requeue)

    async def post_raw(self, url: str, body: bytes,
                       headers: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        async with self._session.post(url, data=body, headers=dict(headers),
                                      timeout=aiohttp.ClientTimeout(total=self.http_timeout),
                                      allow_redirects=False) as response:
            return response.status, dict(response.headers), await response.read()
