"""The bridge-info state event (MSC2346) that tells clients a room is bridged, and to what.

Sent under the stable ``m.bridge`` and the older ``uk.half-shot.bridge`` type, since clients
read one or the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.db.queues import NewDelivery
from bridge.db.store import LinkInfo

if TYPE_CHECKING:
    from bridge.core.connector import LinkTarget
    from bridge.core.hub import Hub

BRIDGE_INFO_TYPES = ("m.bridge", "uk.half-shot.bridge")


def state_key(bridge_id: str, network: str, remote_id: str) -> str:
    return f"{bridge_id}://{network}/{remote_id}"


def content(hub: Hub, link: LinkInfo, creator: str, target: LinkTarget) -> dict[str, Any]:
    connector = hub.connectors[link.network]
    channel: dict[str, Any] = {"id": link.remote_id}
    if link.remote_name:
        channel["displayname"] = link.remote_name
    if target.external_url:
        channel["external_url"] = target.external_url
    return {
        "bridgebot": hub.bot_mxid,
        "creator": creator,
        "protocol": {"id": link.network, "displayname": connector.display_name},
        "channel": channel,
    }


def bridge_info_deliveries(hub: Hub, link: LinkInfo, creator: str,
                           target: LinkTarget | None) -> list[NewDelivery]:
    """State events announcing the link; with ``target`` None, empty ones that withdraw it."""
    body = content(hub, link, creator, target) if target is not None else {}
    key = state_key(hub.config.appservice.id, link.network, link.remote_id)
    return [
        NewDelivery(network="matrix", room_id=link.room_id, kind="state",
                    payload={"event_type": event_type, "state_key": key, "content": body})
        for event_type in BRIDGE_INFO_TYPES
    ]
