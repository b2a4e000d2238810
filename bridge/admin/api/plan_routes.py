"""The provisioning API's endpoints for rollouts: rooms and spaces by alias, a remote
conversation resolved without linking it, whether a Matrix user exists. ``bridge plan`` uses
them (bridge/admin/plan/); each calls the action in bridge/admin/rooms.py, which records
itself in the audit log.
"""

from __future__ import annotations

from typing import Any

from bridge.admin import rooms
from bridge.admin.actions import started_connector
from bridge.admin.api.routes import OUTCOME_PROPERTIES, ApiCall, api_route, check_body
from bridge.core.errors import NotFoundError
from bridge.db import store

_ROOM_ANSWER: dict[str, Any] = {
    "type": "object", "required": ["room_id", "alias", "created", "changed", "message"],
    "properties": {**OUTCOME_PROPERTIES,
                   "room_id": {"type": "string"},
                   "alias": {"type": "string", "description": "#<alias>:<domain>"},
                   "created": {"type": "boolean",
                               "description": "true: the bot made it just now"}}}


@api_route("GET", "/aliases/{alias}", "the room an alias names (its local part, or #a:domain)",
           response={"type": "object", "required": ["room_id", "alias"],
                     "properties": {"room_id": {"type": "string"},
                                    "alias": {"type": "string"}}},
           errors=(404, 503), tag="rollout")
async def alias(call: ApiCall) -> tuple[int, dict[str, Any]]:
    hub = call.bridge.hub
    localpart = rooms.checked_localpart(call.param("alias"))
    room_id = await rooms.room_by_alias(hub, localpart)
    if room_id is None:
        raise NotFoundError(f"No room has the alias {rooms.full_alias(hub, localpart)}.")
    return 200, {"room_id": room_id, "alias": rooms.full_alias(hub, localpart)}


@api_route("POST", "/rooms", "find or create a room (or a space) by its alias",
           description="A room with the alias is used as it is (the bot joins it if it may; "
                       "409 if it may not); else the bot creates it with that alias and name "
                       "and invites `admins` with power level 100. The bridge records its "
                       "name, alias and `department`. 201 when created, 200 when it was "
                       "there.",
           request={"type": "object", "additionalProperties": False, "required": ["alias"],
                    "properties": {
                        "alias": {"type": "string", "minLength": 1,
                                  "description": "the alias's local part"},
                        "name": {"type": ["string", "null"]},
                        "admins": {"type": "array", "items": {"type": "string"},
                                   "description": "invited with power level 100 to a new "
                                                  "room"},
                        "department": {"type": ["string", "null"]},
                        "space": {"type": "boolean",
                                  "description": "create a Matrix space, not a room"},
                        "parent": {"type": ["string", "null"],
                                   "description": "the space (room ID) a new room belongs "
                                                  "to: its m.space.parent from the start"}}},
           response=_ROOM_ANSWER, errors=(409, 503), tag="rollout")
async def find_or_create(call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = call.body
    outcome = await rooms.find_or_create_room(
        call.bridge.hub, call.actor, body["alias"], body.get("name"),
        admins=list(body.get("admins") or []), department=body.get("department"),
        space=bool(body.get("space")), parent=body.get("parent"))
    return (201 if outcome.created else 200), {
        "room_id": outcome.room_id, "alias": outcome.alias, "created": outcome.created,
        "changed": outcome.changed, "message": outcome.message}


@api_route("PUT", "/rooms/{room_id}/department", "put a room in a department (or none)",
           description="The progress report groups rooms by department.",
           request={"type": "object", "additionalProperties": False,
                    "required": ["department"],
                    "properties": {"department": {"type": ["string", "null"]}}},
           response={"type": "object", "required": ["changed", "message", "department"],
                     "properties": {**OUTCOME_PROPERTIES,
                                    "department": {"type": ["string", "null"]}}},
           errors=(404,), tag="rollout")
async def department(call: ApiCall) -> tuple[int, dict[str, Any]]:
    room_id = call.param("room_id")
    value = (call.body.get("department") or "").strip() or None
    changed = await rooms.set_department(call.bridge.hub, call.actor, room_id, value)
    where = f"in the department {value}" if value else "in no department"
    return 200, {"changed": changed, "department": value,
                 "message": f"{room_id} is {'now' if changed else 'already'} {where}."}


@api_route("GET", "/spaces/{space_id}/rooms", "the rooms a space holds",
           response={"type": "object", "required": ["rooms"],
                     "properties": {"rooms": {"type": "array", "items": {"type": "string"}}}},
           errors=(404, 503), tag="rollout")
async def space_rooms(call: ApiCall) -> tuple[int, dict[str, Any]]:
    return 200, {"rooms": await rooms.space_children(call.bridge.hub, call.param("space_id"))}


@api_route("PUT", "/spaces/{space_id}/rooms/{room_id}", "put a room in a space",
           description="Sets m.space.child in the space and m.space.parent in the room; "
                       "the bot must be in both, with the power to change them.",
           response={"type": "object", "required": ["changed", "message"],
                     "properties": OUTCOME_PROPERTIES},
           errors=(404, 409, 503), tag="rollout")
async def space_child(call: ApiCall) -> tuple[int, dict[str, Any]]:
    space_id, room_id = call.param("space_id"), call.param("room_id")
    changed = await rooms.add_to_space(call.bridge.hub, call.actor, space_id, room_id)
    return 200, {"changed": changed,
                 "message": f"{room_id} is {'now' if changed else 'already'} in the space "
                            f"{space_id}."}


@api_route("POST", "/networks/{network}/resolve",
           "which remote conversation a link request names, without linking it",
           description="The body is that of `PUT /rooms/{room_id}/links/<network>`; refusals "
                       "are those the link would give (an unknown channel: 400). Resolving "
                       "may act on the network as linking would (Slack: the app joins a "
                       "public channel it is not in).",
           request={"type": "object"},
           response={"type": "object", "required": ["remote_id", "remote_name",
                                                    "linked_room_id"],
                     "properties": {"remote_id": {"type": "string"},
                                    "remote_name": {"type": ["string", "null"]},
                                    "linked_room_id": {
                                        "type": ["string", "null"],
                                        "description": "the room it is linked to, if any"}}},
           errors=(404, 503), tag="rollout")
async def resolve(call: ApiCall) -> tuple[int, dict[str, Any]]:
    hub = call.bridge.hub
    connector = started_connector(hub, call.param("network"))
    check_body(connector.api_link_schema(), call.body)
    remote_id, extra = connector.api_link_request(call.body)
    # No room yet: resolving needs none (the ID is the network's, not the room's).
    target = await connector.resolve_link(hub, "", remote_id, extra)
    async with hub.db.sessions() as session:
        taken = await store.link_by_remote(session, connector.network, target.remote_id)
    return 200, {"remote_id": target.remote_id, "remote_name": target.remote_name,
                 "linked_room_id": taken.room_id if taken is not None else None}


@api_route("GET", "/users/{user_id}", "whether the homeserver knows a Matrix user",
           response={"type": "object", "required": ["user_id", "exists"],
                     "properties": {"user_id": {"type": "string"},
                                    "exists": {"type": "boolean"}}},
           errors=(404, 503), tag="rollout")
async def user(call: ApiCall) -> tuple[int, dict[str, Any]]:
    user_id = call.param("user_id")
    if not await rooms.user_exists(call.bridge.hub, user_id):
        raise NotFoundError(f"The homeserver knows no user {user_id}.")
    return 200, {"user_id": user_id, "exists": True}
