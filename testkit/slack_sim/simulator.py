"""SlackSimulator: a stateful Slack that speaks Slack's protocols on a local port.

    sim = SlackSimulator()                      # host="127.0.0.1", port=0 (any free port)
    await sim.start()                           # sim.api_url == "http://127.0.0.1:<port>/api/"
    team = sim.add_team(team_id="T0RATHAUS", name="rathaus", bot_token="xoxb-1",
                        app_token="xapp-1")     # Socket Mode; or events_url=... for HTTP
    anna = sim.add_user(team, "U0ANNA", name="anna", real_name="Anna Schmidt")
    sim.add_channel(team, "C0BAUAMT", name="bauamt", members=[anna.id, team.bot_user_id])
    ts = await sim.post_message(team, "C0BAUAMT", anna.id, text="Hallo")
    ...
    await sim.stop()

The app under test talks to it with slack-sdk exactly as to Slack (AsyncWebClient with
base_url=sim.api_url, SocketModeClient, or an Events API endpoint it gets signed POSTs on).
What people do in Slack (post, edit, react, join, upload, rename, ...) is done with the
coroutines below: they change the workspace and emit the events Slack would emit.

As in Slack, the app only hears channels its bot user is a member of (channel_rename of public
channels, user_change and team_join are workspace-wide), chat.postMessage answers
not_in_channel until the bot joined (conversations.join, or members=[..., team.bot_user_id]),
private channels the bot is not in do not exist for it, and a person must be a member to post.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from testkit.slack_sim import events as ev
from testkit.slack_sim.images import file_kind, image_size
from testkit.slack_sim.richtext import block_id, escape_client_text, rich_text_blocks
from testkit.slack_sim.server import build_app
from testkit.slack_sim.state import (
    Bot,
    Channel,
    JsonDict,
    SimulatorError,
    StoredFile,
    Team,
    TsClock,
    User,
    new_id,
    random_token,
)
from testkit.slack_sim.webapi import WebApi

TeamRef = Team | str


@dataclass
class HttpResult:
    """What an app's Events API endpoint answered."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class UrlVerification(HttpResult):
    challenge: str = ""

    @property
    def ok(self) -> bool:
        """The endpoint echoed the challenge (as plain text, form or JSON, as Slack accepts)."""
        if self.status != 200:
            return False
        text = self.text.strip()
        if text == self.challenge or text == f"challenge={self.challenge}":
            return True
        try:
            data = json.loads(text)
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("challenge") == self.challenge


@dataclass
class Fault:
    status: int
    error: str
    remaining: int | None  # None: until cleared
    retry_after: int | None = None


class SlackSimulator:
    """A Slack workspace host: Web API, file URLs, Socket Mode and Events API delivery."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, ack_timeout: float = 3.0,
                 max_retries: int = 3, http_timeout: float = 3.0, retry_delay: float = 0.5,
                 events_concurrency: int = 1) -> None:
        self.host = host
        self.port = port
        self.clock = TsClock()
        self.teams: dict[str, Team] = {}
        self.dispatcher = ev.Dispatcher(ack_timeout=ack_timeout, max_retries=max_retries,
                                        http_timeout=http_timeout, retry_delay=retry_delay,
                                        http_concurrency=events_concurrency)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.enforce_tiers = False
        self.post_message_burst = 5  # chat.postMessage: 1 per second per channel, bursts of this
        self.faults: dict[str, list[Fault]] = {}
        # Seconds a Web API method takes to answer (slow_down), by method.
        self.latency: dict[str, float] = {}
        self._tokens: dict[str, tuple[Team, str]] = {}   # token -> (team, "bot" | "app")
        # Tokens of an uninstalled app or revoked: the error Slack answers them with.
        self.revoked_tokens: dict[str, str] = {}
        self._tickets: dict[str, Team] = {}
        self._runner: web.AppRunner | None = None
        self.webapi = WebApi(self)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.dispatcher.start()
        self._runner = web.AppRunner(build_app(self), access_log=None,
                                     handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                self.port = int(address[1])
                break

    async def stop(self) -> None:
        await self.dispatcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def api_url(self) -> str:
        return self.base_url + "api/"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    # Delivery knobs, settable at any time.
    @property
    def ack_timeout(self) -> float:
        return self.dispatcher.ack_timeout

    @ack_timeout.setter
    def ack_timeout(self, value: float) -> None:
        self.dispatcher.ack_timeout = value

    @property
    def retry_delay(self) -> float:
        return self.dispatcher.retry_delay

    @retry_delay.setter
    def retry_delay(self, value: float) -> None:
        self.dispatcher.retry_delay = value

    @property
    def http_timeout(self) -> float:
        return self.dispatcher.http_timeout

    @http_timeout.setter
    def http_timeout(self, value: float) -> None:
        self.dispatcher.http_timeout = value

    @property
    def max_retries(self) -> int:
        return self.dispatcher.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self.dispatcher.max_retries = value

    # -- setup ----------------------------------------------------------------------------
    def add_team(self, team_id: str | None = None, name: str = "workspace",
                 domain: str | None = None, bot_token: str | None = None,
                 app_token: str | None = None, signing_secret: str | None = None,
                 events_url: str | None = None, *,
                 bot_name: str = "bridge", bot_image_url: str | None = None) -> Team:
        """A workspace with the app installed. Socket Mode when app_token is given, else the
        Events API to events_url (settable later: team.events_url = ...)."""
        team = Team(team_id=team_id or new_id("T"), name=name, domain=domain or name,
                    bot_token=bot_token or f"xoxb-{random_token(40)}", app_token=app_token,
                    signing_secret=signing_secret or random_token(32), events_url=events_url,
                    bot_name=bot_name)
        if team.id in self.teams:
            raise SimulatorError(f"team {team.id} exists")
        for token in (team.bot_token, app_token):
            if token and token in self._tokens:
                raise SimulatorError(f"token {token} belongs to another team")
        self.teams[team.id] = team
        self._tokens[team.bot_token] = (team, "bot")
        if app_token:
            self._tokens[app_token] = (team, "app")
        self.dispatcher.add_team(team)
        icons = ({"image_36": bot_image_url, "image_48": bot_image_url, "image_72": bot_image_url}
                 if bot_image_url else
                 {f"image_{s}": f"{self.base_url}avatars/{team.id}/{team.bot_id}_{s}.png"
                  for s in (36, 48, 72)})
        team.bots[team.bot_id] = Bot(team.bot_id, bot_name, app_id=team.app_id,
                                     user_id=team.bot_user_id, icons=icons)
        team.users[team.bot_user_id] = User(
            id=team.bot_user_id, team_id=team.id, name=bot_name, real_name=bot_name,
            display_name="", image_url=bot_image_url, is_bot=True, bot_id=team.bot_id,
            app_id=team.app_id)
        team.users["USLACKBOT"] = User(id="USLACKBOT", team_id=team.id, name="slackbot",
                                       real_name="Slackbot", display_name="Slackbot",
                                       color="757575")
        team.emoji.update({
            "partyparrot": f"{self.base_url}emoji/{team.id}/partyparrot.png",
            "parrot": "alias:partyparrot",
            "bauamt-logo": f"{self.base_url}emoji/{team.id}/bauamt-logo.png",
        })
        return team

    def set_app_token(self, team: TeamRef, app_token: str | None) -> None:
        """Switch a team between Socket Mode (a token) and the Events API (None)."""
        t = self.team(team)
        if t.app_token:
            self._tokens.pop(t.app_token, None)
        t.app_token = app_token
        if app_token:
            self._tokens[app_token] = (t, "app")

    def add_user(self, team: TeamRef, user_id: str | None = None, name: str = "", *,
                 real_name: str = "", display_name: str = "", image_url: str | None = None,
                 email: str | None = None, is_bot: bool = False, is_admin: bool = False,
                 deleted: bool = False, announce: bool = False) -> User:
        """A person in the workspace; announce=True emits team_join as for a new member."""
        t = self.team(team)
        user_id = user_id or new_id("U")
        user = User(id=user_id, team_id=t.id, name=name or user_id.lower(),
                    real_name=real_name, display_name=display_name, image_url=image_url,
                    email=email, is_bot=is_bot, is_admin=is_admin, deleted=deleted)
        t.users[user_id] = user
        if announce:
            self.dispatcher.emit(t, {"type": "team_join", "user": user.to_api(self.base_url),
                                     "cache_ts": int(time.time()), "event_ts": self.clock.next()})
        return user

    def add_bot(self, team: TeamRef, bot_id: str | None = None, name: str = "bot", *,
                icons: JsonDict | None = None, app_id: str | None = None) -> Bot:
        """Another integration (Jenkins, a webhook) that posts bot_message messages."""
        t = self.team(team)
        bot_id = bot_id or new_id("B")
        bot = Bot(bot_id, name, app_id=app_id, icons=icons or {
            f"image_{s}": f"{self.base_url}avatars/{t.id}/{bot_id}_{s}.png" for s in (36, 48, 72)})
        t.bots[bot_id] = bot
        return bot

    def add_channel(self, team: TeamRef, channel_id: str | None = None, name: str = "",
                    topic: str = "", purpose: str = "", members: Iterable[str] = (),
                    is_private: bool = False, *, creator: str | None = None,
                    is_general: bool = False) -> Channel:
        t = self.team(team)
        channel_id = channel_id or new_id("C")
        member_list = list(members)
        for member in member_list:
            t.user(member)
        creator = creator or (member_list[0] if member_list else "USLACKBOT")
        channel = Channel(t.id, channel_id, name or channel_id.lower(), creator=creator,
                          is_private=is_private, created=int(time.time()), topic=topic,
                          purpose=purpose, is_general=is_general)
        for member in member_list:
            channel.members[member] = None
        t.channels[channel_id] = channel
        return channel

    def add_emoji(self, team: TeamRef, name: str, url_or_alias: str) -> None:
        self.team(team).emoji[name] = url_or_alias

    # -- lookups --------------------------------------------------------------------------
    def team(self, team: TeamRef) -> Team:
        if isinstance(team, Team):
            return team
        try:
            return self.teams[team]
        except KeyError:
            for candidate in self.teams.values():
                if team in (candidate.name, candidate.domain):
                    return candidate
            raise SimulatorError(f"no team {team}") from None

    def token_owner(self, token: str) -> tuple[Team, str] | None:
        return self._tokens.get(token)

    def new_ticket(self, team: Team) -> str:
        ticket = str(uuid.uuid4())
        self._tickets[ticket] = team
        return ticket

    def ticket_team(self, ticket: str) -> Team | None:
        return self._tickets.get(ticket)

    # -- inspection -----------------------------------------------------------------------
    def messages(self, team: TeamRef, channel_id: str) -> list[JsonDict]:
        """Channel history as stored (top-level messages), oldest first."""
        return copy.deepcopy(self.team(team).channel(channel_id).history())

    def im_messages(self, team: TeamRef, user_id: str) -> list[JsonDict]:
        """What the app wrote to the person in their direct messages (the app's IM with
        them, opened with conversations.open), oldest first; none if it never opened one."""
        im = self.team(team).ims.get(user_id)
        return copy.deepcopy(im.messages) if im is not None else []

    def replies(self, team: TeamRef, channel_id: str, thread_ts: str) -> list[JsonDict]:
        """The replies of a thread, oldest first (without the parent)."""
        thread = self.team(team).channel(channel_id).thread(thread_ts)
        return copy.deepcopy(thread[1]) if thread else []

    def message(self, team: TeamRef, channel_id: str, ts: str) -> JsonDict | None:
        found = self.team(team).channel(channel_id).by_ts.get(ts)
        return copy.deepcopy(found) if found is not None else None

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    def uploaded_files(self, team: TeamRef) -> list[JsonDict]:
        """Files in the workspace (uploaded by the app or shared by people), with `data`."""
        t = self.team(team)
        out = []
        for stored in t.files.values():
            info = stored.to_api(self.base_url, t.domain, with_shares=True)
            info["data"] = stored.data
            out.append(info)
        return out

    def events(self, team: TeamRef) -> list[JsonDict]:
        """Every event_callback payload emitted for the team's app, in order (shared dicts:
        do not change them)."""
        delivery = self.dispatcher.teams[self.team(team).id]
        parsed = delivery.emitted_parsed
        parsed.extend(json.loads(p) for p in delivery.emitted[len(parsed):])
        return list(parsed)

    def delivered(self, team: TeamRef) -> list[JsonDict]:
        """Payloads the app accepted (acked / answered 2xx), in the order it accepted them."""
        return [d.payload for d in self.dispatcher.teams[self.team(team).id].delivered]

    def delivered_count(self, team: TeamRef) -> int:
        """len(delivered(team)), cheap enough to poll in benchmarks."""
        return len(self.dispatcher.teams[self.team(team).id].delivered)

    def events_count(self, team: TeamRef) -> int:
        return len(self.dispatcher.teams[self.team(team).id].emitted)

    def dropped(self, team: TeamRef) -> list[JsonDict]:
        """Payloads Slack gave up on after max_retries."""
        return [d.payload for d in self.dispatcher.teams[self.team(team).id].dropped]

    def pending_envelopes(self, team: TeamRef) -> list[JsonDict]:
        """Socket Mode envelopes sent and not acknowledged yet."""
        delivery = self.dispatcher.teams[self.team(team).id]
        return [json.loads(env.text()) for env in
                sorted(delivery.pending.values(), key=lambda env: env.seq)]

    def queued_events(self, team: TeamRef) -> list[JsonDict]:
        """Events waiting for a connection (Socket Mode) or an events_url (Events API)."""
        delivery = self.dispatcher.teams[self.team(team).id]
        return ([json.loads(env.payload_json) for env in delivery.queue]
                + [json.loads(item.body) for item in delivery.http_queue])

    def http_attempts(self, team: TeamRef) -> list[tuple[str, int, int | None, str]]:
        """Events API POSTs made: (event_id, retry number, HTTP status or None, failure reason)."""
        return list(self.dispatcher.teams[self.team(team).id].http_attempts)

    def socket_count(self, team: TeamRef) -> int:
        return len(self.dispatcher.teams[self.team(team).id].links)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10,
                       interval: float = 0.01) -> Any:
        """Poll predicate (sync or async) until it returns something truthy; return that."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s: {predicate!r}")
            await asyncio.sleep(interval)

    # -- fault injection ------------------------------------------------------------------
    def rate_limit(self, method: str, retry_after: int = 1, times: int | None = 1) -> None:
        """Answer the next `times` calls of method with 429, Retry-After and "ratelimited"."""
        self.faults.setdefault(method, []).append(Fault(429, "ratelimited", times, retry_after))

    def fail(self, method: str, status: int = 500, times: int | None = 1,
             error: str = "internal_error") -> None:
        """Answer the next `times` calls of method with an HTTP error status."""
        self.faults.setdefault(method, []).append(Fault(status, error, times))

    def slow_down(self, method: str, seconds: float) -> None:
        """Answer every call of method only after `seconds` (0: at once again)."""
        self.latency[method] = seconds

    def clear_faults(self) -> None:
        self.faults.clear()
        self.latency.clear()

    def take_fault(self, method: str) -> Fault | None:
        queue = self.faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
        return fault

    @property
    def online(self) -> bool:
        return self.dispatcher.online

    def set_online(self, online: bool) -> None:
        """False: the Web API answers 503, websockets are closed and refused, events wait."""
        self.dispatcher.set_online(online)

    async def disconnect_socket(self, team: TeamRef, reason: str = "refresh_requested",
                                grace: float = 1.0) -> None:
        """Send {"type": "disconnect", "reason": ...} on the team's sockets, then close them."""
        await self.dispatcher.disconnect(self.team(team), reason, grace=grace)

    async def drop_sockets(self, team: TeamRef) -> None:
        """Close the team's sockets without a disconnect message (a lost connection)."""
        delivery = self.dispatcher.teams[self.team(team).id]
        for link in list(delivery.links):
            await self.dispatcher.close_link(link, code=1011)

    # -- Events API helpers ---------------------------------------------------------------
    @staticmethod
    def sign(body: bytes, secret: str, timestamp: int | str) -> str:
        return ev.sign(body, secret, timestamp)

    def signed_headers(self, team: TeamRef, body: bytes,
                       timestamp: int | None = None) -> dict[str, str]:
        t = self.team(team)
        ts = int(time.time()) if timestamp is None else timestamp
        return {"Content-Type": "application/json", "X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": ev.sign(body, t.signing_secret, ts)}

    async def post_raw_event(self, team: TeamRef, body: bytes,
                             headers: dict[str, str] | None = None) -> HttpResult:
        """POST arbitrary bytes to the team's events_url (signed correctly unless headers
        are given)."""
        t = self.team(team)
        if not t.events_url:
            raise SimulatorError(f"team {t.id} has no events_url")
        status, got_headers, data = await self.dispatcher.post_raw(
            t.events_url, body, headers if headers is not None else self.signed_headers(t, body))
        return HttpResult(status, got_headers, data)

    async def send_url_verification(self, team: TeamRef) -> UrlVerification:
        """What Slack sends when the Request URL is saved; .ok says the challenge came back."""
        t = self.team(team)
        challenge = random_token(48)
        body = json.dumps({"token": t.verification_token, "challenge": challenge,
                           "type": "url_verification"}).encode()
        result = await self.post_raw_event(t, body)
        return UrlVerification(result.status, result.headers, result.body, challenge=challenge)

    # -- what people do -------------------------------------------------------------------
    async def post_message(self, team: TeamRef, channel_id: str, user_id: str, text: str = "",
                           blocks: list[JsonDict] | None = None, thread_ts: str | None = None,
                           broadcast: bool = False, *,
                           attachments: list[JsonDict] | None = None) -> str:
        """A person writes in a channel (or a thread); returns the message ts.

        text is Slack's wire format (<@U123>, <https://x|label>); stray <, > and & are escaped
        as the Slack client does. Without blocks, the rich_text block the client would send is
        built from text."""
        t, channel, user = self._member(team, channel_id, user_id)
        wire = escape_client_text(text)
        message: JsonDict = {"client_msg_id": str(uuid.uuid4()), "type": "message", "text": wire,
                             "user": user.id, "ts": self.clock.next(),
                             "blocks": blocks if blocks is not None else rich_text_blocks(wire),
                             "team": t.id}
        if attachments:
            message["attachments"] = _number_attachments(attachments)
        self.publish(t, channel, message, thread_ts=thread_ts, broadcast=broadcast)
        return str(message["ts"])

    async def post_me_message(self, team: TeamRef, channel_id: str, user_id: str, text: str = "",
                              thread_ts: str | None = None) -> str:
        """/me does something."""
        t, channel, user = self._member(team, channel_id, user_id)
        message: JsonDict = {"type": "message", "subtype": "me_message",
                             "text": escape_client_text(text), "user": user.id,
                             "ts": self.clock.next()}
        self.publish(t, channel, message, thread_ts=thread_ts)
        return str(message["ts"])

    async def post_bot_message(self, team: TeamRef, channel_id: str, text: str = "",
                               attachments: list[JsonDict] | None = None, bot_id: str = "B0OTHER",
                               username: str | None = "Jenkins", *,
                               blocks: list[JsonDict] | None = None, icons: JsonDict | None = None,
                               thread_ts: str | None = None) -> str:
        """Another integration (webhook, legacy bot) posts: subtype bot_message."""
        t = self.team(team)
        channel = t.channel(channel_id)
        bot = t.bots.get(bot_id) or self.add_bot(t, bot_id, username or "bot")
        message: JsonDict = {"type": "message", "subtype": "bot_message", "text": text,
                             "ts": self.clock.next(), "bot_id": bot.id}
        if username:
            message["username"] = username
        if icons:
            message["icons"] = icons
        if attachments:
            message["attachments"] = _number_attachments(attachments)
        if blocks:
            message["blocks"] = _with_block_ids(blocks)
        self.publish(t, channel, message, thread_ts=thread_ts)
        return str(message["ts"])

    async def edit_message(self, team: TeamRef, channel_id: str, ts: str, text: str | None = None,
                           user_id: str | None = None, *,
                           blocks: list[JsonDict] | None = None) -> str:
        """A person edits their message; emits message_changed. Returns the edit's ts."""
        t = self.team(team)
        channel = t.channel(channel_id)
        message = channel.by_ts.get(ts)
        if message is None:
            raise SimulatorError(f"no message {ts} in {channel_id}")
        editor = user_id or message.get("user") or ""
        wire = escape_client_text(text) if text is not None else None
        if wire is not None and blocks is None and message.get("client_msg_id"):
            blocks = rich_text_blocks(wire)
        return self.edit(t, channel, message, editor=editor, text=wire, blocks=blocks)

    async def delete_message(self, team: TeamRef, channel_id: str, ts: str) -> str:
        """A message disappears; emits message_deleted. Returns the deletion's ts."""
        t = self.team(team)
        channel = t.channel(channel_id)
        if ts not in channel.by_ts:
            raise SimulatorError(f"no message {ts} in {channel_id}")
        return self.delete(t, channel, ts)

    async def share_file(self, team: TeamRef, channel_id: str, user_id: str, filename: str,
                         data: bytes, mimetype: str | None = None, text: str = "",
                         thread_ts: str | None = None, *, title: str | None = None) -> str:
        """A person uploads a file into a channel: message subtype file_share. Returns ts."""
        t, channel, user = self._member(team, channel_id, user_id)
        stored = self.store_file(t, user_id=user.id, bot_id=None, filename=filename, data=data,
                                 mimetype=mimetype, title=title)
        wire = escape_client_text(text)
        message: JsonDict = {"type": "message", "subtype": "file_share", "text": wire,
                             "files": [], "upload": False, "user": user.id,
                             "display_as_bot": False, "ts": self.clock.next()}
        if wire:
            message["blocks"] = rich_text_blocks(wire)
            message["client_msg_id"] = str(uuid.uuid4())
        self.share_stored_files(t, channel, [stored], message, thread_ts=thread_ts)
        return str(message["ts"])

    async def add_reaction(self, team: TeamRef, channel_id: str, ts: str, user_id: str,
                           name: str) -> None:
        t = self.team(team)
        error = self.react(t, t.channel(channel_id), ts, t.user(user_id).id, name, add=True)
        if error:
            raise SimulatorError(error)

    async def remove_reaction(self, team: TeamRef, channel_id: str, ts: str, user_id: str,
                              name: str) -> None:
        t = self.team(team)
        error = self.react(t, t.channel(channel_id), ts, t.user(user_id).id, name, add=False)
        if error:
            raise SimulatorError(error)

    async def join_channel(self, team: TeamRef, channel_id: str, user_id: str,
                           inviter: str | None = None) -> str:
        """member_joined_channel plus the channel_join message Slack posts. Returns its ts."""
        t = self.team(team)
        return self.join(t, t.channel(channel_id), t.user(user_id).id, inviter=inviter)

    async def leave_channel(self, team: TeamRef, channel_id: str, user_id: str) -> str:
        """member_left_channel plus the channel_leave message. Returns its ts."""
        t = self.team(team)
        channel = t.channel(channel_id)
        user = t.user(user_id)
        if user.id not in channel.members:
            raise SimulatorError(f"{user.id} is not in {channel_id}")
        visible = t.bot_user_id in channel.members
        message: JsonDict = {"type": "message", "subtype": "channel_leave", "ts": self.clock.next(),
                             "user": user.id, "text": f"<@{user.id}> has left the channel",
                             "team": t.id}
        channel.add_top_level(message)
        self.dispatcher.emit(t, ev.message_event(channel, message), channel=channel,
                             visible=visible)
        del channel.members[user.id]
        self.dispatcher.emit(t, {"type": "member_left_channel", "user": user.id,
                                 "channel": channel.id, "channel_type": channel.member_channel_type,
                                 "team": t.id, "event_ts": self.clock.next()},
                             channel=channel, visible=visible)
        return str(message["ts"])

    async def rename_channel(self, team: TeamRef, channel_id: str, name: str,
                             user_id: str | None = None) -> str:
        """channel_rename plus the channel_name message. Returns the message ts."""
        t = self.team(team)
        channel = t.channel(channel_id)
        user = user_id or channel.creator
        old = channel.name
        channel.previous_names.insert(0, old)
        channel.name = name
        channel.updated = int(time.time() * 1000)
        event_ts = self.clock.next()
        self.dispatcher.emit(t, {"type": "channel_rename", "channel": {
            "id": channel.id, "name": name, "name_normalized": name.lower(),
            "created": channel.created, "is_channel": True, "is_mpim": False},
            "event_ts": event_ts},
            visible=not channel.is_private or t.bot_user_id in channel.members)
        text = f'<@{user}> has renamed the channel from "{old}" to "{name}"'
        message: JsonDict = {"type": "message", "subtype": "channel_name",
                             "ts": self.clock.next(), "user": user, "text": text,
                             "old_name": old, "name": name, "team": t.id}
        channel.add_top_level(message)
        self.dispatcher.emit(t, ev.message_event(channel, message), channel=channel)
        return str(message["ts"])

    async def set_topic(self, team: TeamRef, channel_id: str, user_id: str, topic: str) -> str:
        """The channel_topic message (Slack has no separate topic event). Returns its ts."""
        return self._set_topic_or_purpose(team, channel_id, user_id, "topic", topic)

    async def set_purpose(self, team: TeamRef, channel_id: str, user_id: str, purpose: str) -> str:
        return self._set_topic_or_purpose(team, channel_id, user_id, "purpose", purpose)

    def _set_topic_or_purpose(self, team: TeamRef, channel_id: str, user_id: str, kind: str,
                              value: str) -> str:
        t = self.team(team)
        channel = t.channel(channel_id)
        user = t.user(user_id)
        setattr(channel, kind, {"value": value, "creator": user.id, "last_set": int(time.time())})
        text = (f"<@{user.id}> set the channel {kind}: {escape_client_text(value)}" if value
                else f"<@{user.id}> cleared the channel {kind}")
        message: JsonDict = {"type": "message", "subtype": f"channel_{kind}",
                             "ts": self.clock.next(), "user": user.id, "text": text, kind: value}
        channel.add_top_level(message)
        self.dispatcher.emit(t, ev.message_event(channel, message), channel=channel)
        return str(message["ts"])

    async def archive_channel(self, team: TeamRef, channel_id: str, user_id: str) -> None:
        """Archived: chat.postMessage answers is_archived; channel_archive (group_archive
        for a private channel) goes to the app."""
        t = self.team(team)
        self.archive(t, t.channel(channel_id), user_id)

    def archive(self, t: Team, channel: Channel, user_id: str) -> None:
        visible = t.bot_user_id in channel.members or not channel.is_private
        kind = "group" if channel.is_private else "channel"
        message: JsonDict = {"type": "message", "subtype": f"{kind}_archive",
                             "ts": self.clock.next(), "user": user_id,
                             "text": f"<@{user_id}> archived the channel"}
        channel.add_top_level(message)
        self.dispatcher.emit(t, ev.message_event(channel, message), channel=channel)
        channel.is_archived = True
        self.dispatcher.emit(t, {"type": f"{kind}_archive", "channel": channel.id,
                                 "user": user_id, "event_ts": self.clock.next()},
                             visible=visible)

    def pinned(self, team: TeamRef, channel_id: str) -> list[JsonDict]:
        """The channel's pinned messages, in the order they were pinned."""
        channel = self.team(team).channel(channel_id)
        return [channel.by_ts[ts] for ts in channel.pins if ts in channel.by_ts]

    async def unarchive_channel(self, team: TeamRef, channel_id: str, user_id: str) -> None:
        t = self.team(team)
        channel = t.channel(channel_id)
        visible = t.bot_user_id in channel.members or not channel.is_private
        kind = "group" if channel.is_private else "channel"
        channel.is_archived = False
        message: JsonDict = {"type": "message", "subtype": f"{kind}_unarchive",
                             "ts": self.clock.next(), "user": user_id,
                             "text": f"<@{user_id}> un-archived the channel"}
        channel.add_top_level(message)
        self.dispatcher.emit(t, ev.message_event(channel, message), channel=channel)
        self.dispatcher.emit(t, {"type": f"{kind}_unarchive", "channel": channel.id,
                                 "user": user_id, "event_ts": self.clock.next()},
                             visible=visible)

    async def delete_channel(self, team: TeamRef, channel_id: str, user_id: str) -> None:
        """Deleted by an admin: gone for every method (channel_not_found); channel_deleted
        (group_deleted for a private channel) goes to the app, with the deleting admin as
        actor_id, as Slack's payload has it."""
        t = self.team(team)
        channel = t.channel(channel_id)
        visible = t.bot_user_id in channel.members or not channel.is_private
        kind = "group" if channel.is_private else "channel"
        del t.channels[channel.id]
        event: JsonDict = {"type": f"{kind}_deleted", "channel": channel.id,
                           "event_ts": self.clock.next()}
        if kind == "channel":
            event["actor_id"] = user_id
        self.dispatcher.emit(t, event, visible=visible)

    async def uninstall_app(self, team: TeamRef) -> None:
        """A workspace admin removes the app: app_uninstalled and tokens_revoked go out (over
        the connection still open), then the app's tokens answer account_inactive."""
        t = self.team(team)
        self.dispatcher.emit(t, {"type": "app_uninstalled"})
        self.dispatcher.emit(t, {"type": "tokens_revoked",
                                 "tokens": {"oauth": [], "bot": [t.bot_user_id]}})
        for token in (t.bot_token, t.app_token):
            if token:
                self.revoked_tokens[token] = "account_inactive"

    async def revoke_bot_token(self, team: TeamRef) -> None:
        """The bot token is revoked (the app stays): tokens_revoked, then token_revoked."""
        t = self.team(team)
        self.dispatcher.emit(t, {"type": "tokens_revoked",
                                 "tokens": {"oauth": [], "bot": [t.bot_user_id]}})
        self.revoked_tokens[t.bot_token] = "token_revoked"

    async def change_user(self, team: TeamRef, user_id: str, *, display_name: str | None = None,
                          real_name: str | None = None, image_url: str | None = None,
                          name: str | None = None, email: str | None = None,
                          deleted: bool | None = None) -> None:
        """A profile change; emits user_change with the whole user object."""
        t = self.team(team)
        user = t.user(user_id)
        for attr, value in (("display_name", display_name), ("real_name", real_name),
                            ("image_url", image_url), ("name", name), ("email", email),
                            ("deleted", deleted)):
            if value is not None:
                setattr(user, attr, value)
        user.updated = max(user.updated + 1, int(time.time()))
        self.dispatcher.emit(t, {"type": "user_change", "user": user.to_api(self.base_url),
                                 "cache_ts": int(time.time()), "event_ts": self.clock.next()})

    # -- shared by people and the Web API -------------------------------------------------
    def _member(self, team: TeamRef, channel_id: str, user_id: str) -> tuple[Team, Channel, User]:
        t = self.team(team)
        channel = t.channel(channel_id)
        user = t.user(user_id)
        if user.id not in channel.members:
            raise SimulatorError(f"{user.id} is not a member of {channel.id}: add it with "
                                 f"add_channel(members=...) or join_channel first")
        return t, channel, user

    def publish(self, team: Team, channel: Channel, message: JsonDict, *,
                thread_ts: str | None = None, broadcast: bool = False) -> None:
        """Store a new message (top level, reply, or broadcast reply) and emit its event."""
        if thread_ts:
            parent = channel.by_ts.get(thread_ts)
            if parent is not None and parent.get("thread_ts") not in (None, parent["ts"]):
                thread_ts = parent["thread_ts"]  # a reply's ts: Slack threads under its parent
                parent = channel.by_ts.get(thread_ts)
            message["thread_ts"] = thread_ts
            if broadcast:
                message["subtype"] = "thread_broadcast"
            elif parent is not None:
                parent_user = parent.get("user") or parent.get("bot_id")
                if parent_user:
                    message["parent_user_id"] = parent_user
            channel.add_reply(thread_ts, message)
            if broadcast:
                if parent is not None:
                    root = {k: v for k, v in parent.items() if k not in ("reactions", "files")}
                    message["root"] = copy.deepcopy(root)
                channel.add_top_level(message)
        else:
            channel.add_top_level(message)
        self.dispatcher.emit(team, ev.message_event(channel, message), channel=channel)

    def edit(self, team: Team, channel: Channel, message: JsonDict, *, editor: str,
             text: str | None = None, blocks: list[JsonDict] | None = None,
             attachments: list[JsonDict] | None = None, mark_edited: bool = True) -> str:
        previous = copy.deepcopy(message)
        if text is not None:
            message["text"] = text
            if blocks is None:
                message.pop("blocks", None)
        if blocks is not None:
            message["blocks"] = blocks
        if attachments is not None:
            if attachments:
                message["attachments"] = attachments
            else:
                message.pop("attachments", None)
        edit_ts = self.clock.next()
        if mark_edited:
            message["edited"] = {"user": editor, "ts": edit_ts}
        self.dispatcher.emit(team, {
            "type": "message", "subtype": "message_changed", "message": message,
            "previous_message": previous, "channel": channel.id, "hidden": True,
            "ts": edit_ts, "event_ts": edit_ts, "channel_type": channel.channel_type,
        }, channel=channel)
        return edit_ts

    def delete(self, team: Team, channel: Channel, ts: str) -> str:
        previous = channel.remove(ts)
        delete_ts = self.clock.next()
        self.dispatcher.emit(team, {
            "type": "message", "subtype": "message_deleted", "previous_message": previous,
            "channel": channel.id, "hidden": True, "deleted_ts": ts, "event_ts": delete_ts,
            "ts": delete_ts, "channel_type": channel.channel_type,
        }, channel=channel)
        return delete_ts

    def react(self, team: Team, channel: Channel, ts: str, user_id: str, name: str, *,
              add: bool) -> str | None:
        """Add or remove a reaction; returns Slack's error code, or None."""
        message = channel.by_ts.get(ts)
        if message is None:
            return "message_not_found"
        reactions: list[JsonDict] = message.setdefault("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if add:
            if entry is not None and user_id in entry["users"]:
                return "already_reacted"
            if entry is None:
                entry = {"name": name, "users": [], "count": 0}
                reactions.append(entry)
            entry["users"].append(user_id)
            entry["count"] = len(entry["users"])
        else:
            if entry is None or user_id not in entry["users"]:
                if not reactions:
                    message.pop("reactions", None)
                return "no_reaction"
            entry["users"].remove(user_id)
            entry["count"] = len(entry["users"])
            if not entry["users"]:
                reactions.remove(entry)
            if not reactions:
                message.pop("reactions", None)
        event: JsonDict = {"type": "reaction_added" if add else "reaction_removed", "user": user_id,
                           "item": {"type": "message", "channel": channel.id, "ts": ts},
                           "reaction": name}
        item_user = message.get("user")
        if item_user:
            event["item_user"] = item_user
        event["event_ts"] = self.clock.next()
        self.dispatcher.emit(team, event, channel=channel)
        return None

    def join(self, team: Team, channel: Channel, user_id: str, *,
             inviter: str | None = None) -> str:
        if user_id in channel.members:
            raise SimulatorError(f"{user_id} is already in {channel.id}")
        channel.members[user_id] = None
        event: JsonDict = {"type": "member_joined_channel", "user": user_id, "channel": channel.id,
                           "channel_type": channel.member_channel_type, "team": team.id}
        if inviter:
            event["inviter"] = inviter
        event["event_ts"] = self.clock.next()
        self.dispatcher.emit(team, event, channel=channel)
        message: JsonDict = {"type": "message", "subtype": "channel_join", "ts": self.clock.next(),
                             "user": user_id, "text": f"<@{user_id}> has joined the channel",
                             "team": team.id}
        if inviter:
            message["inviter"] = inviter
        channel.add_top_level(message)
        self.dispatcher.emit(team, ev.message_event(channel, message), channel=channel)
        return str(message["ts"])

    def store_file(self, team: Team, *, user_id: str, bot_id: str | None, filename: str,
                   data: bytes, mimetype: str | None, title: str | None = None,
                   alt_txt: str | None = None, file_id: str | None = None) -> StoredFile:
        mime, filetype, pretty = file_kind(filename, mimetype)
        size = image_size(data) if mime.startswith("image/") else None
        stored = StoredFile(id=file_id or new_id("F"), team_id=team.id, user_id=user_id,
                            name=filename, title=title or filename, mimetype=mime,
                            filetype=filetype, pretty_type=pretty, data=data,
                            created=int(time.time()), bot_id=bot_id, alt_txt=alt_txt,
                            original_w=size[0] if size else None,
                            original_h=size[1] if size else None)
        team.files[stored.id] = stored
        return stored

    def share_stored_files(self, team: Team, channel: Channel, files: list[StoredFile],
                           message: JsonDict, *, thread_ts: str | None = None) -> None:
        """Post message (already carrying user/bot fields) with files into channel."""
        for stored in files:
            share: JsonDict = {"reply_users": [], "reply_users_count": 0, "reply_count": 0,
                               "ts": message["ts"], "channel_name": channel.name,
                               "team_id": team.id, "share_user_id": message.get("user", ""),
                               "source": "UNKNOWN", "is_silent_share": False}
            if thread_ts:
                share["thread_ts"] = thread_ts
            stored.shares.setdefault(channel.id, []).append(share)
            if channel.is_private:
                stored.private_channels.add(channel.id)
        message["files"] = [f.to_api(self.base_url, team.domain) for f in files]
        self.publish(team, channel, message, thread_ts=thread_ts)

    def bot_message(self, team: Team, *, text: str, extra: JsonDict | None = None) -> JsonDict:
        """A message as the app posts it (chat.postMessage & co.)."""
        message: JsonDict = {"user": team.bot_user_id, "type": "message", "ts": self.clock.next(),
                             "bot_id": team.bot_id, "app_id": team.app_id, "text": text,
                             "team": team.id, "bot_profile": team.bot_profile()}
        if extra:
            message.update(extra)
        return message

    # -- the tiny human endpoint ----------------------------------------------------------
    async def human_post(self, params: dict[str, str]) -> JsonDict:
        """POST/GET /_sim/post: {"team", "channel", "user", "text", "thread_ts"?} by id or
        name; the user joins the channel first if needed."""
        team = self.team(params.get("team") or next(iter(self.teams)))
        channel = team.find_channel(params.get("channel", ""))
        if channel is None:
            raise SimulatorError(f"no channel {params.get('channel')!r} in {team.id}")
        user = team.find_user(params.get("user", ""))
        if user is None:
            raise SimulatorError(f"no user {params.get('user')!r} in {team.id}")
        if user.id not in channel.members:
            await self.join_channel(team, channel.id, user.id)
        ts = await self.post_message(team, channel.id, user.id, params.get("text", ""),
                                     thread_ts=params.get("thread_ts") or None)
        return {"ok": True, "team": team.id, "channel": channel.id, "user": user.id, "ts": ts}

    def transcript(self, params: dict[str, str]) -> JsonDict:
        """GET /_sim/messages: {"team"?, "channel", "limit"?} by id or name: the channel's
        latest top-level messages (default 20), oldest first, as a person reads them: who
        wrote it (a person's name, or the name an app posted under), the text, and a
        thread's replies under its parent. Read-only."""
        team = self.team(params.get("team") or next(iter(self.teams)))
        channel = team.find_channel(params.get("channel", ""))
        if channel is None:
            raise SimulatorError(f"no channel {params.get('channel')!r} in {team.id}")
        try:
            limit = int(params.get("limit") or 20)
        except ValueError:
            raise SimulatorError(f"limit {params.get('limit')!r} is not a number") from None
        if limit < 1:
            raise SimulatorError("limit must be at least 1")

        def entry(message: JsonDict) -> JsonDict:
            user = team.users.get(str(message.get("user") or ""))
            author = (message.get("username") if message.get("bot_id") else None) or (
                (user.display_name or user.real_name or user.name) if user else None)
            out: JsonDict = {"ts": message.get("ts"),
                             "from": author or message.get("bot_id") or "?",
                             "text": message.get("text", "")}
            for key in ("user", "subtype"):
                if message.get(key):
                    out[key] = message[key]
            if message.get("files"):
                out["files"] = [f.get("name") for f in message["files"]]
            if message.get("reactions"):
                out["reactions"] = {r["name"]: r["count"] for r in message["reactions"]}
            if message.get("edited"):
                out["edited"] = True
            return out

        listed = []
        for message in channel.history()[-limit:]:
            item = entry(message)
            if message.get("thread_ts") in (None, message.get("ts")):
                thread = channel.thread(str(message.get("ts")))
                if thread is not None and thread[1]:
                    item["replies"] = [entry(reply) for reply in thread[1]]
            listed.append(item)
        return {"ok": True, "team": team.id, "channel": channel.id,
                "channel_name": channel.name, "messages": copy.deepcopy(listed)}

    def describe(self) -> JsonDict:
        """GET /_sim/state: teams, channels and users, for a human poking at a demo."""
        return {"teams": [{
            "id": t.id, "name": t.name, "bot_user_id": t.bot_user_id, "bot_id": t.bot_id,
            "app_id": t.app_id, "socket_mode": t.socket_mode, "events_url": t.events_url,
            "sockets": self.socket_count(t),
            "users": [{"id": u.id, "name": u.name, "real_name": u.real_name}
                      for u in t.users.values()],
            "channels": [{"id": c.id, "name": c.name, "is_private": c.is_private,
                          "members": list(c.members), "messages": len(c.history())}
                         for c in t.channels.values()],
        } for t in self.teams.values()]}


def _number_attachments(attachments: list[JsonDict]) -> list[JsonDict]:
    """Slack numbers attachments ("id": 1, 2, ...)."""
    return [{"id": index, **attachment} if "id" not in attachment else dict(attachment)
            for index, attachment in enumerate(attachments, start=1)]


def _with_block_ids(blocks: list[JsonDict]) -> list[JsonDict]:
    """Slack gives every block without a block_id one."""
    return [block if "block_id" in block else {**block, "block_id": block_id()}
            for block in blocks]

