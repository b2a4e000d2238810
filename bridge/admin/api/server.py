"""Mounts the provisioning API on the appservice listener and answers its errors.

Every answer is JSON. A refusal is ``{"errcode": "...", "error": "<a sentence>"}`` with
400 (bad input), 401 (no or wrong token), 403 (not a bridge admin), 404 (no such room,
link or route), 409 (conflicts with the state elsewhere) or 503 (a network or the homeserver
cannot be reached); a refused request has changed nothing.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

# core_routes' declarations fill CORE_ROUTES.
from bridge.admin.api import PREFIX, core_routes  # noqa: F401
from bridge.admin.api.auth import Authenticator
from bridge.admin.api.routes import CORE_ROUTES, ApiCall, BadRequest, Route
from bridge.admin.page import page as admin_page
from bridge.core.errors import CommandError

if TYPE_CHECKING:
    from bridge.app import Bridge

log = logging.getLogger("bridge.api")

MAX_BODY_BYTES = 1024 * 1024


def error_response(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


def all_routes(bridge: Bridge) -> list[Route]:
    """The core's routes, then each enabled network's, in registry order."""
    routes = list(CORE_ROUTES)
    for connector in bridge.hub.connectors.values():
        routes += connector.api_routes()
    return routes


def mount(app: web.Application, bridge: Bridge) -> None:
    """Add the API's routes and the admin page to the listener; nothing at all when no
    shared secret is set (then every API and page path is a plain 404)."""
    if not bridge.config.provisioning.shared_secret:
        return
    auth = Authenticator(bridge)
    for route in all_routes(bridge):
        app.router.add_route(route.method, PREFIX + route.path, _serve(bridge, auth, route))
    # Anything else under the prefix: a JSON 404 rather than aiohttp's text page.
    app.router.add_route("*", PREFIX + "/{rest:.*}", _unknown)
    # The admin page: a front-end to these routes, with the same authentication.
    admin_page.mount(app, bridge, auth)


def _serve(bridge: Bridge, auth: Authenticator, route: Route) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            actor = await auth.actor(request)
            body = await _body(request) if route.request is not None else {}
            status, answer = await route.handler(ApiCall(bridge, actor, request, body))
        except CommandError as exc:
            return error_response(exc.status, exc.errcode, str(exc))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "M_UNKNOWN", "Something went wrong in the bridge; its "
                                                    "log has the details.")
        if isinstance(answer, web.StreamResponse):
            return answer
        return web.json_response(answer, status=status,
                                 dumps=lambda v: json.dumps(v, ensure_ascii=False))

    return handle


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object.")
    return value


async def _unknown(request: web.Request) -> web.Response:
    return error_response(404, "M_UNRECOGNIZED",
                          f"There is no {request.method} {request.path} in this API; "
                          f"GET {PREFIX}/openapi.json lists what there is.")
