"""A migration plan's `people:` section end to end: `bridge plan check` finds what apply would
trip over (a Matrix user the homeserver does not know, an identity linked to someone else),
`bridge plan apply` links through the API (a second run: "Nothing to do"), `--prune` removes
the links of listed people that the plan no longer lists and leaves everyone else alone, and
the audit log says the plan did it.

The real `bridge` command in a process of its own against the bridge's API; real Synapse,
the Slack simulator, real SMTP; SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from testkit.matrix_client import MatrixTestClient
from tests.admin.test_plan_apply import bridge_command, write_plan
from tests.conftest import SERVER_NAME
from tests.people.test_people_api import operator
from tests.slack.conftest import ANNA, BEN, SlackBridge


async def links_of(bridge: SlackBridge, user_id: str) -> list[tuple[str, str]]:
    status, answer = await operator(bridge).get(f"/people/{quote(user_id, safe='')}")
    assert status == 200, answer
    return [(link["network"], link["id"]) for link in answer["links"]]


async def test_check_apply_and_prune_people(both_bridge: SlackBridge, tmp_path: Path,
                                            anna: MatrixTestClient, ben: MatrixTestClient,
                                            outsider: MatrixTestClient,
                                            admin: MatrixTestClient) -> None:
    api = operator(both_bridge)
    # Someone linked outside the plan: the plan never touches them.
    await api.put(f"/people/{quote(outsider.user_id, safe='')}",
                  {"email": ["extern@stadt.example"]})
    # Ben's Slack user is linked to the outsider: check says so; apply would be refused.
    await api.put(f"/people/{quote(outsider.user_id, safe='')}",
                  {"slack": [f"rathaus:{BEN}"]})

    nobody = f"@niemand:{SERVER_NAME}"
    plan: dict[str, Any] = {"version": 1, "people": [
        {"matrix": anna.user_id, "slack": [f"rathaus:{ANNA}"],
         "email": ["Anna.Schmidt@stadt.example"]},
        {"matrix": ben.user_id, "slack": [f"rathaus:{BEN}"]},
        {"matrix": nobody, "email": ["niemand@stadt.example"]},
        {"matrix": admin.user_id, "slack": ["rathaus:U0NIEMAND"]}]}
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "check",
                                     write_plan(tmp_path, plan))
    assert code == 1, out
    assert out.splitlines() == [
        f"people[2].matrix: no Matrix user {nobody} on the homeserver",
        f"people[1].slack[0]: rathaus:{BEN} is linked to {outsider.user_id}; unlink it there "
        f"first (`!bridge people unlink slack rathaus:{BEN}`), or list it under "
        f"{outsider.user_id}",
        "people[3].slack[0]: Slack workspace `rathaus` has no user with the ID U0NIEMAND "
        "(Slack answered `user_not_found`).",
        "3 finding(s); fix them before `bridge plan apply`."], out

    # Fixed: the plan is checked clean, a dry run changes nothing.
    await api.delete(f"/people/{quote(outsider.user_id, safe='')}",
                     {"slack": [f"rathaus:{BEN}"]})
    del plan["people"][2:]
    path = write_plan(tmp_path, plan)
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "check", path)
    assert (code, out.strip()) == (0, "All is well: 0 room(s) in 0 department(s) and the "
                                      "links of 2 people can be applied."), out
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", path, "--dry-run")
    assert code == 0, out
    assert out.splitlines() == [
        f"+ link slack rathaus:{ANNA} -> {anna.user_id}",
        f"+ link email anna.schmidt@stadt.example -> {anna.user_id}",
        f"+ link slack rathaus:{BEN} -> {ben.user_id}",
        "Dry run: 3 action(s) would be taken; nothing was changed."], out
    assert await links_of(both_bridge, anna.user_id) == []

    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", path)
    assert code == 0, out
    assert out.splitlines()[-1] == "Done: 3 action(s).", out
    assert await links_of(both_bridge, anna.user_id) == [
        ("email", "anna.schmidt@stadt.example"), ("slack", f"rathaus:{ANNA}")]
    assert await links_of(both_bridge, ben.user_id) == [("slack", f"rathaus:{BEN}")]
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", path)
    assert (code, out.strip()) == (0, "Nothing to do: the bridge is as the plan says (0 "
                                      "room(s) in 0 department(s), the links of 2 people)."), out

    # The plan no longer gives Anna her address, and gives it to Ben: without --prune only
    # what is missing is added, and Ben's new link is refused (it is still Anna's).
    plan["people"][0]["email"] = []
    plan["people"][1]["email"] = ["anna.schmidt@stadt.example"]
    path = write_plan(tmp_path, plan, "moved.yaml")
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", path)
    assert code == 1, out
    assert out.splitlines()[:2] == [
        f"+ link email anna.schmidt@stadt.example -> {ben.user_id}",
        f"! failed: + link email anna.schmidt@stadt.example -> {ben.user_id}: Email "
        f"`anna.schmidt@stadt.example` is already linked to {anna.user_id}; an identity can "
        f"be linked to one Matrix account only. Unlink it first to link it to "
        f"{ben.user_id}."], out
    # With --prune the address moves: removed from Anna first, then linked to Ben.
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", path, "--prune")
    assert code == 0, out
    assert out.splitlines() == [
        f"- unlink email anna.schmidt@stadt.example from {anna.user_id}",
        f"+ link email anna.schmidt@stadt.example -> {ben.user_id}",
        "Done: 2 action(s)."], out
    assert await links_of(both_bridge, anna.user_id) == [("slack", f"rathaus:{ANNA}")]
    assert await links_of(both_bridge, ben.user_id) == [
        ("email", "anna.schmidt@stadt.example"), ("slack", f"rathaus:{BEN}")]
    # People the plan does not list keep their links, even with --prune.
    assert await links_of(both_bridge, outsider.user_id) == [("email", "extern@stadt.example")]
    code, out = await bridge_command(both_bridge, tmp_path, "plan", "apply", path, "--prune")
    assert code == 0 and out.startswith("Nothing to do"), out

    # The audit log: the plan's links, by the operator via the plan.
    status, answer = await api.get("/audit")
    assert status == 200
    by_plan = [(e["action"], e["details"]["label"], e["details"]["matrix_user"])
               for e in answer["entries"] if e["via"] == "plan"]
    # (People are applied side by side: the first apply's three in any order.)
    assert sorted(by_plan[:3]) == sorted([
        ("people-link", f"rathaus:{ANNA}", anna.user_id),
        ("people-link", "anna.schmidt@stadt.example", anna.user_id),
        ("people-link", f"rathaus:{BEN}", ben.user_id)]), by_plan
    assert by_plan[3:] == [
        ("people-unlink", "anna.schmidt@stadt.example", anna.user_id),
        ("people-link", "anna.schmidt@stadt.example", ben.user_id)], by_plan
    assert {e["actor"] for e in answer["entries"] if e["via"] == "plan"} == {"operator"}
