"""/openapi.json is a valid OpenAPI 3.1 document that describes exactly the routes the
server has under /_bridge/api/v1 (no more, no fewer), and an empty shared secret turns the
API off. SQLite is enough: no endpoint's description depends on the database."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import validate

from bridge.admin.api import PREFIX
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.admin.api_client import ApiClient
from tests.conftest import Homeserver, RunningBridge
from tests.email.conftest import sink as sink
from tests.slack.conftest import running_slack_and_email_bridge
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team

SAMPLE_VALUES = {"room_id": "!nirgends:bridge.test", "address": "erika@stadt.example",
                 # The rollout routes of migration plans (bridge/admin/api/plan_routes.py).
                 "alias": "bauamt", "space_id": "!raum:bridge.test", "network": "slack",
                 "user_id": "@niemand:bridge.test"}


def served_routes(bridge: RunningBridge) -> set[tuple[str, str]]:
    """(method, path below the prefix) of every route the listener has under the API."""
    assert bridge.bridge is not None
    found = set()
    for route in bridge.bridge.server.app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith(PREFIX + "/") and route.method != "*":
            found.add((route.method, path[len(PREFIX):]))
    return found


async def test_openapi_document_describes_every_route(
        homeserver: Homeserver, sqlite_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink) -> None:
    async with running_slack_and_email_bridge(homeserver, sqlite_url, slack_sim, team,
                                              sink) as running:
        anonymous = ApiClient(homeserver.bridge_port, None)
        # The document needs no token: it describes, it holds no data.
        status, document = await anonymous.get("/openapi.json")
        assert status == 200
        validate(document)
        assert document["openapi"].startswith("3.1")
        assert document["servers"] == [{"url": PREFIX}]
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"

        documented = {(method.upper(), path) for path, item in document["paths"].items()
                      for method in item}
        assert documented == served_routes(running)
        # The list, each network's link routes included.
        for wanted in (("GET", "/status"), ("GET", "/rooms"), ("GET", "/rooms/{room_id}"),
                       ("PUT", "/rooms/{room_id}/links/slack"),
                       ("DELETE", "/rooms/{room_id}/links/slack"),
                       ("PUT", "/rooms/{room_id}/links/email"),
                       ("DELETE", "/rooms/{room_id}/links/email"),
                       ("GET", "/rooms/{room_id}/email/subscribers"),
                       ("PUT", "/rooms/{room_id}/email/subscribers/{address}"),
                       ("DELETE", "/rooms/{room_id}/email/subscribers/{address}"),
                       ("PUT", "/rooms/{room_id}/email/policy"), ("GET", "/audit"),
                       ("GET", "/failed"), ("POST", "/failed/retry"), ("GET", "/report"),
                       ("GET", "/openapi.json"), ("GET", "/people"),
                       ("GET", "/people/{user_id}"), ("PUT", "/people/{user_id}"),
                       ("DELETE", "/people/{user_id}")):
            assert wanted in documented, wanted
        slack_put = document["paths"]["/rooms/{room_id}/links/slack"]["put"]
        body = slack_put["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["channel"] and "workspace" in body["properties"]
        assert {"401", "403", "404", "409"} <= set(slack_put["responses"])
        email_put = document["paths"]["/rooms/{room_id}/links/email"]["put"]
        answer = email_put["responses"]["200"]["content"]["application/json"]["schema"]
        assert "address" in answer["properties"]

        # The people routes take each linkable network's identities by the network's name.
        people_put = document["paths"]["/people/{user_id}"]["put"]
        body = people_put["requestBody"]["content"]["application/json"]["schema"]
        assert set(body["properties"]) == {"slack", "email", "replace"}
        assert body["additionalProperties"] is False
        assert {"400", "404", "409", "503"} <= set(people_put["responses"])
        answer = people_put["responses"]["200"]["content"]["application/json"]["schema"]
        assert {"changed", "message", "user_id", "links"} <= set(answer["required"])

        # Every documented path is served: without a token each answers 401, not 404/405.
        for method, path in sorted(documented - {("GET", "/openapi.json")}):
            concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_VALUES.get(m.group(1), "sample"), path)
            status, body = await anonymous.call(method, concrete)
            assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", (method, path)


async def test_an_empty_shared_secret_turns_the_api_off(homeserver: Homeserver,
                                                        sqlite_url: str) -> None:
    running = RunningBridge(homeserver, homeserver.config(
        sqlite_url, provisioning__shared_secret=""))
    await running.start()
    try:
        for token in (None, "", "anything-at-all-0123456789"):
            client = ApiClient(homeserver.bridge_port, token)
            for path in ("/status", "/openapi.json", "/rooms"):
                status, _ = await client.call("GET", path)
                assert status == 404, (token, path)
        assert running.bridge is not None
        assert not [r for r in running.bridge.server.app.router.routes()
                    if r.resource is not None and r.resource.canonical.startswith(PREFIX)]
    finally:
        await running.stop()
