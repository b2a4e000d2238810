"""The provisioning API's ``/people`` endpoints: identity links, as ``!bridge people …`` makes
them. Each calls bridge/people/actions.py, so the checks, the sentences and the audit entries
(``people-link``, ``people-unlink``, via ``api``) are the bot's.

The request bodies name each network whose people can be linked (``{"slack": ["rathaus:U0ANNA"],
"email": ["anna@stadt.example"]}``), so their schemas are built from the enabled connectors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bridge.admin.api.routes import OUTCOME_PROPERTIES, ApiCall, BadRequest, Route
from bridge.db.people import Identity
from bridge.people import actions as people

if TYPE_CHECKING:
    from bridge.core.connector import Connector

LINK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["network", "id", "remote_id", "proven_by", "created_by", "created_at"],
    "properties": {
        "network": {"type": "string"},
        "id": {"type": "string", "description": "the identity as people write it "
                                                "(`rathaus:U0ANNA`, an address)"},
        "remote_id": {"type": "string", "description": "as the network's puppets know it "
                                                       "(Slack `T…_U…`, an address)"},
        "proven_by": {"type": "string", "enum": list(people.PROVEN_BY),
                      "description": "`admin`: linked by an admin, the API or a plan; "
                                     "`self`: proven by the person with a one-time code"},
        "created_by": {"type": "string", "description": "a Matrix user ID, or `operator`"},
        "created_at": {"type": "string", "format": "date-time"}}}
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["user_id", "links"],
    "properties": {"user_id": {"type": "string"},
                   "links": {"type": "array", "items": LINK_SCHEMA}}}
CHANGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["changed", "message", "user_id", "links"],
    "properties": {**OUTCOME_PROPERTIES, **PERSON_SCHEMA["properties"]}}


def link_json(identity: Identity) -> dict[str, Any]:
    return {"network": identity.network, "id": identity.label,
            "remote_id": identity.remote_id, "proven_by": identity.proven_by,
            "created_by": identity.created_by,
            "created_at": datetime.fromtimestamp(identity.created_at, UTC).isoformat()}


def identities_schema(connectors: list[Connector], *, replace: bool) -> dict[str, Any]:
    """``{"<network>": [identity, …], …}`` for each network whose people can be linked."""
    properties: dict[str, Any] = {
        c.network: {"type": "array", "items": {"type": "string", "minLength": 1},
                    "description": f"{c.display_name} identities, as `people link "
                                   f"{c.network}` takes them"}
        for c in connectors if c.links_people}
    if replace:
        properties["replace"] = {"type": "boolean", "default": False,
                                 "description": "true: also remove the person's links "
                                                "this body does not list"}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _wanted(call: ApiCall) -> list[tuple[str, list[str]]]:
    return [(network, [identity]) for network, identities in call.body.items()
            if network != "replace" for identity in identities]


async def _person(call: ApiCall, outcome: people.Outcome | None = None) -> dict[str, Any]:
    user_id = call.param("user_id")
    links = await people.people(call.bridge.hub, user_id)
    answer: dict[str, Any] = {"user_id": user_id.strip(),
                              "links": [link_json(i) for i in links]}
    if outcome is not None:
        answer = {"changed": outcome.changed, "message": outcome.message, **answer}
    return answer


async def list_people(call: ApiCall) -> tuple[int, dict[str, Any]]:
    everyone: dict[str, list[dict[str, Any]]] = {}
    for identity in await people.people(call.bridge.hub):
        everyone.setdefault(identity.matrix_user_id, []).append(link_json(identity))
    return 200, {"people": [{"user_id": user, "links": links}
                            for user, links in everyone.items()]}


async def get_person(call: ApiCall) -> tuple[int, dict[str, Any]]:
    return 200, await _person(call)


async def put_person(call: ApiCall) -> tuple[int, dict[str, Any]]:
    wanted = _wanted(call)
    replace = bool(call.body.get("replace"))
    if not wanted and not replace:
        raise BadRequest("List the identities to link, like {\"<network>\": [\"…\"]}; "
                         "`replace`: true with none removes all of the person's links.")
    outcome = await people.link_many(call.bridge.hub, call.actor, call.param("user_id"),
                                     wanted, replace=replace)
    return 200, await _person(call, outcome)


async def delete_person(call: ApiCall) -> tuple[int, dict[str, Any]]:
    wanted = _wanted(call) if call.body else None
    outcome = await people.unlink_person(call.bridge.hub, call.actor, call.param("user_id"),
                                         wanted)
    return 200, await _person(call, outcome)


async def resolve_person(call: ApiCall) -> tuple[int, dict[str, Any]]:
    network = call.param("network")
    person, linked = await people.lookup(call.bridge.hub, network, [call.body["id"]])
    return 200, {"network": network, "id": person.label, "remote_id": person.remote_id,
                 "display_name": person.display_name,
                 "linked_to": linked.matrix_user_id if linked is not None else None}


def people_routes(connectors: list[Connector]) -> list[Route]:
    path = "/people/{user_id}"
    return [
        Route("POST", "/networks/{network}/resolve-person", resolve_person,
              "who an identity names on a network, and whom it is linked to, without "
              "linking it",
              description="The refusals are those of linking it (an unknown Slack user: "
                          "400; the network not started: 503). `bridge plan check` asks "
                          "this for each identity of a plan's `people`.",
              request={"type": "object", "additionalProperties": False, "required": ["id"],
                       "properties": {"id": {"type": "string", "minLength": 1,
                                             "description": "as `people link <network>` "
                                                            "takes it"}}},
              response={"type": "object",
                        "required": ["network", "id", "remote_id", "display_name",
                                     "linked_to"],
                        "properties": {"network": {"type": "string"},
                                       "id": {"type": "string"},
                                       "remote_id": {"type": "string"},
                                       "display_name": {"type": ["string", "null"]},
                                       "linked_to": {"type": ["string", "null"],
                                                     "description": "the Matrix user it is "
                                                                    "linked to, if any"}}},
              errors=(404, 503), tag="rollout"),
        Route("GET", "/people", list_people, "everyone linked to remote identities",
              response={"type": "object", "required": ["people"],
                        "properties": {"people": {"type": "array", "items": PERSON_SCHEMA}}},
              tag="people"),
        Route("GET", path, get_person, "a person's identity links (an empty list: none)",
              response=PERSON_SCHEMA, errors=(), tag="people"),
        Route("PUT", path, put_person,
              "make sure a person's identities are linked (replace: and no others)",
              description="Every identity is checked with its network first; one that is "
                          "unknown (400) or linked to someone else (409) refuses the whole "
                          "request, and nothing changes. Answers the person's links; "
                          "`changed`: false when they were so already.",
              request=identities_schema(connectors, replace=True), response=CHANGE_SCHEMA,
              errors=(404, 409, 503), tag="people"),
        Route("DELETE", path, delete_person,
              "remove a person's identity links: all, or those the body lists",
              description="An identity linked to someone else refuses the request (409). "
                          "Links that are not there are no error (`changed`: false).",
              request=identities_schema(connectors, replace=False), response=CHANGE_SCHEMA,
              errors=(409,), tag="people"),
    ]
