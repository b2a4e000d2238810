"""Declaring an endpoint of the provisioning API.

One :class:`Route` carries the handler and everything ``/openapi.json`` says about it, so
the document cannot drift from what the server does. Handlers get an :class:`ApiCall` and
return ``(status, body)``; they raise :class:`bridge.core.errors.CommandError` (or a
subclass) to refuse, which the server turns into ``{"errcode", "error"}`` with the error's
status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge.admin.audit import Actor
from bridge.core.errors import CommandError

if TYPE_CHECKING:
    from bridge.app import Bridge


class BadRequest(CommandError):
    """The request itself is malformed (not JSON, a field missing or of the wrong type)."""

    errcode = "M_BAD_JSON"


@dataclass(slots=True)
class ApiCall:
    """One authenticated request, as a handler sees it."""

    bridge: Bridge
    actor: Actor
    request: web.Request
    #: The JSON body (an object), or {} for a request without one.
    body: dict[str, Any]

    def param(self, name: str) -> str:
        """A path parameter (``{room_id}``), URL-decoded."""
        return self.request.match_info[name]

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.request.query.get(name, default)

    def field(self, name: str, kind: type = str, *, required: bool = True) -> Any:
        """A field of the JSON body, checked: a missing or mistyped one is a 400 naming it."""
        if name not in self.body or self.body[name] is None:
            if required:
                raise BadRequest(f"The request body needs the field `{name}`.")
            return None
        value = self.body[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadRequest(f"The field `{name}` must be a {_KIND_NAMES.get(kind, kind)}.")
        return value


_KIND_NAMES = {str: "string", int: "number", bool: "boolean (true or false)", list: "list",
               dict: "JSON object"}

Handler = Callable[[ApiCall], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    #: Below the API's prefix, with ``{parameters}``: ``/rooms/{room_id}/links/slack``.
    path: str
    handler: Handler
    summary: str
    #: JSON Schema of the request body (None: no body).
    request: dict[str, Any] | None = None
    #: JSON Schema of a successful answer.
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    #: Query parameters: name -> (JSON Schema, description).
    query: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    #: Error statuses this endpoint may answer besides 400/401/403 (e.g. 404, 409).
    errors: tuple[int, ...] = ()
    #: The tag the OpenAPI document groups it under.
    tag: str = "bridge"
    #: Answered with this content type instead of JSON (the OpenAPI document itself is
    #: JSON; the report's CSV is not).
    success_status: int = 200


#: The core's routes, in the order they are declared (bridge/admin/api/core_routes.py).
CORE_ROUTES: list[Route] = []


def api_route(method: str, path: str, summary: str, **options: Any) -> Callable[[Handler],
                                                                                 Handler]:
    """Declare one of the core's endpoints."""
    def register(handler: Handler) -> Handler:
        CORE_ROUTES.append(Route(method, path, handler, summary, **options))
        return handler

    return register


# Pieces of JSON Schema the declarations share.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["errcode", "error"],
    "properties": {"errcode": {"type": "string"}, "error": {"type": "string"}}}
