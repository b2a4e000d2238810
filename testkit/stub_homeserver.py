"""A stub Matrix homeserver for benchmarks: answers the client-server calls the bridge makes.

It is not a homeserver: it keeps no rooms and checks nothing but the appservice token. It
answers what the bridge calls at start-up (register, displayname, appservice ping) and
while it works (join, state, joined members, send), and records the time each sent event
arrives so that a benchmark can measure end-to-end latency. Every room exists, the bot
has power level 100 in it, and every call the stub does not know is logged and answered
with 404, so a benchmark can report calls it did not expect.

Run alone for manual experiments::

    python -m testkit.stub_homeserver --port 8008 --domain bench --as-token <as_token>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("stub_homeserver")

SPEC_VERSIONS = ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9",
                 "v1.10", "v1.11"]


@dataclass(slots=True)
class SentEvent:
    """An event the bridge sent into a room, with its arrival time (time.monotonic())."""

    arrived: float
    room_id: str
    sender: str
    event_type: str
    txn_id: str
    event_id: str
    content: dict[str, Any]

    @property
    def in_reply_to(self) -> str | None:
        relates = self.content.get("m.relates_to")
        if isinstance(relates, dict):
            reply = relates.get("m.in_reply_to")
            if isinstance(reply, dict) and isinstance(reply.get("event_id"), str):
                return str(reply["event_id"])
        return None


@dataclass
class StubState:
    """What the stub has seen; read by the benchmark."""

    registered: set[str] = field(default_factory=set)
    displaynames: dict[str, str] = field(default_factory=dict)
    joined: dict[str, set[str]] = field(default_factory=dict)  # room -> users that joined
    sent: list[SentEvent] = field(default_factory=list)
    pings: int = 0
    calls: Counter[str] = field(default_factory=Counter)  # "METHOD route" -> count
    unknown: Counter[str] = field(default_factory=Counter)  # "METHOD path" -> count


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class StubHomeserver:
    """The stub's aiohttp application plus its recorded state.

    ``on_sent`` is called (synchronously, in the event loop) for every event the bridge
    sends, right when it arrives; a benchmark uses it to wake up waiters.
    """

    def __init__(self, domain: str, as_token: str, bot_mxid: str | None = None,
                 admin: str | None = None) -> None:
        self.domain = domain
        self.as_token = as_token
        # Requests without ?user_id= act as the appservice's own user, the bridge bot.
        self.bot_mxid = bot_mxid or f"@bridgebot:{domain}"
        self.admin = admin or f"@admin:{domain}"
        self.state = StubState()
        self._event_ids = itertools.count(1)
        self._txns: dict[tuple[str, str], str] = {}  # (user, txn_id) -> event id
        self.on_sent: list[Callable[[SentEvent], None]] = []
        self.app = web.Application(middlewares=[self._middleware])
        r = self.app.router
        r.add_get("/_matrix/client/versions", self.versions)
        r.add_post("/_matrix/client/v3/register", self.register)
        r.add_get("/_matrix/client/v3/account/whoami", self.whoami)
        r.add_get("/_matrix/client/v3/profile/{user}/displayname", self.get_displayname)
        r.add_put("/_matrix/client/v3/profile/{user}/displayname", self.set_displayname)
        r.add_get("/_matrix/client/v3/profile/{user}/avatar_url", self.ok)
        r.add_put("/_matrix/client/v3/profile/{user}/avatar_url", self.ok)
        r.add_post("/_matrix/client/v1/appservice/{id}/ping", self.appservice_ping)
        r.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", self.send)
        r.add_put("/_matrix/client/v3/rooms/{room}/state/{type}", self.put_state)
        r.add_put("/_matrix/client/v3/rooms/{room}/state/{type}/", self.put_state)
        r.add_put("/_matrix/client/v3/rooms/{room}/state/{type}/{key}", self.put_state)
        # mautrix asks for an empty state key with a trailing slash: .../state/m.room.name/
        r.add_get("/_matrix/client/v3/rooms/{room}/state/{type}", self.get_state)
        r.add_get("/_matrix/client/v3/rooms/{room}/state/{type}/", self.get_state)
        r.add_get("/_matrix/client/v3/rooms/{room}/state/{type}/{key}", self.get_state)
        r.add_post("/_matrix/client/v3/rooms/{room}/join", self.join)
        r.add_post("/_matrix/client/v3/join/{room}", self.join)
        r.add_post("/_matrix/client/v3/rooms/{room}/leave", self.ok)
        r.add_post("/_matrix/client/v3/rooms/{room}/invite", self.ok)
        r.add_get("/_matrix/client/v3/rooms/{room}/joined_members", self.joined_members)
        r.add_get("/_matrix/client/v3/rooms/{room}/members", self.members)
        r.add_route("*", "/{tail:.*}", self.unknown)
        self._runner: web.AppRunner | None = None

    # --- plumbing --------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else request.path
        self.state.calls[f"{request.method} {name}"] += 1
        if request.path != "/_matrix/client/versions" and handler != self.unknown:
            header = request.headers.get("Authorization", "")
            token = header[7:] if header.startswith("Bearer ") else request.query.get(
                "access_token", "")
            if token != self.as_token:
                return _error(401, "M_UNKNOWN_TOKEN", "Unknown access token")
        response: web.StreamResponse = await handler(request)
        return response

    def _user(self, request: web.Request) -> str:
        """The user an appservice request acts as (``user_id`` query), default the bot."""
        return request.query.get("user_id", "") or self.bot_mxid

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- handlers --------------------------------------------------------------------

    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": SPEC_VERSIONS, "unstable_features": {}})

    async def ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def whoami(self, request: web.Request) -> web.Response:
        return web.json_response({"user_id": self._user(request)})

    async def register(self, request: web.Request) -> web.Response:
        body = await request.json()
        localpart = str(body.get("username", ""))
        user_id = f"@{localpart}:{self.domain}"
        if user_id in self.state.registered:
            return _error(400, "M_USER_IN_USE", "User ID already taken.")
        self.state.registered.add(user_id)
        return web.json_response({"user_id": user_id, "home_server": self.domain})

    async def get_displayname(self, request: web.Request) -> web.Response:
        name = self.state.displaynames.get(request.match_info["user"])
        return web.json_response({} if name is None else {"displayname": name})

    async def set_displayname(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.state.displaynames[request.match_info["user"]] = str(body.get("displayname"))
        return web.json_response({})

    async def appservice_ping(self, request: web.Request) -> web.Response:
        self.state.pings += 1
        return web.json_response({"duration_ms": 1})

    async def send(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        room_id = request.match_info["room"]
        sender = self._user(request)
        txn_id = request.match_info["txn"]
        key = (sender, txn_id)
        if key in self._txns:  # a retried send: same answer, recorded once
            return web.json_response({"event_id": self._txns[key]})
        content = await request.json()
        event_id = f"$stub{next(self._event_ids)}"
        self._txns[key] = event_id
        sent = SentEvent(arrived=arrived, room_id=room_id, sender=sender,
                         event_type=request.match_info["type"], txn_id=txn_id,
                         event_id=event_id, content=content if isinstance(content, dict) else {})
        self.state.sent.append(sent)
        for callback in self.on_sent:
            callback(sent)
        return web.json_response({"event_id": event_id})

    async def put_state(self, request: web.Request) -> web.Response:
        return web.json_response({"event_id": f"$stub{next(self._event_ids)}"})

    async def join(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        self.state.joined.setdefault(room_id, set()).add(self._user(request))
        return web.json_response({"room_id": room_id})

    def _state_content(self, room_id: str, event_type: str,
                       state_key: str) -> dict[str, Any] | None:
        bot_like = self._user_ids_in(room_id)
        if event_type == "m.room.power_levels":
            return {"users": {self.admin: 100, **{u: 100 for u in bot_like}},
                    "users_default": 0, "events_default": 0, "state_default": 50,
                    "invite": 0, "kick": 50, "ban": 50, "redact": 50, "events": {}}
        if event_type == "m.room.create":
            return {"creator": self.admin, "room_version": "10"}
        if event_type == "m.room.name":
            return {"name": f"Bench room {room_id}"}
        if event_type == "m.room.member" and (state_key == self.admin or state_key in bot_like):
            return {"membership": "join"}
        return None

    def _user_ids_in(self, room_id: str) -> set[str]:
        return self.state.joined.get(room_id, set())

    async def get_state(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        event_type = request.match_info["type"]
        state_key = request.match_info.get("key", "")
        content = self._state_content(room_id, event_type, state_key)
        if content is None:
            return _error(404, "M_NOT_FOUND", "Event not found.")
        if request.query.get("format") == "event":
            return web.json_response({
                "type": event_type, "state_key": state_key, "room_id": room_id,
                "sender": self.admin, "event_id": f"${event_type}:{room_id}",
                "origin_server_ts": 0, "content": content,
            })
        return web.json_response(content)

    async def joined_members(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        users = {self.admin, f"@user:{self.domain}", *self._user_ids_in(room_id)}
        return web.json_response({"joined": {u: {} for u in sorted(users)}})

    async def members(self, request: web.Request) -> web.Response:
        room_id = request.match_info["room"]
        users = {self.admin, f"@user:{self.domain}", *self._user_ids_in(room_id)}
        return web.json_response({"chunk": [
            {"type": "m.room.member", "state_key": u, "sender": u, "room_id": room_id,
             "event_id": f"$member:{u}:{room_id}", "origin_server_ts": 0,
             "content": {"membership": "join"}}
            for u in sorted(users)
        ]})

    async def unknown(self, request: web.Request) -> web.Response:
        key = f"{request.method} {request.path}"
        if not self.state.unknown[key]:
            log.warning("stub homeserver: unhandled call %s", key)
        self.state.unknown[key] += 1
        return _error(404, "M_UNRECOGNIZED", "Unrecognized request")


async def _serve(args: argparse.Namespace) -> None:
    stub = StubHomeserver(args.domain, args.as_token, bot_mxid=args.bot)
    stub.on_sent.append(lambda e: print(json.dumps({"room": e.room_id, "type": e.event_type,
                                                    "body": e.content.get("body")})))
    await stub.start(args.host, args.port)
    print(f"stub homeserver on http://{args.host}:{args.port} (domain {args.domain})")
    try:
        await asyncio.Event().wait()
    finally:
        await stub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--domain", default="bench")
    parser.add_argument("--as-token", required=True)
    parser.add_argument("--bot", default=None, help="the bot's user ID (@bridgebot:DOMAIN)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
