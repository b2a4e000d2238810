"""The core's endpoints of the provisioning API (networks add theirs, see
``Connector.api_routes``): status, rooms, each network's links, failed deliveries, the audit
log and the progress report.

Every changing endpoint calls the administrative action the bot command calls
(bridge/admin/actions.py), so both check and answer alike; the answer carries the action's
sentence (``message``) and whether anything changed (``changed``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bridge import __version__
from bridge.admin import actions, audit, report
from bridge.admin.api import PREFIX
from bridge.admin.api.routes import (
    OUTCOME_PROPERTIES,
    ApiCall,
    BadRequest,
    Route,
    api_route,
    check_body,
)
from bridge.core.errors import NotFoundError
from bridge.db import queues, store

if TYPE_CHECKING:
    from bridge.core.connector import Connector
    from bridge.core.hub import Hub
    from bridge.db.store import LinkInfo, RoomListing

log = logging.getLogger("bridge.api")

_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "networks", "queues", "failed_deliveries"],
    "properties": {
        "version": {"type": "string"},
        "networks": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["ok", "detail"],
            "properties": {"ok": {"type": "boolean"}, "detail": {"type": "string"}}}},
        "queues": {"type": "object", "properties": {
            "inbox": {"type": "integer"}, "outbox": {"type": "integer"}}},
        "failed_deliveries": {"type": "integer"},
    },
}


@api_route("GET", "/status", "version, each network's health, queue depths, failed deliveries",
           response=_STATUS_SCHEMA, tag="status")
async def status(call: ApiCall) -> tuple[int, dict[str, Any]]:
    bridge = call.bridge
    async with bridge.db.sessions() as session:
        inbox, outbox = await queues.count_pending(session)
        failed = await queues.count_failed(session)
    networks = {name: {"ok": health.ok, "detail": health.detail}
                for name, connector in sorted(bridge.hub.connectors.items())
                for health in [connector.state()]}
    return 200, {"version": __version__, "networks": networks,
                 "queues": {"inbox": inbox, "outbox": outbox}, "failed_deliveries": failed}


# --- rooms --------------------------------------------------------------------------------

_NULLABLE_STRING = {"type": ["string", "null"]}
LINK_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["network", "remote_id", "remote_name"],
    "description": "One link; each network adds its own fields (see its "
                   "PUT /rooms/{room_id}/links/<network>).",
    "properties": {"network": {"type": "string"}, "remote_id": {"type": "string"},
                   "remote_name": _NULLABLE_STRING},
}
_ROOM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["room_id", "name", "alias", "department", "links"],
    "properties": {
        "room_id": {"type": "string"},
        "name": {**_NULLABLE_STRING, "description": "the room's name, as last seen"},
        "alias": {**_NULLABLE_STRING, "description": "its canonical alias, as last seen"},
        "department": {**_NULLABLE_STRING,
                       "description": "the department a migration plan put it in"},
        "links": {"type": "array", "items": LINK_SCHEMA},
    },
}


def link_json(hub: Hub, link: LinkInfo) -> dict[str, Any]:
    connector = hub.connectors.get(link.network)
    fields = connector.api_link_fields(link) if connector is not None else {}
    return {"network": link.network, "remote_id": link.remote_id,
            "remote_name": link.remote_name, **fields}


def room_json(hub: Hub, room: RoomListing) -> dict[str, Any]:
    return {"room_id": room.room_id, "name": room.name, "alias": room.alias,
            "department": room.department, "links": [link_json(hub, lk) for lk in room.links]}


@api_route("GET", "/rooms", "every room the bridge bot is in, with its links",
           description="Direct chats with the bot are not listed: they cannot be linked.",
           response={"type": "object", "required": ["rooms"],
                     "properties": {"rooms": {"type": "array", "items": _ROOM_SCHEMA}}},
           tag="rooms")
async def rooms(call: ApiCall) -> tuple[int, dict[str, Any]]:
    hub = call.bridge.hub
    async with hub.db.sessions() as session:
        listed = await store.room_listings(session)
    return 200, {"rooms": [room_json(hub, room) for room in listed]}


async def room_listing(hub: Hub, room_id: str) -> RoomListing:
    """The room, if the bot is in it and it is no direct chat; else a 404 that says why."""
    async with hub.db.sessions() as session:
        found = await store.room_listings(session, room_id, direct=True)
    if not found:
        raise NotFoundError(f"The bridge bot is not in the room {room_id}. Invite "
                            f"{hub.bot_mxid} to it first.")
    if found[0].is_direct:
        raise NotFoundError(f"{room_id} is a direct chat with the bridge bot, not a room "
                            "that can be linked.")
    return found[0]


def room_detail_schema(connectors: list[Connector]) -> dict[str, Any]:
    properties = dict(_ROOM_SCHEMA["properties"])
    for connector in connectors:
        extra = connector.api_room_schema()
        if extra is not None:
            properties[connector.network] = {
                "oneOf": [extra, {"type": "null"}],
                "description": f"{connector.display_name}'s state of the room (null: none)"}
    return {**_ROOM_SCHEMA, "properties": properties}


async def room(call: ApiCall) -> tuple[int, dict[str, Any]]:
    hub = call.bridge.hub
    listing = await room_listing(hub, call.param("room_id"))
    answer = room_json(hub, listing)
    for network, connector in sorted(hub.connectors.items()):
        if connector.api_room_schema() is not None:
            answer[network] = await connector.api_room_details(hub, listing.room_id,
                                                               listing.links)
    return 200, answer


# --- links: PUT and DELETE /rooms/{room_id}/links/<network>, for each enabled network ----


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    """The same fields, none required (a DELETE names a link with them if it must)."""
    return {key: value for key, value in schema.items() if key != "required"}


def _link_answer_schema(connector: Connector, *, warnings: bool) -> dict[str, Any]:
    properties = {**OUTCOME_PROPERTIES, **LINK_SCHEMA["properties"],
                  **connector.api_link_fields_schema()}
    if warnings:
        properties["warnings"] = {
            "type": "array", "items": {"type": "string"},
            "description": "what the bot cannot do in the room for lack of power level "
                           "(empty: nothing; listed when the link is new)"}
    return {"type": "object",
            "required": ["changed", "message", "network", "remote_id", "remote_name"],
            "properties": properties}


def _put_link(connector: Connector) -> Any:
    async def put_link(call: ApiCall) -> tuple[int, dict[str, Any]]:
        hub = call.bridge.hub
        room_id = call.param("room_id")
        await room_listing(hub, room_id)
        remote_id, extra = connector.api_link_request(call.body)
        outcome = await actions.link(hub, call.actor, room_id, connector.network, remote_id,
                                     extra)
        assert outcome.link is not None
        message, warnings = outcome.message, []
        if outcome.changed:
            # As the bot's `link` says it: what the bot cannot do here for lack of power.
            try:
                report = await call.bridge.matrix.power_report(room_id)
            except Exception:  # the link is made: a failed look-up must not hide that
                log.warning("could not read the power levels of %s", room_id, exc_info=True)
                report = None
            if report is not None and report.missing:
                message += "\n" + report.describe()
                warnings = [f"{m.feature}: needs power level {m.needed} ({m.what})"
                            for m in report.missing]
        return 200, {"changed": outcome.changed, "message": message, "warnings": warnings,
                     **link_json(hub, outcome.link)}

    return put_link


def _delete_link(connector: Connector) -> Any:
    schema = _optional(connector.api_link_schema())

    async def delete_link(call: ApiCall) -> tuple[int, dict[str, Any]]:
        hub = call.bridge.hub
        room_id = call.param("room_id")
        await room_listing(hub, room_id)
        # The fields may come as query parameters too: not every client sends a DELETE body.
        fields = {name: value for name, value in call.request.query.items()
                  if name in schema.get("properties", {})}
        fields.update(call.body)
        check_body(schema, fields)
        outcome = await actions.unlink(
            hub, call.actor, room_id, connector.network, connector.api_unlink_selector(fields),
            status_hint=f"`GET {PREFIX}/rooms/{room_id}`")
        assert outcome.link is not None
        return 200, {"changed": outcome.changed, "message": outcome.message,
                     **link_json(hub, outcome.link)}

    return delete_link


def room_routes(connectors: list[Connector]) -> list[Route]:
    """``GET /rooms/{room_id}`` (its schema holds each network's part) and the link routes
    of each enabled network."""
    routes = [Route("GET", "/rooms/{room_id}",
                    room, "one room: its links and each network's state of it, under the "
                    "network's name", response=room_detail_schema(connectors),
                    errors=(404,), tag="rooms")]
    for connector in connectors:
        schema = connector.api_link_schema()
        path = f"/rooms/{{room_id}}/links/{connector.network}"
        routes.append(Route(
            "PUT", path, _put_link(connector),
            f"link the room to {connector.display_name}",
            description="Answers 200 also when the room was linked so already "
                        "(`changed`: false).",
            request=schema, response=_link_answer_schema(connector, warnings=True),
            errors=(404, 409, 503), tag="links"))
        routes.append(Route(
            "DELETE", path, _delete_link(connector),
            f"end the room's {connector.display_name} link",
            description="The body (or query parameters of the same names) says which link "
                        "when the room has several; 404 when there is no such link.",
            request=_optional(schema), response=_link_answer_schema(connector, warnings=False),
            errors=(404,), tag="links",
            query={name: (prop, "as in the body") for name, prop
                   in schema.get("properties", {}).items()}))
    return routes


# --- failed deliveries --------------------------------------------------------------------

_FAILED_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["total", "failed"],
    "properties": {
        "total": {"type": "integer", "description": "how many failed deliveries there are"},
        "failed": {"type": "array", "description": "the newest first", "items": {
            "type": "object",
            "required": ["id", "network", "room_id", "kind", "error", "failed_at"],
            "properties": {"id": {"type": "integer"}, "network": {"type": "string"},
                           "room_id": {"type": "string"}, "kind": {"type": "string"},
                           "error": {"type": "string"},
                           "failed_at": {"type": "string", "format": "date-time"}}}},
    },
}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


@api_route("GET", "/failed", "deliveries that failed for good, newest first",
           query={"room_id": ({"type": "string"}, "only this room's"),
                  "limit": ({"type": "integer", "minimum": 1, "maximum": 1000,
                             "default": 100}, "at most this many")},
           response=_FAILED_SCHEMA, tag="status")
async def failed(call: ApiCall) -> tuple[int, dict[str, Any]]:
    room_id = call.query("room_id") or None
    limit = call.query_int("limit", 100, 1, 1000)
    async with call.bridge.db.sessions() as session:
        total = await queues.count_failed(session, room_id)
        items = await queues.list_failed(session, room_id, limit)
    return 200, {"total": total, "failed": [
        {"id": item.id, "network": item.network, "room_id": item.room_id, "kind": item.kind,
         "error": item.error, "failed_at": _iso(item.failed_at)} for item in items]}


@api_route("POST", "/failed/retry", "try failed deliveries again: one, a room's, or all",
           description="`{\"id\": n}` one delivery (404 if it is not a failed one), "
                       "`{\"room_id\": ...}` a room's, `{}` all.",
           request={"type": "object", "additionalProperties": False, "properties": {
               "id": {"type": "integer"}, "room_id": {"type": "string", "minLength": 1}}},
           response={"type": "object", "required": ["changed", "message", "retried"],
                     "properties": {**OUTCOME_PROPERTIES, "retried": {"type": "integer"}}},
           errors=(404,), tag="status")
async def retry(call: ApiCall) -> tuple[int, dict[str, Any]]:
    item_id, room_id = call.body.get("id"), call.body.get("room_id")
    if item_id is not None and room_id is not None:
        raise BadRequest("Give `id` or `room_id`, not both.")
    count, outcome = await actions.retry(call.bridge.hub, call.actor, item_id=item_id,
                                         room_id=room_id)
    return 200, {"changed": outcome.changed, "message": outcome.message, "retried": count}


# --- the audit log ------------------------------------------------------------------------

_AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["entries"],
    "properties": {"entries": {"type": "array", "description": "oldest first", "items": {
        "type": "object",
        "required": ["id", "at", "actor", "via", "room_id", "action", "details"],
        "properties": {
            "id": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string", "description": "a Matrix user ID, or `operator`"},
            "via": {"type": "string", "enum": list(audit.VIA)},
            "room_id": _NULLABLE_STRING,
            "action": {"type": "string",
                       "description": "link, unlink, subscribe, unsubscribe, policy, "
                                      "retry, finish, create_room, …"},
            "details": {"type": "object"}}}}},
}
AUDIT_LIMIT = 1000


def parse_since(raw: str) -> float:
    """An ISO 8601 time (a date alone is its midnight; no zone is UTC) as a timestamp."""
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadRequest(f"The query parameter `since` must be an ISO 8601 time like "
                         f"2026-03-01 or 2026-03-01T08:00:00Z, not `{raw}`.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@api_route("GET", "/audit", "the audit log: every administrative action, who took it, how",
           query={"since": ({"type": "string", "format": "date-time"},
                            "only entries from this time on (ISO 8601; no zone is UTC)"),
                  "room_id": ({"type": "string"}, "only this room's entries"),
                  "limit": ({"type": "integer", "minimum": 1, "maximum": AUDIT_LIMIT,
                             "default": AUDIT_LIMIT}, "at most the newest this many")},
           response=_AUDIT_SCHEMA, tag="audit")
async def audit_log(call: ApiCall) -> tuple[int, dict[str, Any]]:
    since = call.query("since")
    limit = call.query_int("limit", AUDIT_LIMIT, 1, AUDIT_LIMIT)
    async with call.bridge.db.sessions() as session:
        found = await audit.entries(session, since=parse_since(since) if since else None,
                                    room_id=call.query("room_id") or None, limit=limit)
    return 200, {"entries": [entry.as_json() for entry in found]}


# --- the progress report ------------------------------------------------------------------

_COUNTED = {"type": "object", "required": ["messages", "people"],
            "properties": {"messages": {"type": "integer"},
                           "people": {"type": "integer", "description": "distinct people"}}}
_SIDES = {"type": "object", "additionalProperties": _COUNTED,
          "description": "`matrix` and each linked network: messages and distinct people"}
_SHARE = {"type": ["number", "null"], "minimum": 0, "maximum": 1,
          "description": "the share of messages written on Matrix (null: no messages)"}
_TOTALS = {"type": "object", "required": ["rooms", "sides", "messages", "matrix_share"],
           "properties": {"rooms": {"type": "integer"}, "sides": _SIDES,
                          "messages": {"type": "integer"}, "matrix_share": _SHARE}}
_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["days", "since", "until", "departments", "totals"],
    "properties": {
        "days": {"type": "integer"},
        "since": {"type": "string", "format": "date"},
        "until": {"type": "string", "format": "date"},
        "departments": {"type": "array", "items": {
            "type": "object", "required": ["name", "rooms", "totals"],
            "properties": {
                "name": {**_NULLABLE_STRING, "description": "null: rooms of no department"},
                "rooms": {"type": "array", "items": {
                    "type": "object",
                    "required": ["room_id", "name", "alias", "links", "sides", "messages",
                                 "matrix_share", "daily"],
                    "properties": {
                        "room_id": {"type": "string"}, "name": _NULLABLE_STRING,
                        "alias": _NULLABLE_STRING,
                        "links": {"type": "array", "items": LINK_SCHEMA},
                        "sides": _SIDES, "messages": {"type": "integer"},
                        "matrix_share": _SHARE,
                        "daily": {"type": "array", "description": "messages per day per side",
                                  "items": {"type": "object", "required": ["day"],
                                            "properties": {"day": {"type": "string",
                                                                   "format": "date"}},
                                            "additionalProperties": {"type": "integer"}}}}}},
                "totals": _TOTALS}}},
        "totals": _TOTALS,
    },
}
_REPORT_TYPES = {"csv": "text/csv", "text": "text/plain"}


@api_route("GET", "/report", "the progress report: per department and room, messages and "
           "people per side over the last days, and the share written on Matrix",
           query={"days": ({"type": "integer", "minimum": 1, "maximum": report.MAX_DAYS,
                            "default": report.DEFAULT_DAYS}, "the window, in UTC days up to "
                           "and including today"),
                  "format": ({"type": "string", "enum": list(report.FORMATS),
                              "default": "json"}, "json (default), csv or text, as "
                             "`bridge report --format` prints it")},
           response=_REPORT_SCHEMA, also_as=tuple(_REPORT_TYPES.values()), tag="report")
async def progress_report(call: ApiCall) -> tuple[int, Any]:
    days = call.query_int("days", report.DEFAULT_DAYS, 1, report.MAX_DAYS)
    fmt = call.query("format") or "json"
    if fmt not in report.FORMATS:
        raise BadRequest(f"The query parameter `format` must be one of "
                         f"{', '.join(report.FORMATS)}, not `{fmt}`.")
    built = await report.build_report(call.bridge.db, days=days)
    if fmt == "json":
        return 200, built
    return 200, web.Response(text=report.render(built, fmt), content_type=_REPORT_TYPES[fmt],
                             charset="utf-8")
