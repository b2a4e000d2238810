"""``bridge plan apply``: what differs between the plan and the bridge, as one line per
action, then done through the provisioning API.

Every action is idempotent on the bridge's side, so an apply that stopped part way (a
refused step, the bridge gone) leaves what it did consistent, and the next apply finds only
the rest to do. Rooms are independent and run concurrently; within a room the steps keep
their order (the room before its links, the address before its subscribers), and a refused
step skips the rest of its room.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from bridge.admin.plan.client import ApiClient, ApiError, segment
from bridge.admin.plan.schema import (
    Context,
    Department,
    PersonPlan,
    Plan,
    RoomPlan,
    SlackChannel,
)

Run = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Step:
    line: str
    run: Run


@dataclass(slots=True)
class Target:
    """A room or space of the plan, as the bridge has it (room_id None: not yet)."""

    alias: str
    room_id: str | None = None


@dataclass(slots=True)
class Chain:
    """Steps that must run in order; one failing skips the rest of its chain."""

    steps: list[Step] = field(default_factory=list)
    #: What the chain's steps are about, for the line saying the rest were skipped.
    about: str = "room"


@dataclass(slots=True)
class Changes:
    #: Per department: the space's chain first (its rooms wait for it), then one per room.
    departments: list[tuple[Chain, list[Chain]]]
    #: Per person of ``people:``: the links to remove (``--prune``), then, once every
    #: person's are removed (an identity may move from one person to another), those to add.
    unlinks: list[Chain] = field(default_factory=list)
    links: list[Chain] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(head.steps) + sum(len(chain.steps) for chain in rooms)
                   for head, rooms in self.departments) + \
            sum(len(chain.steps) for chain in (*self.unlinks, *self.links))

    def lines(self) -> list[str]:
        return [step.line for head, rooms in self.departments
                for chain in (head, *rooms) for step in chain.steps] + \
            [step.line for chain in (*self.unlinks, *self.links) for step in chain.steps]


class Planner:
    """Reads the bridge's state of the plan's rooms and says what to do about it."""

    def __init__(self, api: ApiClient, context: Context, domain: str, *, prune: bool) -> None:
        self.api = api
        self.context = context
        self.domain = domain
        self.prune = prune

    def alias(self, localpart: str) -> str:
        return f"#{localpart}:{self.domain}"

    def address(self, localpart: str) -> str:
        return f"{localpart}@{self.context.mail_domain}"

    async def changes(self, plan: Plan) -> Changes:
        departments = list(await asyncio.gather(*(self._department(d)
                                                  for d in plan.departments)))
        people = await asyncio.gather(*(self._person(p) for p in plan.people))
        return Changes(departments, [u for u, _ in people if u.steps],
                       [lk for _, lk in people if lk.steps])

    async def _person(self, person: PersonPlan) -> tuple[Chain, Chain]:
        """The person's links to remove (only with ``--prune``) and to add, each one step:
        PUT and DELETE of ``/people/{user}`` with that identity, as idempotent as the rest."""
        path = f"/people/{segment(person.matrix)}"
        answer = await self.api.request("GET", path)
        assert answer is not None
        current = [(str(lk["network"]), str(lk["id"])) for lk in answer.get("links") or []]
        wanted = person.identities()
        unlinks, links = Chain(about="person"), Chain(about="person")

        def call(method: str, network: str, identity: str) -> Run:
            async def run() -> None:
                await self.api.request(method, path, {network: [identity]})
            return run

        if self.prune:
            for network, identity in current:
                if (network, identity) not in wanted:
                    unlinks.steps.append(Step(f"- unlink {network} {identity} from "
                                              f"{person.matrix}",
                                              call("DELETE", network, identity)))
        for network, identity in wanted:
            if (network, identity) not in current:
                links.steps.append(Step(f"+ link {network} {identity} -> {person.matrix}",
                                        call("PUT", network, identity)))
        return unlinks, links

    async def _find(self, localpart: str) -> tuple[str | None, dict[str, Any] | None]:
        """The room ID of the alias (None: no such room) and the bridge's view of it (None:
        the bot is not in it)."""
        found = await self.api.request("GET", f"/aliases/{segment(localpart)}",
                                       missing_ok=True)
        if found is None:
            return None, None
        room_id = str(found["room_id"])
        return room_id, await self.api.request("GET", f"/rooms/{segment(room_id)}",
                                               missing_ok=True)

    def _ensure(self, target: Target, *, kind: str, name: str | None, department: Department,
                room_id: str | None, listing: dict[str, Any] | None,
                space: Target | None = None) -> Step | None:
        """The step that makes the room (or space) exist with the bot in it, in the
        department; None when it is so already."""
        body: dict[str, Any] = {"alias": target.alias, "name": name,
                                "admins": department.admins, "department": department.name,
                                "space": kind == "space"}
        if room_id is None:
            line = f"+ create {kind} {self.alias(target.alias)}"
        elif listing is None:
            line = f"+ join {kind} {self.alias(target.alias)}"
        elif listing.get("department") != department.name:
            line = f"+ department {department.name} -> {self.alias(target.alias)}"
        else:
            return None

        async def run() -> None:
            if space is not None:  # made by then: the department's chain runs first
                body["parent"] = space.room_id
            answer = await self.api.request("POST", "/rooms", body)
            assert answer is not None
            target.room_id = str(answer["room_id"])

        return Step(line, run)

    async def _department(self, department: Department) -> tuple[Chain, list[Chain]]:
        head = Chain()
        space: Target | None = None
        children: set[str] = set()
        if department.space is not None:
            space = Target(department.space)
            space_id, listing = await self._find(department.space)
            space.room_id = space_id
            step = self._ensure(space, kind="space", name=department.name,
                                department=department, room_id=space_id, listing=listing)
            if step is not None:
                head.steps.append(step)
            if space_id is not None and listing is not None:
                answer = await self.api.request("GET", f"/spaces/{segment(space_id)}/rooms",
                                                missing_ok=True)
                children = set((answer or {}).get("rooms") or [])
        rooms = await asyncio.gather(*(self._room(room, department, space, children)
                                       for room in department.rooms))
        return head, [chain for chain in rooms if chain.steps]

    async def _room(self, room: RoomPlan, department: Department, space: Target | None,
                    children: set[str]) -> Chain:
        chain = Chain()
        target = Target(room.alias)
        room_id, listing = await self._find(room.alias)
        target.room_id = room_id
        where = self.alias(room.alias)
        step = self._ensure(target, kind="room", name=room.name, department=department,
                            room_id=room_id, listing=listing, space=space)
        if step is not None:
            chain.steps.append(step)
        listing = listing or {}
        if space is not None and (room_id is None or room_id not in children):
            async def add_to_space() -> None:
                assert space.room_id is not None and target.room_id is not None
                await self.api.request("PUT", f"/spaces/{segment(space.room_id)}/rooms/"
                                              f"{segment(target.room_id)}", {})
            chain.steps.append(Step(f"+ add {where} to space {self.alias(space.alias)}",
                                    add_to_space))
        links = list(listing.get("links") or [])
        self._slack(chain, target, room, links, where)
        self._email(chain, target, room, links, listing.get("email"), where)
        return chain

    def _call(self, target: Target, method: str, tail: str,
              body: dict[str, Any] | None = None) -> Run:
        async def run() -> None:
            assert target.room_id is not None
            await self.api.request(method, f"/rooms/{segment(target.room_id)}{tail}",
                                   body if body is not None else {})
        return run

    def _slack(self, chain: Chain, target: Target, room: RoomPlan, links: list[dict[str, Any]],
               where: str) -> None:
        current = [lk for lk in links if lk.get("network") == "slack"]

        def matches(link: dict[str, Any], wanted: SlackChannel) -> bool:
            return link.get("workspace") == wanted.workspace and wanted.channel in (
                link.get("channel"), str(link.get("remote_name") or "").lstrip("#"))

        if self.prune:
            for link in current:
                if not any(matches(link, wanted) for wanted in room.slack):
                    label = f"{link.get('workspace')}/{link.get('channel')}"
                    chain.steps.append(Step(
                        f"- unlink slack {label} from {where}",
                        self._call(target, "DELETE", "/links/slack",
                                   {"channel": link.get("channel"),
                                    "workspace": link.get("workspace")})))
        for wanted in room.slack:
            if not any(matches(link, wanted) for link in current):
                chain.steps.append(Step(
                    f"+ link slack {wanted.label} -> {where}",
                    self._call(target, "PUT", "/links/slack",
                               {"channel": wanted.channel, "workspace": wanted.workspace})))

    def _email(self, chain: Chain, target: Target, room: RoomPlan, links: list[dict[str, Any]],
               details: dict[str, Any] | None, where: str) -> None:
        link = next((lk for lk in links if lk.get("network") == "email"), None)
        wanted = room.email
        localpart = link.get("localpart") or link.get("remote_id") if link else None
        if link is not None and (wanted is None or localpart != wanted.localpart):
            if self.prune:
                chain.steps.append(Step(f"- unlink email {self.address(str(localpart))} from "
                                        f"{where}",
                                        self._call(target, "DELETE", "/links/email", {})))
                details = None
            elif wanted is not None:
                # Refused by the bridge with its own sentence (one address per room).
                details = None
        if wanted is None:
            return
        details = details or {}
        if details == {}:
            chain.steps.append(Step(f"+ link email {self.address(wanted.localpart)} -> {where}",
                                    self._call(target, "PUT", "/links/email",
                                               {"localpart": wanted.localpart})))
        if wanted.policy is not None and (details.get("policy", "subscribers"),
                                          details.get("domain")) != (wanted.policy,
                                                                     wanted.policy_domain):
            chain.steps.append(Step(f"+ policy {wanted.policy_label} -> {where}",
                                    self._call(target, "PUT", "/email/policy",
                                               {"policy": wanted.policy,
                                                "domain": wanted.policy_domain})))
        current = {str(sub.get("address")): sub for sub in details.get("subscribers") or []}
        for sub in wanted.subscribers:
            have = current.get(sub.address)
            if have is None or have.get("status") != "active" or (
                    sub.name is not None and have.get("name") != sub.name):
                body = {"name": sub.name} if sub.name is not None else {}
                chain.steps.append(Step(f"+ subscribe {sub.address} -> {where}",
                                        self._call(target, "PUT", "/email/subscribers/"
                                                   + segment(sub.address), body)))
        if self.prune:
            listed = {sub.address for sub in wanted.subscribers}
            for address in sorted(set(current) - listed):
                chain.steps.append(Step(f"- unsubscribe {address} from {where}",
                                        self._call(target, "DELETE", "/email/subscribers/"
                                                   + segment(address))))


@dataclass(slots=True)
class Runner:
    total: int
    out: TextIO
    progress: bool
    done: int = 0
    failures: list[str] = field(default_factory=list)

    async def chain(self, chain: Chain) -> bool:
        for index, step in enumerate(chain.steps):
            try:
                await step.run()
            except ApiError as exc:
                skipped = len(chain.steps) - index - 1
                also = (f" ({skipped} later step(s) of this {chain.about} skipped)"
                        if skipped else "")
                self.failures.append(f"failed: {step.line}: {exc}{also}")
                print(f"! failed: {step.line}: {exc}{also}", file=self.out, flush=True)
                return False
            self.done += 1
            if self.progress:
                print(f"[{self.done}/{self.total}] {step.line}", file=self.out, flush=True)
        return True

    async def department(self, head: Chain, rooms: list[Chain]) -> None:
        if not await self.chain(head):
            for chain in rooms:
                self.failures.append(f"skipped: {len(chain.steps)} step(s) after the space "
                                     "failed")
            return
        await asyncio.gather(*(self.chain(chain) for chain in rooms))


async def apply(api: ApiClient, plan: Plan, context: Context, domain: str, *, dry_run: bool,
                prune: bool, out: TextIO = sys.stdout) -> int:
    """Print and (unless ``dry_run``) do what the plan needs; the exit code."""
    changes = await Planner(api, context, domain, prune=prune).changes(plan)
    if changes.count == 0:
        people = f", the links of {len(plan.people)} people" if plan.people else ""
        print(f"Nothing to do: the bridge is as the plan says ({len(plan.rooms)} room(s) in "
              f"{len(plan.departments)} department(s){people}).", file=out)
        return 0
    for line in changes.lines():
        print(line, file=out)
    if dry_run:
        print(f"Dry run: {changes.count} action(s) would be taken; nothing was changed.",
              file=out)
        return 0
    runner = Runner(changes.count, out, progress=out.isatty())
    await asyncio.gather(*(runner.department(head, rooms)
                           for head, rooms in changes.departments))
    await asyncio.gather(*(runner.chain(chain) for chain in changes.unlinks))
    await asyncio.gather(*(runner.chain(chain) for chain in changes.links))
    if runner.failures:
        print(f"Done {runner.done} of {changes.count} action(s); {len(runner.failures)} "
              "failed. What is done stays done: fix the cause and apply again to finish the "
              "rest.", file=out)
        return 1
    print(f"Done: {changes.count} action(s).", file=out)
    return 0
