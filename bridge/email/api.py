"""The email network's part of the provisioning API: a room's subscribers and its policy
(``/rooms/{room_id}/email/...``), and what the core's ``/rooms/{room_id}/links/email`` and
``GET /rooms/{room_id}`` hold for email.

Each endpoint calls the action the bot's ``email`` commands call (bridge/email/actions.py):
same checks, same sentences, same audit entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.admin.api.core_routes import room_listing
from bridge.admin.api.routes import OUTCOME_PROPERTIES, ApiCall, Route
from bridge.db.store import LinkInfo
from bridge.email import actions
from bridge.email import store as email_store
from bridge.email.store import Subscriber

if TYPE_CHECKING:
    from bridge.core.hub import Hub
    from bridge.email.connector import EmailConnector

TAG = "email"

LINK_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["localpart"],
    "properties": {"localpart": {
        "type": "string", "minLength": 1,
        "description": "the room address's part before the @ (bauamt for "
                       "bauamt@<email.domain>); the whole address is taken too"}}}

LINK_FIELDS_SCHEMA: dict[str, Any] = {
    "address": {"type": "string", "description": "the room's email address"},
    "localpart": {"type": "string"},
}

SUBSCRIBER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["address", "name", "status", "bounces"],
    "properties": {
        "address": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "status": {"type": "string",
                   "description": "active, or paused after repeated bounces"},
        "bounces": {"type": "integer"}}}

POLICY_PROPERTIES: dict[str, Any] = {
    "policy": {"type": "string", "enum": list(actions.POLICIES),
               "description": "who besides subscribers may write to the room's address: "
                              "nobody (subscribers), everyone at `domain`, anyone (open)"},
    "domain": {"type": ["string", "null"], "description": "with the `domain` policy only"},
}

ROOM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["address", "policy", "domain", "subscribers"],
    "properties": {"address": {"type": "string"}, **POLICY_PROPERTIES,
                   "subscribers": {"type": "array", "items": SUBSCRIBER_SCHEMA}}}


def subscriber_json(sub: Subscriber) -> dict[str, Any]:
    return {"address": sub.address, "name": sub.display_name, "status": sub.status,
            "bounces": sub.bounces}


async def room_state(hub: Hub, room_id: str, link: LinkInfo) -> dict[str, Any]:
    async with hub.db.sessions() as session:
        subs = await email_store.subscribers(session, room_id)
    policy, domain = actions.policy_of(link)
    return {"address": link.remote_name, "policy": policy, "domain": domain,
            "subscribers": [subscriber_json(sub) for sub in subs]}


async def _email_link(call: ApiCall) -> tuple[str, LinkInfo]:
    """The room (404 if the bot is not in it) and its email link (404 if it has none)."""
    hub = call.bridge.hub
    room_id = call.param("room_id")
    await room_listing(hub, room_id)
    return room_id, await actions.room_link(hub, room_id)


def routes(connector: EmailConnector) -> list[Route]:
    async def list_subscribers(call: ApiCall) -> tuple[int, dict[str, Any]]:
        room_id, link = await _email_link(call)
        return 200, await room_state(call.bridge.hub, room_id, link)

    async def put_subscriber(call: ApiCall) -> tuple[int, dict[str, Any]]:
        room_id, _ = await _email_link(call)
        hub = call.bridge.hub
        outcome = await actions.subscribe(hub, call.actor, room_id, call.param("address"),
                                          call.body.get("name"), connector.domain)
        address = actions.checked_address(call.param("address"), connector.domain)
        async with hub.db.sessions() as session:
            sub = await email_store.get_subscriber(session, room_id, address)
        assert sub is not None
        return 200, {"changed": outcome.changed, "message": outcome.message,
                     "subscriber": subscriber_json(sub)}

    async def delete_subscriber(call: ApiCall) -> tuple[int, dict[str, Any]]:
        room_id, _ = await _email_link(call)
        outcome = await actions.unsubscribe(call.bridge.hub, call.actor, room_id,
                                            call.param("address"))
        return 200, {"changed": outcome.changed, "message": outcome.message,
                     "address": call.param("address").strip().lower()}

    async def put_policy(call: ApiCall) -> tuple[int, dict[str, Any]]:
        room_id, _ = await _email_link(call)
        outcome = await actions.set_policy(call.bridge.hub, call.actor, room_id,
                                           call.body["policy"], call.body.get("domain"))
        link = await actions.room_link(call.bridge.hub, room_id)
        policy, domain = actions.policy_of(link)
        return 200, {"changed": outcome.changed, "message": outcome.message,
                     "address": link.remote_name, "policy": policy, "domain": domain}

    subscriber_path = "/rooms/{room_id}/email/subscribers/{address}"
    outcome_of = {"type": "object", "required": ["changed", "message"]}
    return [
        Route("GET", "/rooms/{room_id}/email/subscribers", list_subscribers,
              "the room's email address, its policy and its subscribers",
              response=ROOM_SCHEMA, errors=(404,), tag=TAG),
        Route("PUT", subscriber_path, put_subscriber,
              "mail the room to an address, which may then write in",
              description="An address already subscribed keeps its name unless one is "
                          "given; a paused one (after bounces) is made active again.",
              request={"type": "object", "additionalProperties": False, "properties": {
                  "name": {"type": ["string", "null"], "maxLength": 200,
                           "description": "the subscriber's name, shown in the room"}}},
              response={**outcome_of, "properties": {**OUTCOME_PROPERTIES,
                                                     "subscriber": SUBSCRIBER_SCHEMA}},
              errors=(404,), tag=TAG),
        Route("DELETE", subscriber_path, delete_subscriber,
              "stop mailing the room to an address",
              response={**outcome_of, "properties": {**OUTCOME_PROPERTIES,
                                                     "address": {"type": "string"}}},
              errors=(404,), tag=TAG),
        Route("PUT", "/rooms/{room_id}/email/policy", put_policy,
              "who besides subscribers may write to the room's address",
              request={"type": "object", "additionalProperties": False,
                       "required": ["policy"], "properties": POLICY_PROPERTIES},
              response={**outcome_of, "properties": {**OUTCOME_PROPERTIES,
                                                     "address": {"type": "string"},
                                                     **POLICY_PROPERTIES}},
              errors=(404,), tag=TAG),
    ]
