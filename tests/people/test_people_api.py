"""The provisioning API's /people routes: each verb's answer, its refusals (400, 404, 409)
that change nothing, idempotent PUT and DELETE, replace, and the audit entries with the
API's actor.

Real Synapse, the Slack simulator, real SMTP; SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from bridge.db import people as db_people
from bridge.people import changes
from testkit.matrix_client import MatrixTestClient
from tests.admin.api_client import ApiClient
from tests.conftest import SERVER_NAME
from tests.slack.conftest import ANNA, BEN, TEAM_ID, SlackBridge

ADDRESS = "anna.schmidt@stadt.example"


def operator(bridge: SlackBridge, via: str | None = None) -> ApiClient:
    return ApiClient(bridge.homeserver.bridge_port,
                     bridge.config.provisioning.shared_secret, via)


def person(user_id: str) -> str:
    return f"/people/{quote(user_id, safe='')}"


def ids(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(link["network"], link["id"]) for link in answer["links"]]


async def test_each_verb_of_the_people_routes(both_bridge: SlackBridge,
                                              anna: MatrixTestClient,
                                              ben: MatrixTestClient) -> None:
    api = operator(both_bridge)
    # A valid ID without links: 200 and an empty list.
    status, answer = await api.get(person(anna.user_id))
    assert (status, answer) == (200, {"user_id": anna.user_id, "links": []})
    assert await api.get("/people") == (200, {"people": []})

    status, answer = await api.put(person(anna.user_id),
                                   {"slack": [f"rathaus:{ANNA}"], "email": ["Anna.Schmidt@"
                                                                            "stadt.example"]})
    assert status == 200, answer
    assert answer["changed"] is True
    assert answer["message"] == (f"Linked Slack `rathaus:{ANNA}` (Anna), Email `{ADDRESS}` "
                                 f"to {anna.user_id}.")
    assert answer["user_id"] == anna.user_id
    assert ids(answer) == [("email", ADDRESS), ("slack", f"rathaus:{ANNA}")]
    slack_link = answer["links"][1]
    assert slack_link["remote_id"] == f"{TEAM_ID}_{ANNA}"
    assert (slack_link["proven_by"], slack_link["created_by"]) == ("admin", "operator")
    assert abs(datetime.fromisoformat(slack_link["created_at"]).timestamp()
               - datetime.now().timestamp()) < 120
    # Again: nothing to do, the same links.
    status, again = await api.put(person(anna.user_id), {"slack": [f"rathaus:{ANNA}"],
                                                         "email": [ADDRESS]})
    assert status == 200 and again["changed"] is False
    assert again["message"] == f"Nothing to do: {anna.user_id} has these links already."
    assert again["links"] == answer["links"]
    # Without replace, links the body does not list stay.
    status, again = await api.put(person(anna.user_id), {"email": [ADDRESS]})
    assert status == 200 and again["changed"] is False and len(again["links"]) == 2

    status, answer = await api.put(person(ben.user_id), {"slack": [f"rathaus:{BEN}"]})
    assert status == 200 and answer["changed"]
    status, everyone = await api.get("/people")
    assert status == 200
    assert [(p["user_id"], ids(p)) for p in everyone["people"]] == sorted([
        (anna.user_id, [("email", ADDRESS), ("slack", f"rathaus:{ANNA}")]),
        (ben.user_id, [("slack", f"rathaus:{BEN}")])])

    # replace: the body's links and no others.
    status, answer = await api.put(person(anna.user_id), {"email": [ADDRESS], "replace": True})
    assert status == 200 and answer["changed"]
    assert answer["message"] == f"Unlinked Slack `rathaus:{ANNA}` from {anna.user_id}."
    assert ids(answer) == [("email", ADDRESS)]
    status, answer = await api.put(person(anna.user_id), {"slack": [f"rathaus:{ANNA}"],
                                                          "replace": True})
    assert status == 200
    assert answer["message"] == (f"Linked Slack `rathaus:{ANNA}` (Anna) to {anna.user_id}. "
                                 f"Unlinked Email `{ADDRESS}` from {anna.user_id}.")
    assert ids(answer) == [("slack", f"rathaus:{ANNA}")]

    # DELETE with a body: those links only; without: all; again: nothing to do.
    await api.put(person(anna.user_id), {"email": [ADDRESS]})
    status, answer = await api.delete(person(anna.user_id), {"email": [ADDRESS.upper()]})
    assert status == 200 and answer["changed"]
    assert answer["message"] == f"Unlinked Email `{ADDRESS}` from {anna.user_id}."
    assert ids(answer) == [("slack", f"rathaus:{ANNA}")]
    await api.put(person(anna.user_id), {"email": [ADDRESS]})
    status, answer = await api.delete(person(anna.user_id))
    assert status == 200 and answer["changed"] and answer["links"] == []
    assert answer["message"] == (f"Unlinked Email `{ADDRESS}`, Slack `rathaus:{ANNA}` from "
                                 f"{anna.user_id}.")
    status, answer = await api.delete(person(anna.user_id))
    assert status == 200 and answer["changed"] is False
    assert answer["message"] == f"Nothing to unlink: {anna.user_id} has no such link."
    status, answer = await api.delete(person(anna.user_id), {"email": [ADDRESS]})
    assert status == 200 and answer["changed"] is False

    # Who an identity is, without linking it (what `bridge plan check` asks).
    status, answer = await api.post("/networks/slack/resolve-person",
                                    {"id": f"rathaus:{BEN.lower()}"})
    assert (status, answer) == (200, {"network": "slack", "id": f"rathaus:{BEN}",
                                      "remote_id": f"{TEAM_ID}_{BEN}",
                                      "display_name": "Ben Weber",
                                      "linked_to": ben.user_id})
    status, answer = await api.post("/networks/email/resolve-person", {"id": ADDRESS})
    assert status == 200 and answer["linked_to"] is None and answer["remote_id"] == ADDRESS
    status, answer = await api.post("/networks/slack/resolve-person", {"id": "rathaus:U0NIX"})
    assert status == 400 and "user_not_found" in answer["error"]
    status, answer = await api.post("/networks/teams/resolve-person", {"id": "x"})
    assert status == 404 and "Unknown or disabled network `teams`" in answer["error"]

    # Ben's link was never touched.
    status, answer = await api.get(person(ben.user_id))
    assert ids(answer) == [("slack", f"rathaus:{BEN}")]


async def test_refusals_change_nothing(both_bridge: SlackBridge, anna: MatrixTestClient,
                                       ben: MatrixTestClient, admin: MatrixTestClient,
                                       outsider: MatrixTestClient) -> None:
    api = operator(both_bridge)
    await api.put(person(ben.user_id), {"slack": [f"rathaus:{BEN}"]})
    before = (await api.get("/people"))[1]

    slack = both_bridge.slack
    puppet = slack.puppet_user_id(f"{TEAM_ID}_{ANNA}")
    refusals: list[tuple[str, str, Any, int, str]] = [
        # Malformed requests: 400 naming what is wrong.
        ("PUT", person(anna.user_id), {"teams": ["x"]}, 400,
         "Unknown field `teams`; this request takes: `slack`, `email`, `replace`."),
        ("PUT", person(anna.user_id), {"slack": f"rathaus:{ANNA}"}, 400,
         "`slack` must be a list."),
        ("PUT", person(anna.user_id), {}, 400, "List the identities to link"),
        ("PUT", person("anna"), {"slack": [f"rathaus:{ANNA}"]}, 400,
         "`anna` is not a Matrix user ID"),
        ("GET", person("anna"), None, 400, "`anna` is not a Matrix user ID"),
        ("PUT", person(puppet), {"email": [ADDRESS]}, 400, "is a Slack puppet of the bridge"),
        # One bad identity refuses the whole request: the good one is not linked either.
        ("PUT", person(anna.user_id), {"email": [ADDRESS], "slack": ["rathaus:U0NIEMAND"]},
         400, "Slack workspace `rathaus` has no user with the ID U0NIEMAND (Slack answered "
              "`user_not_found`)."),
        ("PUT", person(anna.user_id), {"email": [ADDRESS], "slack": [f"rathaus:{BEN}"]}, 409,
         f"Slack `rathaus:{BEN}` is already linked to {ben.user_id}"),
        ("DELETE", person(anna.user_id), {"slack": [f"rathaus:{BEN}"]}, 409,
         f"Slack `rathaus:{BEN}` is linked to {ben.user_id}, not to {anna.user_id}"),
        ("PUT", person(f"@niemand:{SERVER_NAME}"), {"email": [ADDRESS]}, 404,
         f"The homeserver knows no user @niemand:{SERVER_NAME}"),
    ]
    for method, path, request, code, message in refusals:
        status, answer = await api.call(method, path, request)
        assert status == code, (method, path, request, answer)
        assert message in answer["error"], (method, path, request, answer)
    # Not a bridge admin: 403.
    status, answer = await api.as_(outsider.access_token).put(
        person(outsider.user_id), {"slack": [f"rathaus:{ANNA}"]})
    assert status == 403
    assert (await api.get("/people"))[1] == before

    # With Slack not started, linking a Slack identity is 503; unlinking one that is linked
    # still works (the database knows it).
    saved = slack.not_started
    slack.not_started = "stopped for the test"
    try:
        status, answer = await api.put(person(anna.user_id), {"slack": [f"rathaus:{ANNA}"]})
        assert status == 503 and "Slack is not started" in answer["error"]
        status, answer = await api.delete(person(ben.user_id), {"slack": [f"rathaus:{BEN}"]})
        assert status == 200 and answer["changed"]
    finally:
        slack.not_started = saved


async def test_the_audit_log_names_the_api_caller(both_bridge: SlackBridge,
                                                  anna: MatrixTestClient,
                                                  admin: MatrixTestClient) -> None:
    # What follows a change (double puppeting) hears of each committed change once, with
    # what was linked and unlinked; of a request that changed nothing, not at all.
    heard: list[tuple[list[str], list[str]]] = []

    async def listener(hub: Any, change: changes.Change) -> None:
        async with hub.db.sessions() as session:  # committed: visible to a new session
            found = [await db_people.identity_for(session, i.network, i.remote_id)
                     for i in change.linked]
        assert None not in found
        heard.append(([i.label for i in change.linked], [i.label for i in change.unlinked]))

    changes.listen(listener)
    try:
        api = operator(both_bridge, via="plan")
        await api.put(person(anna.user_id), {"slack": [f"rathaus:{ANNA}"]})
        await api.put(person(anna.user_id), {"slack": [f"rathaus:{ANNA}"]})
        as_admin = ApiClient(both_bridge.homeserver.bridge_port, admin.access_token)
        await as_admin.put(person(anna.user_id), {"email": [ADDRESS], "replace": True})
        await as_admin.delete(person(anna.user_id), {"slack": [f"rathaus:{ANNA}"]})
    finally:
        changes.unlisten(listener)
    assert heard == [([f"rathaus:{ANNA}"], []), ([ADDRESS], [f"rathaus:{ANNA}"])]
    status, answer = await api.get("/audit")
    assert status == 200
    entries = [(e["actor"], e["via"], e["action"], e["details"]["label"],
                e["details"]["matrix_user"], e["details"]["network"])
               for e in answer["entries"] if e["action"].startswith("people-")]
    assert entries == [
        ("operator", "plan", "people-link", f"rathaus:{ANNA}", anna.user_id, "slack"),
        (admin.user_id, "api", "people-unlink", f"rathaus:{ANNA}", anna.user_id, "slack"),
        (admin.user_id, "api", "people-link", ADDRESS, anna.user_id, "email")]
    status, answer = await api.get(person(anna.user_id))
    assert answer["links"][0]["created_by"] == admin.user_id
