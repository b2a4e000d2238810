"""The simulator's HTTP side (aiohttp): Web API, upload URLs, file and avatar URLs, the Socket
Mode websocket, and /_sim/ endpoints for people poking at a demo.

    /api/<method>                      Web API (GET or POST; query, form or JSON arguments)
    /upload/v1/<key>                   upload_url of files.getUploadURLExternal
    /files-pri/<team>-<file>/<name>    url_private (Authorization: Bearer <bot token>)
    /files-pri/<team>-<file>/download/<name>, /files-tmb/...   url_private_download, thumbnails
    /avatars/<team>/<id>_<size>.png    profile images, bot icons, team icon (public)
    /emoji/<team>/<name>.<ext>         custom emoji images (public)
    /link/?ticket=...                  Socket Mode websocket (URL from apps.connections.open)
    /_sim/post                         a person posts: JSON body or query string
                                       {team, channel, user, text[, thread_ts]}
    /_sim/state                        teams, users and channels as JSON
    /_sim/messages                     a channel's latest messages, as people read them:
                                       ?team=...&channel=...[&limit=20] (read-only)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from testkit.slack_sim.images import solid_png
from testkit.slack_sim.state import SimulatorError, Team, dumps
from testkit.slack_sim.webapi import upload_received

if TYPE_CHECKING:
    from testkit.slack_sim.simulator import SlackSimulator

log = logging.getLogger(__name__)

_dumps = dumps


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_dumps(body).encode(), status=status, headers=headers,
                        content_type="application/json", charset="utf-8")


def build_app(sim: SlackSimulator) -> web.Application:
    app = web.Application(client_max_size=1024 ** 3)

    async def api(request: web.Request) -> web.Response:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    return _json({"ok": False, "error": "invalid_json"})
                if isinstance(body, dict):
                    params.update(body)
            elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                for key, value in form.items():
                    params[key] = value.file.read() if isinstance(value, web.FileField) else value
            else:
                await request.read()
        token = params.pop("token", None)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):].strip() or token
        latency = sim.latency.get(request.match_info["method"])
        if latency:
            await asyncio.sleep(latency)  # a slow answer (set with sim.slow_down)
        status, body, headers = sim.webapi.call(request.match_info["method"], params,
                                                token if isinstance(token, str) else None)
        return _json(body, status, headers)

    async def upload(request: web.Request) -> web.Response:
        if not sim.online:
            return web.Response(status=503, text="service unavailable")
        data = b""
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if isinstance(part, aiohttp.BodyPartReader):
                    data = await part.read()
                    if part.filename is not None:
                        break
        else:
            data = await request.read()
        answer = upload_received(sim, request.match_info["key"], data)
        if answer is None:
            return web.Response(status=404, text="not found")
        return web.Response(text=answer, content_type="text/plain")

    def _file_for(request: web.Request) -> tuple[Team, str] | web.Response:
        team_id, _, file_part = request.match_info["ref"].partition("-")
        file_id = file_part.partition("-")[0]
        team = sim.teams.get(team_id)
        if team is None or file_id not in team.files:
            return web.Response(status=404, text="not found")
        auth = request.headers.get("Authorization", "")
        if not auth:
            return web.Response(status=401, text="authorization required",
                                headers={"WWW-Authenticate": "Bearer"})
        if auth != f"Bearer {team.bot_token}":
            return web.Response(status=403, text="forbidden")
        return team, file_id

    async def file_private(request: web.Request) -> web.StreamResponse:
        if not sim.online:
            return web.Response(status=503, text="service unavailable")
        found = _file_for(request)
        if isinstance(found, web.Response):
            return found
        team, file_id = found
        stored = team.files[file_id]
        headers = {}
        if request.match_info.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{stored.name}"'
        return web.Response(body=stored.data, content_type=stored.mimetype, headers=headers)

    async def avatar(request: web.Request) -> web.Response:
        size = int(request.match_info["size"])
        if size <= 0 or size > 1024:
            return web.Response(status=404)
        seed = f"{request.match_info['team']}/{request.match_info['id']}"
        return web.Response(body=solid_png(seed, size), content_type="image/png")

    async def emoji(request: web.Request) -> web.Response:
        seed = f"{request.match_info['team']}/emoji/{request.match_info['name']}"
        return web.Response(body=solid_png(seed, 64), content_type="image/png")

    async def link(request: web.Request) -> web.StreamResponse:
        if not sim.online:
            return web.Response(status=503, text="service unavailable")
        team = sim.ticket_team(request.query.get("ticket", ""))
        if team is None:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        link = sim.dispatcher.attach(team, ws)
        if link is None:  # too many connections: told so, and closed
            async for _ in ws:
                pass
            return ws
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and isinstance(data.get("envelope_id"), str):
                    sim.dispatcher.ack(team, data["envelope_id"])
        finally:
            sim.dispatcher.detach(link)
        return ws

    async def human_post(request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    return _json({"ok": False, "error": "body is not JSON"}, 400)
                if isinstance(body, dict):
                    params.update({k: str(v) for k, v in body.items()})
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        try:
            return _json(await sim.human_post(params))
        except SimulatorError as exc:
            return _json({"ok": False, "error": str(exc)}, 400)

    async def state(request: web.Request) -> web.Response:
        return _json(sim.describe())

    async def messages(request: web.Request) -> web.Response:
        try:
            return _json(sim.transcript(dict(request.query)))
        except SimulatorError as exc:
            return _json({"ok": False, "error": str(exc)}, 400)

    app.router.add_route("*", "/api/{method}", api)
    app.router.add_post("/upload/v1/{key}", upload)
    app.router.add_get("/files-pri/{ref}/{download:download}/{name}", file_private)
    app.router.add_get("/files-pri/{ref}/{name}", file_private)
    app.router.add_get("/files-tmb/{ref}/{name}", file_private)
    app.router.add_get("/avatars/{team}/{id}_{size:\\d+}.png", avatar)
    app.router.add_get("/emoji/{team}/{name}.{ext}", emoji)
    app.router.add_get("/link/", link)
    app.router.add_route("*", "/_sim/post", human_post)
    app.router.add_get("/_sim/state", state)
    app.router.add_get("/_sim/messages", messages)
    return app
