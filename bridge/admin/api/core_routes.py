"""The core's endpoints of the provisioning API (networks add theirs, see
``Connector.api_routes``)."""

from __future__ import annotations

from typing import Any

from bridge import __version__
from bridge.admin.api.routes import ApiCall, api_route
from bridge.db import queues

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
           response=_STATUS_SCHEMA)
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
