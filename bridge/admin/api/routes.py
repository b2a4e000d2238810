"""Declaring an endpoint of the provisioning API.

One :class:`Route` carries the handler and everything ``/openapi.json`` says about it, so
the document cannot drift from what the server does: the server checks each request body
against the route's declared JSON Schema (:func:`check_body`) before the handler runs.
Handlers get an :class:`ApiCall` and return ``(status, body)``; they raise
:class:`bridge.core.errors.CommandError` (or a subclass) to refuse, which the server turns
into ``{"errcode", "error"}`` with the error's status.
"""

from __future__ import annotations

import re
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
    #: Who calls; None only on a public route (``Route.public``).
    caller: Actor | None
    request: web.Request
    #: The JSON body (an object, checked against the route's request schema), or {} for a
    #: request without one.
    body: dict[str, Any]

    @property
    def actor(self) -> Actor:
        assert self.caller is not None, "a public route takes no action"
        return self.caller

    def param(self, name: str) -> str:
        """A path parameter (``{room_id}``), URL-decoded."""
        return self.request.match_info[name]

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.request.query.get(name, default)

    def query_int(self, name: str, default: int, low: int, high: int) -> int:
        """An integer query parameter within [low, high]; anything else is a 400 naming it."""
        raw = self.request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise BadRequest(f"The query parameter `{name}` must be a whole number from {low} "
                             f"to {high}, not `{raw}`.")
        return value

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

Handler = Callable[[ApiCall], Awaitable[tuple[int, Any]]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    #: Below the API's prefix, with ``{parameters}``: ``/rooms/{room_id}/links/slack``.
    path: str
    handler: Handler
    summary: str
    #: JSON Schema of the request body (None: no body). The server checks every body
    #: against it; a body that does not fit is a 400 naming the field.
    request: dict[str, Any] | None = None
    #: JSON Schema of a successful answer.
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    #: Query parameters: name -> (JSON Schema, description).
    query: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    #: Error statuses this endpoint may answer besides 400/401/403 (e.g. 404, 409).
    errors: tuple[int, ...] = ()
    #: The tag the OpenAPI document groups it under.
    tag: str = "bridge"
    #: The status of a successful answer.
    success_status: int = 200
    #: Longer text for the OpenAPI document (what ``summary`` has no room for).
    description: str = ""
    #: Other content types a successful answer may come in (chosen by a query parameter),
    #: besides JSON: the report's ``text/csv``.
    also_as: tuple[str, ...] = ()
    #: Answered without a token (only ``/openapi.json``: it describes, it holds no data).
    public: bool = False

    @property
    def path_parameters(self) -> list[str]:
        return re.findall(r"\{([^}:]+)\}", self.path)


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

#: What every changing endpoint answers besides its state: whether it changed anything,
#: and the sentence the bot would have said.
OUTCOME_PROPERTIES: dict[str, Any] = {
    "changed": {"type": "boolean", "description": "false: it was already so; nothing changed"},
    "message": {"type": "string", "description": "what happened, as a sentence"},
}

# --- checking a body against its declared schema ------------------------------------------
# The subset of JSON Schema the declarations use (type, properties, required,
# additionalProperties, enum, minLength, maxLength, minimum, maximum, items): enough to refuse
# a malformed body with a sentence naming the field, without a schema library at run time.

_TYPE_NAMES = {"string": "a string", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "object": "a JSON object", "array": "a list",
               "null": "null"}


def _is(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    return kind == "null" and value is None


def check_body(schema: dict[str, Any], value: Any, where: str = "") -> None:
    """Raise :class:`BadRequest` naming the first field of ``value`` that ``schema`` refuses."""
    name = f"`{where}`" if where else "The request body"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            wanted = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
            raise BadRequest(f"{name} must be {wanted}.")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(f"`{c}`" for c in schema["enum"])
        raise BadRequest(f"{name} must be one of {choices}, not `{value}`.")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise BadRequest(f"{name} must not be empty." if schema["minLength"] == 1
                             else f"{name} needs at least {schema['minLength']} characters.")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise BadRequest(f"{name} may have at most {schema['maxLength']} characters.")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            raise BadRequest(f"{name} must be at least {schema['minimum']}.")
        if "maximum" in schema and value > schema["maximum"]:
            raise BadRequest(f"{name} must be at most {schema['maximum']}.")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check_body(schema["items"], item, f"{where}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        prefix = f"{where}." if where else ""
        for required in schema.get("required", []):
            if required not in value:
                raise BadRequest(f"The request body needs the field `{prefix}{required}`.")
        if schema.get("additionalProperties") is False:
            unknown = sorted(set(value) - set(properties))
            if unknown:
                known = ", ".join(f"`{p}`" for p in properties) or "none"
                raise BadRequest(f"Unknown field `{prefix}{unknown[0]}`; this request takes: "
                                 f"{known}.")
        for key, sub in properties.items():
            if key in value:
                check_body(sub, value[key], prefix + key)
