"""Mounts the provisioning API on the appservice listener and answers its errors.

Every answer is JSON. A refusal is ``{"errcode": "...", "error": "<a sentence>"}`` with
400 (bad input), 401 (no or wrong token), 403 (not a bridge admin), 404 (no such room,
link or route), 405 (no such method on a path), 409 (conflicts with the state elsewhere) or
503 (a network or the homeserver cannot be reached); a refused request has changed nothing:
the token is checked, then the body against the route's schema, before the handler runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.admin import actions

# core_routes' and plan_routes' declarations fill CORE_ROUTES.
from bridge.admin.api import (  # noqa: F401
    PREFIX,
    core_routes,
    openapi,
    people_routes,
    plan_routes,
)
from bridge.admin.api.auth import Authenticator, Unauthorized
from bridge.admin.api.routes import (
    CORE_ROUTES,
    ApiCall,
    BadRequest,
    Handler,
    Route,
    check_body,
)
from bridge.admin.page import page as admin_page
from bridge.core.errors import CommandError

if TYPE_CHECKING:
    from bridge.app import Bridge
    from bridge.core.connector import Connector

log = logging.getLogger("bridge.api")

MAX_BODY_BYTES = 1024 * 1024


def error_response(status: int, errcode: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status,
                             headers=headers)


def all_routes(bridge: Bridge) -> list[Route]:
    """The core's routes, the rooms' and each enabled network's links, then each network's
    own routes in registry order, then the OpenAPI document describing all of them."""
    connectors = list(bridge.hub.connectors.values())
    routes = list(CORE_ROUTES) + core_routes.room_routes(connectors) + \
        people_routes.people_routes(connectors)
    for connector in connectors:
        routes += [dataclasses.replace(route, handler=_while_started(connector, route.handler))
                   for route in connector.api_routes()]
    routes.append(openapi.document_route(bridge, routes))
    return routes


def _while_started(connector: Connector, handler: Handler) -> Handler:
    """A network's endpoint answers 503 while its network is not started, as its bot
    commands do."""
    async def handle(call: ApiCall) -> tuple[int, Any]:
        actions.started_connector(call.bridge.hub, connector.network)
        return await handler(call)

    return handle


def mount(app: web.Application, bridge: Bridge) -> None:
    """Add the API's routes and the admin page to the listener; nothing at all when no
    shared secret is set (then every API and page path is a plain 404)."""
    if not bridge.config.provisioning.shared_secret:
        return
    auth = Authenticator(bridge)
    routes = all_routes(bridge)
    for route in routes:
        app.router.add_route(route.method, PREFIX + route.path, _serve(bridge, auth, route))
    # Anything else under the prefix: a JSON 404 (or 405) rather than aiohttp's text page.
    app.router.add_route("*", PREFIX + "/{rest:.*}", _unknown(routes))
    # The admin page: a front-end to these routes, with the same authentication.
    admin_page.mount(app, bridge, auth)


def _serve(bridge: Bridge, auth: Authenticator, route: Route) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            actor = await auth.actor(request) if not route.public else None
            body: dict[str, Any] = {}
            if route.request is not None:
                body = await _body(request)
                check_body(route.request, body)
            status, answer = await route.handler(ApiCall(bridge, actor, request, body))
        except Unauthorized as exc:
            return error_response(exc.status, exc.errcode, str(exc),
                                  {"WWW-Authenticate": 'Bearer realm="bridge"'})
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


def _unknown(routes: list[Route]) -> Any:
    # Each declared path as a pattern, to tell "no such path" (404) from "not with this
    # method" (405, saying which methods there are).
    patterns = [(re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route.path))
                            + "$"), route.method) for route in routes]

    async def unknown(request: web.Request) -> web.Response:
        path = request.match_info["rest"]
        allowed = sorted({method for pattern, method in patterns
                          if pattern.match("/" + path)})
        if allowed:
            return error_response(405, "M_UNRECOGNIZED",
                                  f"{request.path} answers {', '.join(allowed)}, not "
                                  f"{request.method}.", {"Allow": ", ".join(allowed)})
        return error_response(404, "M_UNRECOGNIZED",
                              f"There is no {request.method} {request.path} in this API; "
                              f"GET {PREFIX}/openapi.json lists what there is.")

    return unknown
