"""The Slack network's part of the provisioning API: the cutover of a linked channel,
``POST /rooms/{room_id}/links/slack/finish``. It calls the action the bot's ``slack finish``
calls (bridge/slack/actions.py): same checks, same sentences, same audit entry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.admin.api import PREFIX
from bridge.admin.api.core_routes import link_json, room_listing
from bridge.admin.api.routes import OUTCOME_PROPERTIES, ApiCall, Route
from bridge.slack import actions

if TYPE_CHECKING:
    from bridge.slack.connector import SlackConnector

TAG = "links"


def routes(connector: SlackConnector) -> list[Route]:
    async def finish(call: ApiCall) -> tuple[int, dict[str, Any]]:
        hub = call.bridge.hub
        room_id = call.param("room_id")
        await room_listing(hub, room_id)  # 404 if the bot is not in the room
        outcome = await actions.finish(
            hub, call.actor, room_id, connector.api_unlink_selector(call.body),
            status_hint=f"`GET {PREFIX}/rooms/{room_id}`",
            usage="the body's `channel` (and `workspace`)", notify_room=True)
        assert outcome.link is not None
        return 200, {"changed": outcome.changed, "message": outcome.message,
                     **link_json(hub, outcome.link)}

    link_fields = connector.api_link_schema()["properties"]
    return [Route(
        "POST", "/rooms/{room_id}/links/slack/finish", finish,
        "finish the room's Slack channel: point it at the room, end the link",
        description="Posts and pins a message in the Slack channel saying the conversation "
                    "moved to this room (its matrix.to link and alias), ends the link as "
                    "DELETE does, archives the channel when `slack.archive_on_finish` is "
                    "true (a refusal by the workspace is said in `message`), and tells the "
                    "room. The body says which link when the room has several. 404: no "
                    "such link; a failure in Slack before the link ends leaves it in place.",
        request={"type": "object", "additionalProperties": False,
                 "properties": link_fields},
        response={"type": "object",
                  "required": ["changed", "message", "network", "remote_id"],
                  "properties": {**OUTCOME_PROPERTIES, "network": {"type": "string"},
                                 "remote_id": {"type": "string"},
                                 "remote_name": {"type": ["string", "null"]},
                                 **connector.api_link_fields_schema()}},
        errors=(404, 503), tag=TAG)]
