"""The Slack connector: linked channels mirrored into Matrix rooms, both ways.

Inbound, each workspace's events arrive over Socket Mode or the Events API
(:mod:`bridge.slack.receive`), are stored in the outbox under one lane per channel and
acknowledged; the outbox then hands them back here, in order, to become Matrix events
(:mod:`bridge.slack.inbound`). Outbound, relayed Matrix events become Web API calls
(:mod:`bridge.slack.outbound`). After every (re)connection each linked channel is read from
its last bridged message on, so nothing sent while the bridge was away is missed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from bridge import metrics
from bridge.admin.audit import Actor
from bridge.config import Config
from bridge.core.cache import BoundedCache
from bridge.core.connector import Connector, Health, LinkTarget, PersonRef, SubCommand
from bridge.core.errors import (
    CommandError,
    PermanentError,
    TemporaryError,
    UnavailableError,
    UsageError,
)
from bridge.db import leases as db_leases
from bridge.db import queues, store
from bridge.db.leases import ProcessRow
from bridge.db.queues import Delivery, NewDelivery
from bridge.db.store import LinkInfo
from bridge.slack import actions, catch_up, person_code
from bridge.slack import api as slack_api
from bridge.slack import store as slack_store
from bridge.slack.config import SlackConfig
from bridge.slack.ids import NETWORK, message_key, space_of
from bridge.slack.inbound import POSTING_SUBTYPES, SlackToMatrix
from bridge.slack.outbound import (
    MatrixToSlack,
    avatar_key,
    avatar_signature,
    avatar_signature_valid,
)
from bridge.slack.receive import (
    EventsApiServer,
    Intake,
    SocketModeReceiver,
    can_never_be_stored,
    loggable_payload,
)
from bridge.slack.workspace import Workspace

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from bridge.admin.api.routes import Route
    from bridge.core.hub import Hub

log = logging.getLogger("bridge.slack")
# A failed catch-up is tried again after this many seconds, doubling up to the maximum.
CATCH_UP_RETRY_FIRST = 1.0
CATCH_UP_RETRY_MAX = 60.0

# A Slack conversation ID as Slack writes it (public C…, private G…); anything else typed
# after `link slack` is taken for a channel name.
CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,}")
# A Slack user ID: U… (W… for Enterprise Grid users).
USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
# Slack channel names: lower case letters, digits, '-', '_' and some non-ASCII letters.
CHANNEL_NAME = re.compile(r"[^\s#:,.<>@]{1,80}")
# Bounds of the connector's caches (entries; seconds an entry is trusted).
CHANNEL_CACHE_ITEMS, CHANNEL_CACHE_SECONDS = 5_000, 3600.0
MEMBER_PROFILE_ITEMS, MEMBER_PROFILE_SECONDS = 20_000, 3600.0
# Avatars are whole images: few of them (Slack fetches each icon_url once and keeps it).
AVATAR_CACHE_ITEMS, AVATAR_CACHE_SECONDS = 256, 24 * 3600.0
# How far back catch-up looks for thread replies to older messages.
THREAD_LOOKBACK_SECONDS = 24 * 3600
CATCH_UP_MAX_MESSAGES = 1000
# Threads (the most recently active of those the room has replies of) whose replies
# catch-up reads to compare them for edits, deletions and reactions, per channel, besides
# every thread with new replies: each is one conversations.replies call.
CATCH_UP_MAX_THREADS = 20


@dataclass(slots=True)
class Profile:
    name: str
    avatar_url: str | None


class UserDirectory:
    """Slack users by ID: looked up with users.info, kept current by user_change, and looked
    up again once an entry is older than ``refresh_after_seconds``, since a user_change
    sent while the bridge was away is gone for good. If Slack cannot answer right then, the
    older entry serves until it is ``max_age_seconds`` old."""

    def __init__(self, max_items: int = 20_000, refresh_after_seconds: float = 3600.0,
                 max_age_seconds: float = 7 * 24 * 3600.0) -> None:
        self.refresh_after_seconds = refresh_after_seconds
        self._profiles: BoundedCache[tuple[str, str], tuple[float, Profile]] = BoundedCache(
            max_items, max_age_seconds)

    def __len__(self) -> int:
        return len(self._profiles)

    def remember(self, ws: Workspace, user: dict[str, Any]) -> Profile:
        profile = user.get("profile") or {}
        name = (profile.get("display_name") or profile.get("real_name")
                or user.get("real_name") or user.get("name") or str(user.get("id")))
        avatar = next((profile[k] for k in ("image_512", "image_192", "image_72", "image_48")
                       if profile.get(k)), None)
        entry = Profile(str(name), str(avatar) if avatar else None)
        self._profiles.set((ws.team_id, str(user.get("id"))), (time.monotonic(), entry))
        return entry

    async def get(self, ws: Workspace, user_id: str) -> Profile:
        cached = self._profiles.get((ws.team_id, user_id))
        if cached is not None and time.monotonic() - cached[0] <= self.refresh_after_seconds:
            return cached[1]
        try:
            data = await ws.call("users.info", user=user_id)
        except TemporaryError:
            if cached is not None:
                return cached[1]  # Slack is away: the older entry beats no name at all
            raise
        return self.remember(ws, data.get("user") or {"id": user_id})


class SlackConnector(Connector):
    network = NETWORK
    display_name = "Slack"
    links_people = True
    me_words = "<workspace> <user-id-or-e-mail>"

    def __init__(self, config: Config) -> None:
        settings = config.section(SlackConfig)
        super().__init__(settings.puppet_prefix, config.homeserver.domain)
        self.config = config
        self.settings = settings
        self.workspaces: list[Workspace] = []
        self.users = UserDirectory()
        self.inbound = SlackToMatrix(self)
        self.outbound = MatrixToSlack(self)
        self._hub: Hub | None = None
        self._http: aiohttp.ClientSession | None = None
        self._intakes: dict[str, Intake] = {}
        self._sockets: list[SocketModeReceiver] = []
        self._events_api: EventsApiServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catch_up_tasks: dict[str, asyncio.Task[None]] = {}
        # Caches, each bounded in size and age (a forgotten entry is looked up again).
        self._channels: BoundedCache[tuple[str, str], dict[str, Any]] = BoundedCache(
            CHANNEL_CACHE_ITEMS, CHANNEL_CACHE_SECONDS)
        self._profiles: BoundedCache[tuple[str, str], tuple[str | None, str | None]] = \
            BoundedCache(MEMBER_PROFILE_ITEMS, MEMBER_PROFILE_SECONDS)
        self._avatar_key = avatar_key(config.appservice.as_token)
        self._avatars: BoundedCache[str, tuple[bytes, str]] = BoundedCache(
            AVATAR_CACHE_ITEMS, AVATAR_CACHE_SECONDS)
        # Linked channels Slack archived or deleted ("T…:C…" -> state), as in the database.
        self._channel_states: dict[str, str] = {}

    @property
    def hub(self) -> Hub:
        assert self._hub is not None, "the Slack connector is not started"
        return self._hub

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "the Slack connector is not started"
        return self._http

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, hub: Hub) -> None:
        self._hub = hub
        async with hub.db.sessions() as session:
            self._channel_states = await slack_store.channel_states(session)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120,
                                                                         connect=10))
        self.workspaces = [Workspace(w, self.settings.api_url, self._http,
                                     rate_limits=self.settings.rate_limits)
                           for w in self.settings.workspaces]
        for ws in self.workspaces:
            self._intakes[ws.name] = Intake(ws, self.store_events,
                                            queue_limit=self.settings.intake_queue_limit,
                                            set_aside=self._event_set_aside)
            if hub.heartbeat is not None:
                hub.heartbeat.watermarks.append(self._intakes[ws.name].oldest_unstored)
            self._spawn(self._connect(ws), f"slack-connect-{ws.name}")
        if hub.heartbeat is not None:
            hub.heartbeat.on_peer_dead.append(self._peer_died)
        http_workspaces = [ws for ws in self.workspaces if not ws.socket_mode]
        if http_workspaces:
            await self._seen_by_peers()
            api = self.settings.events_api
            self._events_api = EventsApiServer(api.hostname, api.port, api.path,
                                               http_workspaces, self._intakes)
            await self._events_api.start()

    async def _connect(self, ws: Workspace) -> None:
        """Learn who we are in the workspace (retried while Slack is unreachable), then
        start receiving."""
        delay = 1.0
        while True:
            try:
                await ws.identify()
                break
            except TemporaryError as exc:
                ws.last_error = str(exc)
                log.warning("Slack workspace %s not reachable (%s); retrying in %.0fs",
                            ws.name, exc, delay)
            except PermanentError as exc:
                ws.last_error = f"{exc} {exc.hint or ''}".strip()
                log.error("Slack workspace %s refused the bridge: %s", ws.name, ws.last_error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60)
        log.info("Slack workspace %s is team %s (%s); app user %s", ws.name, ws.team_id,
                 ws.team_name, ws.bot_user_id)
        self._intakes[ws.name].start()
        await self._seen_by_peers()
        if ws.socket_mode:
            receiver = SocketModeReceiver(ws, self.settings.api_url, self._intakes[ws.name],
                                          on_connected=lambda: self.schedule_catch_up(ws))
            self._sockets.append(receiver)
            await receiver.start()
        else:
            self.schedule_catch_up(ws)

    async def _seen_by_peers(self) -> None:
        """Receive nothing before every other live process knows of this one: from then
        on each of them holds its events for this one's intake (bridge/core/heartbeat.py)."""
        heartbeat = self.hub.heartbeat
        if heartbeat is not None and heartbeat.peers:
            await heartbeat.seen_by_peers(timeout=3 * heartbeat.interval)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        for receiver in self._sockets:
            await receiver.stop()
        if self._events_api is not None:
            await self._events_api.stop()
        for task in [*self._tasks, *self._catch_up_tasks.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._catch_up_tasks.values(),
                             return_exceptions=True)
        for intake in self._intakes.values():
            await intake.stop()
        if self._http is not None:
            await self._http.close()

    def health(self) -> Health:
        problems = [f"{ws.name}: {ws.last_error}" for ws in self.workspaces if ws.last_error]
        problems += [f"{ws.name}: {ws.access_lost}" for ws in self.workspaces
                     if ws.access_lost]
        up = {ws.name: ws.connected and all(r.is_open for r in self._sockets
                                            if r.workspace is ws)
              for ws in self.workspaces}
        states = [f"{ws.name} ({ws.team_id or '?'}): "
                  f"{'connected' if up[ws.name] else 'not connected'}"
                  for ws in self.workspaces]
        for ws in self.workspaces:
            intake = self._intakes.get(ws.name)
            if intake is not None and intake.set_aside_count:
                states.append(f"{ws.name}: {intake.set_aside_count} event(s) set aside "
                              "(they cannot be stored; see the log)")
        # A linked channel Slack archived or deleted: said, but the connector is well.
        states += [f"Slack channel {remote_id} is {state}; nothing can be posted there"
                   for remote_id, state in sorted(self._channel_states.items())]
        ok = not problems and all(up.values())
        return Health(ok, "; ".join(states + problems) or "no workspaces")

    # --- workspaces, channels, people ----------------------------------------------------

    def workspace_named(self, name: str | None) -> Workspace:
        ready = [ws for ws in self.workspaces if ws.team_id]
        if name is None:
            if len(self.workspaces) == 1 and ready:
                return ready[0]
            if not ready:
                raise CommandError("Slack is not connected yet; try again in a moment "
                                   f"(`{self.hub.prefix} status` shows why).")
            raise CommandError("Several Slack workspaces are configured; name one: "
                               + ", ".join(f"`{ws.name}`" for ws in self.workspaces))
        for ws in self.workspaces:
            if name in (ws.name, ws.team_id):
                if not ws.team_id:
                    raise CommandError(f"Slack workspace `{ws.name}` is not connected yet.")
                return ws
        raise CommandError(f"No Slack workspace `{name}`; configured: "
                           + ", ".join(f"`{ws.name}`" for ws in self.workspaces))

    def workspace_of_team(self, team_id: str) -> Workspace | None:
        return next((ws for ws in self.workspaces if ws.team_id == team_id), None)

    def workspace_for_link(self, link: LinkInfo) -> Workspace:
        team = str(link.settings.get("team") or link.remote_id.split(":", 1)[0])
        ws = self.workspace_of_team(team)
        if ws is None:
            raise TemporaryError(f"Slack workspace {team} is not connected")
        return ws

    async def channel_info(self, ws: Workspace, channel: str,
                           fresh: bool = False) -> dict[str, Any]:
        key = (ws.team_id, channel)
        cached = None if fresh else self._channels.get(key)
        if cached is None:
            data = await ws.read("conversations.info", channel=channel)
            cached = data.get("channel") or {}
            self._channels.set(key, cached)
        return cached

    async def channel_name(self, ws: Workspace, channel: str) -> str | None:
        try:
            info = await self.channel_info(ws, channel)
        except (PermanentError, TemporaryError):
            return None
        name = info.get("name")
        return str(name) if name else None

    def linked_matrix_user(self, ws: Workspace, slack_user_id: str) -> str | None:
        """The Matrix account the Slack user is linked to (identity links, as last read by
        ``await hub.people.load()``), so a mention of them follows the person."""
        puppet = self.puppet_user_id(f"{ws.team_id}_{slack_user_id}")
        return self.hub.people.current.account_of(puppet)

    def slack_user_of(self, ws: Workspace, matrix_user_id: str) -> str | None:
        """The Slack user a puppet of this workspace stands for, or the one of this
        workspace a person's Matrix account is linked to (as last read by
        ``await hub.people.load()``)."""
        prefix = f"{ws.team_id}_"
        for identity in self.hub.people.current.identities(matrix_user_id, NETWORK):
            if identity.remote_id.startswith(prefix):
                return identity.remote_id[len(prefix):]
        localpart, _, server = matrix_user_id[1:].partition(":")
        prefix = f"{self.puppet_prefix}{ws.team_id.lower()}_"
        if server != self.homeserver_domain or not localpart.startswith(prefix):
            return None
        return localpart[len(prefix):].upper()

    async def linked_channel_ids(self, ws: Workspace) -> list[tuple[str, str]]:
        """(Matrix room, Slack channel) of the workspace's linked channels (a room may have
        several)."""
        async with self.hub.db.sessions() as session:
            linked = await slack_store.linked_channels(session)
        prefix = f"{ws.team_id}:"
        return [(room, remote.removeprefix(prefix)) for remote, room in linked.items()
                if remote.startswith(prefix)]

    async def may_mention_room(self, room_id: str, sender: str) -> bool:
        return await self.hub.may_mention_room(room_id, sender)

    async def profile(self, room_id: str, user_id: str) -> tuple[str | None, str | None]:
        key = (room_id, user_id)
        cached = self._profiles.get(key)
        if cached is None:
            cached = await self.hub.member_profile(room_id, user_id)
            self._profiles.set(key, cached)
        return cached

    def forget_profile(self, room_id: str, user_id: str) -> None:
        self._profiles.pop((room_id, user_id), None)

    async def download_private(self, ws: Workspace, url: str) -> bytes:
        """A file of a Slack message: ``url_private`` needs the bot token."""
        try:
            async with self.http.get(
                    url, headers={"Authorization": f"Bearer {ws.settings.bot_token}"}) as resp:
                if resp.status in (429,) or resp.status >= 500:
                    raise TemporaryError(f"Slack file download answered {resp.status}")
                if resp.status != 200:
                    raise PermanentError(f"Slack refused the file download ({resp.status})")
                return await resp.read()
        except aiohttp.ClientError as exc:
            raise TemporaryError(f"Slack file download failed: {exc!r}") from exc

    # --- avatars for Slack's icon_url ----------------------------------------------------

    def avatar_url(self, mxc: str | None) -> str | None:
        """A URL Slack can fetch the avatar from: the bridge serves it (homeserver media
        need authentication), so only with ``bridge.public_url``."""
        base = self.config.bridge.public_url
        if not base or not mxc or not mxc.startswith("mxc://"):
            return None
        server_media = mxc.removeprefix("mxc://")
        return (f"{base}/_bridge/slack/avatar/{server_media}"
                f"?sig={avatar_signature(self._avatar_key, mxc)}")

    def http_routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/_bridge/slack/avatar/{server}/{media}", self._serve_avatar)]

    async def _serve_avatar(self, request: web.Request) -> web.Response:
        mxc = f"mxc://{request.match_info['server']}/{request.match_info['media']}"
        if not avatar_signature_valid(self._avatar_key, mxc, request.query.get("sig", "")):
            return web.Response(status=404, text="No such avatar.")
        cached = self._avatars.get(mxc)
        if cached is None:
            try:
                data = await self.hub.download_media(mxc)
            except Exception as exc:
                log.info("could not read avatar %s: %r", mxc, exc)
                return web.Response(status=502, text="The avatar could not be read.")
            cached = (data, _image_type(data))
            self._avatars.set(mxc, cached)
        data, content_type = cached
        return web.Response(body=data, content_type=content_type,
                            headers={"Cache-Control": "public, max-age=86400"})

    # --- inbound: store, then acknowledge ------------------------------------------------

    async def store_events(self, ws: Workspace, payloads: list[dict[str, Any]]) -> None:
        """Store a batch of Slack events in one transaction, each once (by its natural key),
        in a lane per channel. Called by the intake before it acknowledges them."""
        items: list[tuple[str, NewDelivery]] = []
        # Echoes of what we posted for Matrix are dropped before anything is read: a busy
        # Matrix -> Slack direction sends one back per post.
        wanted = [(p, e) for p in payloads
                  if isinstance(e := p.get("event"), dict) and not self._is_echo(ws, e)]
        for payload, event in wanted:
            if event.get("type") in ("app_uninstalled", "tokens_revoked"):
                await self._access_lost(ws, payload, event)
        spaces = {space_of(ws.team_id, c) for c in
                  (self._channel_of(event) for _, event in wanted) if c}
        if not spaces and not any(e.get("type") == "user_change" for _, e in wanted):
            return
        async with self.hub.db.reading() as connection:
            linked = await slack_store.linked_channels(connection, spaces) if spaces else {}
        for payload, event in wanted:
            channel = self._channel_of(event)
            room_id = linked.get(space_of(ws.team_id, channel)) if channel else None
            if event.get("type") != "user_change" and room_id is None:
                continue  # a channel that is not linked: nothing to do
            key = self._event_key(ws, event, str(payload.get("event_id") or ""))
            if key is None:
                continue
            items.append((key, NewDelivery(
                network=NETWORK, room_id=room_id or "", kind="inbound",
                payload={"team": ws.team_id, "event_id": payload.get("event_id"),
                         "event": event},
                lane=f"slack-in:{ws.team_id}:{channel or 'users'}")))
        if not items:
            return

        heartbeat = self.hub.heartbeat
        held = False

        async def write(session: AsyncSession) -> None:
            unseen = await slack_store.claim_event_keys(session, [key for key, _ in items])
            fresh = []
            for key, item in items:
                if key in unseen:
                    unseen.discard(key)  # a repeat within the batch is a repeat all the same
                    fresh.append(item)
            if held:
                # Other processes receive this workspace's events too: into the channel's
                # lane in ts order, once none of them can still be storing an earlier one.
                await db_leases.hold(session, [(item, _sort_key(item.payload))
                                               for item in fresh], time.time())
            else:
                await queues.enqueue(session, fresh)

        if heartbeat is None:
            await self.hub.enqueue([], also=write)
        else:
            async with heartbeat.intake_lock:  # (holding changes only under it)
                held = heartbeat.holding
                await self.hub.enqueue([], also=write)
        metrics.EVENTS.labels(network=NETWORK, direction="in").inc(len(items))

    async def channel_state_changed(self, ws: Workspace, room_id: str, channel: str,
                                    state: str | None, by: Any) -> str | None:
        """Slack archived, unarchived or deleted a linked channel: recorded with the link
        (for `status`) and told to the room, in one transaction."""
        if not room_id or not channel:
            return None
        remote_id = space_of(ws.team_id, channel)
        name = await self.channel_name(ws, channel) if state != "deleted" else None
        label = f"#{name}" if name else channel
        who = ""
        if isinstance(by, str) and by:
            try:
                who = f" by {(await self.users.get(ws, by)).name}"
            except (PermanentError, TemporaryError):
                who = ""
        if state == "archived":
            text = (f"The Slack channel {label} was archived{who}. Messages from this room "
                    "cannot reach it until it is unarchived in Slack.")
        elif state == "deleted":
            text = (f"The Slack channel {label} was deleted{who}. Messages from this room no "
                    f"longer reach Slack; `{self.hub.prefix} unlink slack` removes the link.")
        else:
            text = (f"The Slack channel {label} was unarchived{who}; messages are bridged "
                    "again.")
        changed = False

        async def record(session: AsyncSession) -> None:
            nonlocal changed
            changed = await slack_store.set_channel_state(session, remote_id, state)
            if changed:
                await queues.enqueue(session, [self.hub.notice(room_id, text)])

        await self.hub.enqueue([], also=record)
        if state is None:
            self._channel_states.pop(remote_id, None)
        else:
            self._channel_states[remote_id] = state
        self._channels.pop((ws.team_id, channel), None)
        return f"channel {state or 'unarchived'}" if changed else None

    async def _access_lost(self, ws: Workspace, payload: dict[str, Any],
                           event: dict[str, Any]) -> None:
        """The app was uninstalled or its bot token revoked: nothing will work in the
        workspace any more. Shown in `status` and told once to every linked room."""
        if event.get("type") == "tokens_revoked":
            revoked = (event.get("tokens") or {}).get("bot") or []
            if ws.bot_user_id and ws.bot_user_id not in revoked:
                return  # a user token the bridge does not use
            what = "the Slack app's bot token was revoked"
        else:
            what = "the Slack app was uninstalled"
        if ws.access_lost is not None:
            return  # Slack sends tokens_revoked along with app_uninstalled: told already
        ws.access_lost = (f"{what} in workspace {ws.name}; reinstall the app and put its new "
                          "bot_token into slack.workspaces")
        log.error("%s", ws.access_lost)
        rooms = sorted({room for room, _channel in await self.linked_channel_ids(ws)})
        key = f"access-lost:{ws.team_id}:{payload.get('event_id') or event.get('type')}"
        text = (f"⚠️ In Slack workspace {ws.name}, {what}: nothing is bridged between this "
                "room and Slack until an admin reinstalls the app (create it from "
                "slack-app-manifest.yaml) and puts its new bot token into the bridge's config.")

        async def tell(session: AsyncSession) -> None:
            if await store.claim_inbound_key(session, NETWORK, key):
                await queues.enqueue(session, [self.hub.notice(room, text) for room in rooms])

        await self.hub.enqueue([], also=tell)

    async def _event_set_aside(self, ws: Workspace, payload: dict[str, Any],
                               reason: str) -> None:
        """The intake gave up on an event the database will never take: the linked room is
        told (the payload itself is in the bridge's log)."""
        event = payload.get("event") if isinstance(payload.get("event"), dict) else {}
        assert isinstance(event, dict)
        channel = self._channel_of(event)
        if not channel:
            return
        async with self.hub.db.sessions() as session:
            linked = await slack_store.linked_channels(session, {space_of(ws.team_id, channel)})
        room_id = linked.get(space_of(ws.team_id, channel))
        if room_id is None:
            return
        what = event.get("subtype") or event.get("type") or "event"
        when = f" of {event['ts']}" if isinstance(event.get("ts"), str) else ""
        notice = self.hub.notice(
            room_id,
            f"A Slack {what}{when} in this channel could not be bridged: its content cannot "
            f"be stored ({reason}). It was set aside; the bridge's log has it in full "
            f"(Slack event {payload.get('event_id') or '?'}).")
        key = self._event_key(ws, event, str(payload.get("event_id") or ""))

        async def tell_once(session: AsyncSession) -> None:
            # Slack's retries and each catch-up that reads it again are told only once.
            if key is None or await store.claim_inbound_key(session, NETWORK,
                                                            f"set-aside:{key}"):
                await queues.enqueue(session, [notice])

        await self.hub.enqueue([], also=tell_once)

    @staticmethod
    def _is_echo(ws: Workspace, event: dict[str, Any]) -> bool:
        """Slack telling us about what we did for Matrix: not worth a database write."""
        if event.get("type") == "message":
            subtype = event.get("subtype")
            if subtype == "message_changed":
                return ws.is_own(event.get("message") or {})
            if subtype == "message_deleted":
                return ws.is_own(event.get("previous_message") or {})
            return subtype in POSTING_SUBTYPES and ws.is_own(event)
        if event.get("type") in ("reaction_added", "reaction_removed",
                                 "member_joined_channel", "member_left_channel"):
            return bool(ws.bot_user_id) and event.get("user") == ws.bot_user_id
        return False

    @staticmethod
    def _channel_of(event: dict[str, Any]) -> str | None:
        channel = event.get("channel")
        if isinstance(channel, dict):
            channel = channel.get("id")
        if not channel and isinstance(event.get("item"), dict):
            channel = event["item"].get("channel")
        return str(channel) if channel else None

    @staticmethod
    def _event_key(ws: Workspace, event: dict[str, Any], event_id: str) -> str | None:
        """A new message is known by channel and ts, an edit by the message's ts and the
        edit's, a deletion by the deleted ts (live and catch-up alike); anything else by
        Slack's event_id, which its retries keep."""
        channel = SlackConnector._channel_of(event)
        subtype = event.get("subtype")
        if event.get("type") == "message" and channel:
            if subtype in POSTING_SUBTYPES and event.get("ts"):
                return message_key(ws.team_id, channel, str(event["ts"]))
            message = event.get("message")
            edited = message.get("edited") if isinstance(message, dict) else None
            if subtype == "message_changed" and isinstance(message, dict) and \
                    isinstance(edited, dict) and edited.get("ts") and message.get("ts"):
                return catch_up.edit_key(ws.team_id, channel, str(message["ts"]),
                                         str(edited["ts"]))
            if subtype == "message_deleted" and event.get("deleted_ts"):
                return catch_up.deletion_key(ws.team_id, channel, str(event["deleted_ts"]))
        return event_id or None

    # --- catch-up and backfill -----------------------------------------------------------

    def schedule_catch_up(self, ws: Workspace) -> None:
        """After a (re)connection: read every linked channel from where it was left."""
        running = self._catch_up_tasks.get(ws.name)
        if running is not None and not running.done():
            running.cancel()
        self._catch_up_tasks[ws.name] = asyncio.create_task(
            self._catch_up(ws), name=f"slack-catch-up-{ws.name}")

    async def _catch_up(self, ws: Workspace, *, raise_errors: bool = False) -> None:
        # Tried until it succeeds (or a new connection starts another): what Slack gave up
        # re-sending while the bridge could not store it (the database restarting, say) is
        # only in the channels' history now, and the connection may stay up for days.
        delay = CATCH_UP_RETRY_FIRST
        while True:
            try:
                heartbeat = self.hub.heartbeat
                if heartbeat is None:
                    await self._catch_up_now(ws)
                    return
                # One process at a time reads a workspace's history (several processes all
                # reconnect after a Slack outage); the others wait their turn, then read
                # only what is still missing.
                async with heartbeat.leases.exclusive(f"slack-catch-up:{ws.team_id}",
                                                      wait=True):
                    await self._catch_up_now(ws)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if raise_errors:
                    raise
                log.exception("catch-up of Slack workspace %s failed; trying again in %.0f s",
                              ws.name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CATCH_UP_RETRY_MAX)

    async def _catch_up_now(self, ws: Workspace) -> None:
        channels = await self.linked_channel_ids(ws)
        for room_id, channel in channels:
            async with self.hub.db.sessions() as session:
                last = await slack_store.cursor(session, ws.team_id, channel)
            await self._check_archived(ws, room_id, channel)
            await self._read_since(ws, room_id, channel, last)

    async def _peer_died(self, process: ProcessRow) -> None:
        """Another bridge process died: what its sockets received and never stored, Slack
        sends again only seconds later (after newer events). Read that gap from history now,
        while this workspace's events are still held (bridge/core/heartbeat.py), so they go
        out in ts order; Slack's re-sends are then duplicates. An error leaves the dead
        process's row, so the next beat tries again (and events stay held meanwhile)."""
        for ws in self.workspaces:
            if ws.team_id:
                await self._catch_up(ws, raise_errors=True)

    async def _check_archived(self, ws: Workspace, room_id: str, channel: str) -> None:
        """A channel archived or unarchived while the bridge was away: its event is gone,
        conversations.info still tells."""
        try:
            info = await self.channel_info(ws, channel, fresh=True)
        except (PermanentError, TemporaryError) as exc:
            log.info("could not check whether %s is archived: %s", channel, exc)
            return
        known = self._channel_states.get(space_of(ws.team_id, channel))
        if info.get("is_archived") and known != "archived":
            await self.channel_state_changed(ws, room_id, channel, "archived", None)
        elif not info.get("is_archived") and known == "archived":
            await self.channel_state_changed(ws, room_id, channel, None, None)

    async def _read_since(self, ws: Workspace, room_id: str, channel: str,
                          last: str | None) -> None:
        """New messages and thread replies since the cursor, then whatever else changed in
        the window read (edits, deletions, reactions; see :mod:`bridge.slack.catch_up`)."""
        if last is None:
            return  # linked before any message: the backfill set no cursor; nothing to do
        read_at = time.time()
        run_id = f"{read_at:.6f}"
        seconds, _ = slack_store.ts_key(last)
        oldest = str(max(0, seconds - THREAD_LOOKBACK_SECONDS))
        history = await ws.paginate("conversations.history", "messages",
                                    limit=CATCH_UP_MAX_MESSAGES, channel=channel,
                                    oldest=oldest)
        last_key = slack_store.ts_key(last)
        window_oldest = slack_store.ts_key(oldest)
        if len(history) >= CATCH_UP_MAX_MESSAGES:  # cut short: only what was read counts
            window_oldest = min(slack_store.ts_key(str(m.get("ts") or "0")) for m in history)
        mapped = await self._mapped_messages(ws, channel, window_oldest[0] - 60.0)
        # Threads to read: those with new replies, and (the most recently active first, up
        # to a limit) those whose replies the room has, to compare them.
        threads_in_room = {m.thread_ts for m in mapped.values() if m.thread_ts}
        seen: dict[str, dict[str, Any]] = {str(m["ts"]): m for m in history if m.get("ts")}
        missed = {str(m["ts"]): m for m in history
                  if m.get("ts") and slack_store.ts_key(str(m["ts"])) > last_key}
        complete_threads: set[str] = set()
        compared = 0
        roots = sorted((m for m in history if m.get("reply_count") and m.get("ts")),
                       key=lambda m: slack_store.ts_key(str(m.get("latest_reply") or "0")),
                       reverse=True)
        for root in roots:
            root_ts = str(root["ts"])
            latest_reply = str(root.get("latest_reply") or "")
            active = bool(latest_reply) and slack_store.ts_key(latest_reply) > last_key
            compare = root_ts in threads_in_room and compared < CATCH_UP_MAX_THREADS
            if not (active or compare):
                continue
            compared += compare
            replies = await ws.paginate("conversations.replies", "messages",
                                        limit=CATCH_UP_MAX_MESSAGES, channel=channel,
                                        ts=root_ts, oldest=oldest)
            replies = [r for r in replies if r.get("ts") and r.get("ts") != root_ts]
            if len(replies) < CATCH_UP_MAX_MESSAGES - 1:
                complete_threads.add(root_ts)
            for reply in replies:
                seen.setdefault(str(reply["ts"]), reply)
                if slack_store.ts_key(str(reply["ts"])) > last_key:
                    missed.setdefault(str(reply["ts"]), reply)
        new_messages = sorted(missed.values(),
                              key=lambda m: slack_store.ts_key(str(m.get("ts") or "0")))
        changes = catch_up.differences(
            team_id=ws.team_id, channel=channel, bot_user_id=ws.bot_user_id, run_id=run_id,
            seen=seen, mapped=mapped.values(), is_own=ws.is_own, window=catch_up.Window(
                oldest=window_oldest, newest=slack_store.ts_key(run_id),
                complete_threads=complete_threads))
        changes = catch_up.reactions_of_new(
            team_id=ws.team_id, channel=channel, bot_user_id=ws.bot_user_id, run_id=run_id,
            messages=[m for m in new_messages if not ws.is_own(m)]) + changes
        if new_messages or changes:
            log.info("catching up %d Slack message(s) and %d change(s) of %s in %s",
                     len(new_messages), len(changes), channel, room_id)
        if new_messages:
            await self._submit_messages(ws, channel, new_messages)
        if changes:
            await self._store_read(ws, changes)

    async def _mapped_messages(self, ws: Workspace, channel: str,
                               since: float) -> dict[str, catch_up.MappedMessage]:
        """The channel's messages the room has, mapped since ``since`` (seconds), with the
        Slack users' reactions on them."""
        space = space_of(ws.team_id, channel)
        async with self.hub.db.sessions() as session:
            rows = await slack_store.mappings_since(session, space, since)
            roots = {r.thread_root for r in rows if r.thread_root}
            root_ts = await slack_store.remote_ids_of_events(session, space, roots)
        messages: dict[str, catch_up.MappedMessage] = {}
        reactions: list[tuple[str, str, str]] = []
        for row in rows:
            if row.remote_id.startswith("file:"):
                continue  # a Matrix file the app uploaded: not a message of its own
            if "/reaction/" in row.remote_id:
                ts, _, rest = row.remote_id.partition("/reaction/")
                user, _, name = rest.partition("/")
                if user != ws.bot_user_id:  # the app's reactions stand for Matrix ones
                    reactions.append((ts, user, name))
                continue
            entry = messages.get(row.remote_id)
            if entry is None:
                entry = messages[row.remote_id] = catch_up.MappedMessage(
                    ts=row.remote_id, mapped_at=row.created_at)
            entry.mapped_at = min(entry.mapped_at, row.created_at)
            if row.thread_root:
                # A reply; "" when its root is not known, so the window never covers it.
                entry.thread_ts = root_ts.get(row.thread_root, "")
        for ts, user, name in reactions:
            if ts in messages:
                messages[ts].reactions.add((user, name))
        return messages

    async def _submit_messages(self, ws: Workspace, channel: str,
                               messages: list[dict[str, Any]]) -> None:
        """Past messages, oldest first, through the same store as live events."""
        messages = sorted(messages, key=lambda m: slack_store.ts_key(str(m.get("ts") or "0")))
        payloads = [{"event_id": None, "event": {"type": "message", "channel": channel, **m}}
                    for m in messages]
        await self._store_read(ws, payloads)

    async def _store_read(self, ws: Workspace, payloads: list[dict[str, Any]]) -> None:
        """Store what catch-up or backfill read, as the intake stores live events: an item
        whose data can never be stored is set aside (logged, the room told) instead of
        failing the whole read again on every reconnection."""
        try:
            await self.store_events(ws, payloads)
            return
        except Exception as exc:
            if not can_never_be_stored(exc) or len(payloads) == 0:
                raise
        for payload in payloads:
            try:
                await self.store_events(ws, [payload])
            except Exception as exc:
                if not can_never_be_stored(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.error("set aside a Slack %s read by catch-up of %s, it can never be stored "
                          "(%s); its payload: %s", (payload.get("event") or {}).get("type"),
                          ws.name, reason, loggable_payload(payload))
                await self._event_set_aside(ws, payload, reason)

    async def on_linked(self, hub: Hub, link: LinkInfo) -> None:
        ws = self.workspace_for_link(link)
        channel = str(link.settings.get("channel"))
        limit = self.settings.backfill_limit
        history: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        if limit:
            try:
                # Slack's notices (the app's own join, topic changes) are history too: read
                # past them, so the limit counts messages people wrote.
                history = await ws.paginate("conversations.history", "messages",
                                            limit=min(CATCH_UP_MAX_MESSAGES, 2 * limit + 20),
                                            channel=channel)
                messages = [m for m in history if m.get("subtype") in POSTING_SUBTYPES
                            and m.get("ts") and not ws.is_own(m)][:limit]
                # Their threads come along: a root without its replies is half a talk.
                seen = {str(m["ts"]) for m in messages}
                for root in [m for m in messages if m.get("reply_count")]:
                    replies = await ws.paginate("conversations.replies", "messages",
                                                limit=CATCH_UP_MAX_MESSAGES, channel=channel,
                                                ts=str(root["ts"]))
                    fresh = [r for r in replies if r.get("ts") and str(r["ts"]) not in seen]
                    seen.update(str(r["ts"]) for r in fresh)
                    messages += fresh
            except (TemporaryError, PermanentError) as exc:
                log.warning("could not read the history of %s: %s", channel, exc)
        if messages:
            await self._submit_messages(ws, channel, messages)

    async def on_link_written(self, session: AsyncSession, link: LinkInfo) -> None:
        """The channel's catch-up cursor starts at the moment of linking, written with the
        link: a link without a cursor would never be caught up after an outage. (The
        backfill afterwards only brings older messages; the cursor moves forward only.)"""
        team = str(link.settings.get("team"))
        channel = str(link.settings.get("channel"))
        await slack_store.advance_cursor(session, team, channel, f"{time.time():.6f}")

    # --- links and commands --------------------------------------------------------------

    async def resolve_link(self, hub: Hub, room_id: str, remote_id: str,
                           args: list[str]) -> LinkTarget:
        typed = remote_id.strip()
        team = None
        if ":" in typed:  # "T0123:C0123", as `status` shows links: the team picks the workspace
            team, typed = typed.split(":", 1)
        ws = self.workspace_named(args[0] if args else team)
        try:
            if CHANNEL_ID.fullmatch(typed):
                info = await self.channel_info(ws, typed, fresh=True)
            else:
                info = await self._channel_by_name(hub, ws, typed)
        except PermanentError as exc:
            if "channel_not_found" in str(exc):
                raise CommandError(
                    f"Slack workspace `{ws.name}` has no channel `{remote_id}` that the app "
                    f"can see. Give the channel ID (like C0123ABCD; `{hub.prefix} slack "
                    "channels` lists them); for a private channel, first invite the app "
                    "there in Slack.") from None
            raise CommandError(f"Slack refused: {exc}") from None
        except TemporaryError as exc:
            raise CommandError(f"Slack is not reachable right now ({exc}); try again.") \
                from None
        # What Slack calls the channel, never what was typed: the link, the catch-up cursor
        # and every event must agree on the ID.
        channel = str(info.get("id") or "")
        if not channel:
            raise CommandError(f"Slack did not say which channel `{remote_id}` is; give its "
                               f"ID (`{hub.prefix} slack channels` lists them).")
        if info.get("is_archived"):
            raise CommandError(f"The Slack channel #{info.get('name')} is archived; "
                               "unarchive it in Slack first.")
        if not info.get("is_member"):
            if info.get("is_private"):
                raise CommandError(f"The app is not in the private channel #{info.get('name')}"
                                   "; invite it there in Slack first (/invite @<app>).")
            # With no room, this only checks (a plan check): the app joins when the link
            # is made, not before.
            if room_id:
                try:
                    await ws.read("conversations.join", channel=channel)
                except (PermanentError, TemporaryError) as exc:
                    raise CommandError(f"The app could not join #{info.get('name')}: {exc}") \
                        from None
        name = str(info.get("name") or channel)
        url = f"{ws.team_url.rstrip('/')}/archives/{channel}" if ws.team_url else None
        return LinkTarget(remote_id=space_of(ws.team_id, channel), remote_name=f"#{name}",
                          settings={"team": ws.team_id, "channel": channel,
                                    "workspace": ws.name},
                          external_url=url)

    # --- people (identity links) --------------------------------------------------------

    async def resolve_person(self, hub: Hub, words: list[str]) -> PersonRef:
        """A Slack user as ``<workspace>:<user id>`` (``people link``) or as the two words
        ``<workspace> <user id or e-mail address>`` (``me slack``): the workspace is a
        configured one's name (or its team ID); Slack is asked who the user is
        (users.info, or users.lookupByEmail for an address)."""
        if len(words) == 1 and ":" in words[0]:
            workspace, typed = (part.strip() for part in words[0].split(":", 1))
        elif len(words) == 2:
            workspace, typed = words[0].strip(), words[1].strip()
        else:
            raise CommandError("Name the Slack user as `<workspace>:<user id>`, like "
                               f"`{self._example_workspace()}:U0123ABCD`.")
        if not workspace or not typed:
            raise CommandError(f"`{' '.join(words)}` does not name a Slack user; write "
                               f"`<workspace>:<user id>`, like "
                               f"`{self._example_workspace()}:U0123ABCD`.")
        ws = self.workspace_named(workspace)
        try:
            if "@" in typed:
                data = await ws.read("users.lookupByEmail", email=typed)
            elif USER_ID.fullmatch(typed.upper()):
                data = await ws.read("users.info", user=typed.upper())
            else:
                raise CommandError(
                    f"`{typed}` is not a Slack user ID. Slack shows it in the person's "
                    "profile (⋮ → Copy member ID); it looks like U0123ABCD.")
        except PermanentError as exc:
            code = str(exc).rsplit(": ", 1)[-1]
            if code in ("user_not_found", "users_not_found"):
                what = f"the address {typed}" if "@" in typed else f"the ID {typed.upper()}"
                raise CommandError(f"Slack workspace `{ws.name}` has no user with {what} "
                                   f"(Slack answered `{code}`).") from None
            raise CommandError(f"Slack refused to say who `{typed}` is: {exc}") from None
        except TemporaryError as exc:
            raise UnavailableError(f"Slack is not reachable right now ({exc}); try again.") \
                from None
        user = data.get("user") or {}
        user_id = str(user.get("id") or "")
        if not user_id:
            raise CommandError(f"Slack did not say who `{typed}` is in workspace "
                               f"`{ws.name}`.")
        if user.get("is_bot") or user_id == "USLACKBOT":
            raise CommandError(f"`{ws.name}:{user_id}` is a bot in Slack, not a person.")
        profile = self.users.remember(ws, user)
        return PersonRef(remote_id=f"{ws.team_id}_{user_id}", label=f"{ws.name}:{user_id}",
                         display_name=profile.name)

    def _example_workspace(self) -> str:
        return self.workspaces[0].name if self.workspaces else "rathaus"

    async def send_person_code(self, hub: Hub, person: PersonRef, code: str,
                               matrix_user_id: str) -> str:
        """A direct message from the app to the Slack user (``me slack``)."""
        from bridge.people.self_service import CODE_LIFETIME_SECONDS

        team_id, _, user_id = person.remote_id.partition("_")
        ws = self.workspace_of_team(team_id)
        if ws is None:
            raise UnavailableError(f"The Slack workspace of `{person.label}` is not connected "
                                   "right now; no code was sent. Please try again later.")
        text = person_code.code_message(
            code=code, label=person.label, matrix_user_id=matrix_user_id,
            homeserver=self.homeserver_domain, bot_mxid=hub.bot_mxid,
            minutes=CODE_LIFETIME_SECONDS // 60)
        return await person_code.send_code(ws, user_id, text)

    async def _channel_by_name(self, hub: Hub, ws: Workspace, typed: str) -> dict[str, Any]:
        """A channel named like ``general`` or ``#general``: Slack's methods want IDs, so the
        name is looked up in conversations.list (every page); none found is refused with a
        hint to use the ID."""
        name = typed.lstrip("#").strip().lower()
        if not CHANNEL_NAME.fullmatch(name):
            raise CommandError(f"`{typed}` is neither a Slack channel ID (like C0123ABCD) nor "
                               f"a channel name; `{hub.prefix} slack channels` lists them.")
        channels = await ws.paginate("conversations.list", "channels",
                                     types="public_channel,private_channel")
        found = [c for c in channels if str(c.get("name") or "").lower() == name]
        if not found:
            raise CommandError(
                f"Slack workspace `{ws.name}` has no channel #{name} that the app can see. "
                f"Give the channel ID instead (like C0123ABCD; `{hub.prefix} slack channels` "
                "lists them); for a private channel, first invite the app there in Slack.")
        channel_id = str(found[0].get("id") or "")
        return await self.channel_info(ws, channel_id, fresh=True) if channel_id else found[0]

    # --- the provisioning API's /rooms/{room_id}/links/slack ---------------------------

    def api_link_schema(self) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "required": ["channel"],
                "properties": {
                    "channel": {"type": "string", "minLength": 1,
                                "description": "the channel's ID (C0123ABCD) or its name"},
                    "workspace": {"type": "string", "minLength": 1,
                                  "description": "the workspace's name in slack.workspaces "
                                                 "(or its team ID); optional with one "
                                                 "workspace"}}}

    def api_link_request(self, body: dict[str, Any]) -> tuple[str, list[str]]:
        # As `!bridge link slack <channel> [workspace]` would be given it.
        workspace = body.get("workspace")
        return str(body["channel"]), [str(workspace)] if workspace else []

    def api_unlink_selector(self, body: dict[str, Any]) -> str | None:
        channel, workspace = body.get("channel"), body.get("workspace")
        if not channel:
            return None
        if workspace and CHANNEL_ID.fullmatch(str(channel)):
            # The stored ID: the same channel ID may exist in two workspaces.
            return space_of(self.workspace_named(str(workspace)).team_id, str(channel))
        return str(channel)

    def api_link_fields_schema(self) -> dict[str, Any]:
        return {"workspace": {"type": ["string", "null"],
                              "description": "the workspace's name in slack.workspaces"},
                "team": {"type": "string", "description": "the workspace's team ID"},
                "channel": {"type": "string", "description": "the channel's ID"}}

    def api_link_fields(self, link: LinkInfo) -> dict[str, Any]:
        team, _, channel = link.remote_id.rpartition(":")
        team = str(link.settings.get("team") or team)
        workspace = link.settings.get("workspace")
        if not workspace:
            known = self.workspace_of_team(team)
            workspace = known.name if known is not None else None
        return {"workspace": workspace, "team": team,
                "channel": str(link.settings.get("channel") or channel)}

    def api_routes(self) -> list[Route]:
        return slack_api.routes(self)

    def commands(self) -> list[SubCommand]:
        return [SubCommand("channels", "[workspace]",
                           "the channels the app sees and the rooms they are linked to",
                           self._cmd_channels),
                SubCommand("finish", "[<channel>]",
                           "point the linked Slack channel at this room (a pinned message), "
                           "end the link, and archive the channel if so configured",
                           self._cmd_finish)]

    async def _cmd_finish(self, hub: Hub, room_id: str, sender: str,
                          args: list[str]) -> str:
        if len(args) > 1:
            raise UsageError()
        outcome = await actions.finish(hub, Actor.command(sender), room_id,
                                       args[0] if args else None)
        return outcome.message

    async def _cmd_channels(self, hub: Hub, room_id: str, sender: str,
                            args: list[str]) -> str:
        workspaces = [self.workspace_named(args[0])] if args else \
            [ws for ws in self.workspaces if ws.team_id]
        if not workspaces:
            raise CommandError("Slack is not connected yet; try again in a moment.")
        async with hub.db.sessions() as session:
            linked = await slack_store.linked_channels(session)
        lines: list[str] = []
        for ws in workspaces:
            try:
                channels = await ws.paginate("conversations.list", "channels", limit=1000,
                                             types="public_channel,private_channel",
                                             exclude_archived=True)
            except (TemporaryError, PermanentError) as exc:
                raise CommandError(f"Slack did not list the channels: {exc}") from None
            lines.append(f"**{ws.name}** ({ws.team_name}, {ws.team_id}):")
            for channel in sorted(channels, key=lambda c: str(c.get("name"))):
                room = linked.get(space_of(ws.team_id, str(channel.get("id"))))
                state = f"linked to {room}" if room else \
                    ("not linked" if channel.get("is_member") else "not linked, app not in it")
                lock = "🔒 " if channel.get("is_private") else ""
                lines.append(f"- {lock}#{channel.get('name')} `{channel.get('id')}`: {state}")
            if not channels:
                lines.append("- no channels visible to the app")
        lines.append(f"Link one here with `{hub.prefix} link slack <channel id>"
                     f"{' <workspace>' if len(self.workspaces) > 1 else ''}`.")
        return "\n".join(lines)

    # --- the outbox hands work back ------------------------------------------------------

    async def deliver(self, hub: Hub, delivery: Delivery, link: LinkInfo | None) -> str | None:
        if delivery.kind == "inbound":
            ws = self.workspace_of_team(str(delivery.payload.get("team")))
            if ws is None:
                raise TemporaryError("the Slack workspace is not connected yet")
            started = time.perf_counter()
            # The Matrix events it becomes are queued in the transaction that records
            # this item's success (one commit per Slack message instead of two).
            with hub.writes_with_outcome(delivery):
                result = await self.inbound.handle(ws, delivery.room_id, delivery.payload)
            _handling_in().observe(time.perf_counter() - started)
            return result
        if link is None:
            return None  # unlinked while the message waited
        return await self.outbound.deliver(delivery, link)


@functools.cache
def _handling_in() -> Histogram:
    """The handling-time histogram of Slack events, looked up once (``labels()`` costs
    several microseconds per call) on first use."""
    return metrics.HANDLING_SECONDS.labels(network=NETWORK, direction="in")


def _image_type(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _sort_key(payload: dict[str, Any]) -> float:
    """Where a stored Slack event goes in its channel's order: Slack's own timestamp of it
    (a message's ts, an edit's, a reaction's event_ts), else when Slack sent it."""
    event = payload.get("event") or {}
    for value in (event.get("ts"), event.get("event_ts"), payload.get("event_time")):
        if value is None:
            continue
        try:
            return float(str(value))
        except (TypeError, ValueError):
            continue
    return time.time()
