"""``bridge plan check``: the plan against the live systems, one line per finding.

Through the running bridge's API: the Slack app sees each channel (and no other room is
linked to it), each email local part is free or already this room's, each listed Matrix
user exists, the networks the plan uses are up, and each existing room can be used.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from bridge.admin.plan.client import ApiClient, ApiError, segment
from bridge.admin.plan.schema import PersonPlan, Plan, RoomPlan


async def check(api: ApiClient, plan: Plan, domain: str, out: TextIO = sys.stdout) -> int:
    """Print the findings; exit code 0 when there are none, else 1."""
    status = await api.request("GET", "/status")
    assert status is not None
    findings: list[str] = []
    networks = status.get("networks") or {}
    used = {"slack"} if any(room.slack for room in plan.rooms) else set()
    if any(room.email for room in plan.rooms):
        used.add("email")
    used |= {network for person in plan.people for network, _ in person.identities()}
    for name in sorted(used):
        health = networks.get(name)
        if health is None:
            findings.append(f"{name}: not enabled on the running bridge")
        elif not health.get("ok"):
            findings.append(f"{name}: not working: {health.get('detail')}")

    users: dict[str, list[str]] = {}
    for d_index, department in enumerate(plan.departments):
        for a_index, admin in enumerate(department.admins):
            users.setdefault(admin, []).append(f"departments[{d_index}].admins[{a_index}]")
    for person in plan.people:
        users.setdefault(person.matrix, []).append(f"{person.path}.matrix")

    async def user(user_id: str, paths: list[str]) -> list[str]:
        found = await api.request("GET", f"/users/{segment(user_id)}", missing_ok=True)
        return [] if found is not None else [f"{paths[0]}: no Matrix user {user_id} on the "
                                             "homeserver"]

    async def space(path: str, localpart: str) -> list[str]:
        return (await _existing(api, path, localpart, domain))[1]

    results = await asyncio.gather(
        *(user(user_id, paths) for user_id, paths in users.items()),
        *(space(f"{department.path}.space", department.space)
          for department in plan.departments if department.space is not None),
        *(_room(api, room, domain, used - set(_down(networks, used)))
          for room in plan.rooms))
    for lines in results:
        findings += lines
    findings += await _people(api, plan, used - set(_down(networks, used)))
    for line in findings:
        print(line, file=out)
    if findings:
        print(f"{len(findings)} finding(s); fix them before `bridge plan apply`.", file=out)
        return 1
    people = f" and the links of {len(plan.people)} people" if plan.people else ""
    print(f"All is well: {len(plan.rooms)} room(s) in {len(plan.departments)} department(s)"
          f"{people} can be applied.", file=out)
    return 0


async def _people(api: ApiClient, plan: Plan, usable: set[str]) -> list[str]:
    """Each identity of ``people``: the network knows it (an unknown Slack user), and it is
    not linked to someone else, which apply would refuse (409) unless that other person is
    in the plan without it (``--prune`` moves it)."""
    planned = {person.matrix: set(person.identities()) for person in plan.people}

    async def one(person: PersonPlan, network: str, identity: str, path: str) -> list[str]:
        try:
            answer = await api.request("POST", f"/networks/{network}/resolve-person",
                                       {"id": identity})
        except ApiError as exc:
            return [f"{path}: {exc}"]
        assert answer is not None
        other = answer.get("linked_to")
        if other is None or other == person.matrix or (
                other in planned and (network, identity) not in planned[other]):
            return []
        return [f"{path}: {identity} is linked to {other}; unlink it there first "
                f"(`!bridge people unlink {network} {identity}`), or list it under {other}"]

    work = []
    for person in plan.people:
        counters: dict[str, int] = {}
        for network, identity in person.identities():
            index = counters[network] = counters.get(network, -1) + 1
            if network not in usable:  # said once above: the network is not working
                continue
            work.append(one(person, network, identity, f"{person.path}.{network}[{index}]"))
    return [line for lines in await asyncio.gather(*work) for line in lines]


def _down(networks: dict[str, Any], used: set[str]) -> list[str]:
    return [name for name in used if not (networks.get(name) or {}).get("ok")]


async def _existing(api: ApiClient, path: str, localpart: str,
                    domain: str) -> tuple[str | None, list[str]]:
    """The room ID the alias names (None: apply will create it), and findings about it."""
    found = await api.request("GET", f"/aliases/{segment(localpart)}", missing_ok=True)
    if found is None:
        return None, []
    room_id = str(found["room_id"])
    listing = await api.request("GET", f"/rooms/{segment(room_id)}", missing_ok=True)
    if listing is None:
        return room_id, [f"{path}: #{localpart}:{domain} exists ({room_id}) and the bridge bot "
                         "is not in it; invite the bot (apply tries to join it, which works "
                         "only for a public room)"]
    return room_id, []


async def _room(api: ApiClient, room: RoomPlan, domain: str, usable: set[str]) -> list[str]:
    room_id, findings = await _existing(api, f"{room.path}.alias", room.alias, domain)

    async def resolve(network: str, body: dict[str, Any], path: str, what: str) -> None:
        try:
            answer = await api.request("POST", f"/networks/{network}/resolve", body)
        except ApiError as exc:
            findings.append(f"{path}: {exc}")
            return
        assert answer is not None
        other = answer.get("linked_room_id")
        if other is not None and other != room_id:
            findings.append(f"{path}: {what} is already linked to another room ({other})")

    work = []
    if "slack" in usable:
        work += [resolve("slack", {"channel": channel.channel, "workspace": channel.workspace},
                         f"{channel.path}.channel", f"Slack channel {channel.label}")
                 for channel in room.slack]
    if "email" in usable and room.email is not None:
        work.append(resolve("email", {"localpart": room.email.localpart},
                            f"{room.email.path}.localpart",
                            f"the address {room.email.localpart}"))
    await asyncio.gather(*work)
    return findings
