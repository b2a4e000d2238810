"""``GET /openapi.json``: an OpenAPI 3.1 document built from the route declarations (the
core's, each network's link routes, each network's own), so it describes exactly what the
server answers.

The document itself needs no token: it describes the API and holds no data of the bridge.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from bridge import __version__
from bridge.admin.api import PREFIX
from bridge.admin.api.routes import ERROR_SCHEMA, ApiCall, Route

if TYPE_CHECKING:
    from bridge.app import Bridge

#: Answered by every route that takes a token or a body.
COMMON_ERRORS = (400, 401, 403)

_ERROR_MEANINGS = {
    400: "bad input: the sentence names what is wrong; nothing was changed",
    401: "no token, or neither the shared secret nor a valid Matrix access token",
    403: "a valid Matrix user who is not a bridge admin (bridge.admins)",
    404: "no such room, link, subscriber or delivery",
    409: "conflicts with the state elsewhere (e.g. the channel is linked to another room)",
    503: "a network or the homeserver cannot be reached, or is not started; try again",
}

DESCRIPTION = f"""\
The bridge's provisioning API, served on the appservice listener under `{PREFIX}/`.

Authentication: `Authorization: Bearer <token>`, where the token is either the bridge's
`provisioning.shared_secret` (acting as the operator) or the Matrix access token of a bridge
admin (`bridge.admins`), which the bridge checks with the homeserver. The header
`X-Bridge-Via: plan` or `admin-page` says where a call comes from in the audit log (default
`api`). This document itself (`GET {PREFIX}/openapi.json`) needs no token: it holds no data.

Every error is `{{"errcode": "...", "error": "<a sentence>"}}`; a refused request changes
nothing. Every call is idempotent: a `PUT` that finds its state already there answers 200
with that state and `"changed": false`."""


def _operation_id(route: Route) -> str:
    words = re.sub(r"[{}]", "", route.path).replace(".", "_").strip("/").split("/")
    return "_".join([route.method.lower(), *(w.replace("-", "_") for w in words if w)])


def _responses(route: Route) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": route.response}}
    for kind in route.also_as:
        content[kind] = {"schema": {"type": "string"}}
    success = {"description": HTTPStatus(route.success_status).phrase, "content": content}
    answers: dict[str, Any] = {str(route.success_status): success}
    common = () if route.public else COMMON_ERRORS
    for status in sorted(set(common) | set(route.errors)):
        answers[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    return answers


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(route), "summary": route.summary, "tags": [route.tag],
        "responses": _responses(route)}
    if route.description:
        operation["description"] = route.description
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in route.path_parameters]
    parameters += [{"name": name, "in": "query", "required": False, "schema": schema,
                    "description": text} for name, (schema, text) in route.query.items()]
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {
            "required": bool(route.request.get("required")),
            "content": {"application/json": {"schema": route.request}}}
    if route.public:
        operation["security"] = []
    return operation


def document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    statuses = sorted({*COMMON_ERRORS, *(s for r in routes for s in r.errors)})
    return {
        "openapi": "3.1.0",
        "info": {"title": "matrix-hub-bridge provisioning API", "version": __version__,
                 "description": DESCRIPTION},
        "servers": [{"url": PREFIX}],
        "security": [{"bearer": []}],
        "tags": [{"name": tag} for tag in dict.fromkeys(route.tag for route in routes)],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "the provisioning shared secret (the operator), or a bridge "
                               "admin's Matrix access token"}},
            "schemas": {"Error": ERROR_SCHEMA},
            "responses": {f"Error{status}": {
                "description": _ERROR_MEANINGS.get(status, HTTPStatus(status).phrase),
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}}
                for status in statuses},
        },
    }


def document_route(bridge: Bridge, routes: list[Route]) -> Route:
    """The route serving the document of ``routes`` (the list it is itself added to)."""
    async def serve(call: ApiCall) -> tuple[int, dict[str, Any]]:
        return 200, document(routes)

    return Route("GET", "/openapi.json", serve, "this document (OpenAPI 3.1); needs no token",
                 public=True, tag="meta")
