"""Reading a migration plan: every mistake is named by its path in the file, all at once, and
nothing is checked or changed (exit 2); the example file in docs/ is a valid plan. Unit tier:
no network (a broken plan never reaches the bridge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.admin.plan.schema import Context, PlanError, load, parse
from bridge.cli import main as bridge_cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "migration-plan.example.yaml"
CONTEXT = Context(workspaces=("rathaus",), mail_domain="mail.stadt.example")
TWO_WORKSPACES = Context(workspaces=("rathaus", "schule"), mail_domain="mail.stadt.example")


def plan_with(room: dict[str, Any], **department: Any) -> dict[str, Any]:
    return {"version": 1, "departments": [
        {"name": "Bauamt", "rooms": [{"alias": "bauamt-allgemein"}]},
        {"name": "Schulamt", "rooms": [{"alias": "schulamt"}, room], **department}]}


def problems(raw: Any, context: Context = CONTEXT) -> list[str]:
    with pytest.raises(PlanError) as caught:
        parse(raw, context)
    return caught.value.problems


@pytest.mark.parametrize(("room", "context", "expected"), [
    ({"alias": "a", "slack": {"workspace": "rathuas", "channel": "C0123ABCD"}}, CONTEXT,
     'departments[1].rooms[1].slack.channel: unknown workspace "rathuas"\n  (the config\'s '
     "slack.workspaces: rathaus)"),
    ({"alias": "a", "slack": {"channel": "rathuas/C0123ABCD"}}, CONTEXT,
     'departments[1].rooms[1].slack.channel: unknown workspace "rathuas"'),
    ({"alias": "a", "slack": {"channel": "C0123ABCD"}}, TWO_WORKSPACES,
     "departments[1].rooms[1].slack.workspace: missing: this bridge has several Slack "
     "workspaces (rathaus, schule)"),
    ({"alias": "a", "slack": [{"channel": "C1"}, {"channel": "C0123ABCD", "team": "x"}]},
     CONTEXT, "departments[1].rooms[1].slack[1].team: unknown key"),
    ({"alias": "a", "slack": {"workspace": "rathaus"}}, CONTEXT,
     "departments[1].rooms[1].slack.channel: missing"),
    ({"alias": "a", "slack": {"channel": "C1"}}, Context(None, "mail.stadt.example"),
     "departments[1].rooms[1].slack: Slack is not enabled in this bridge's config"),
    ({"alias": "a", "email": {"localpart": "bau amt"}}, CONTEXT,
     'departments[1].rooms[1].email.localpart: "bau amt" cannot be a room address'),
    ({"alias": "a", "email": {"policy": "open"}}, CONTEXT,
     "departments[1].rooms[1].email.localpart: missing"),
    ({"alias": "a", "email": {"localpart": "a", "policy": "everyone"}}, CONTEXT,
     'departments[1].rooms[1].email.policy: "everyone" is not a policy: subscribers, open or '
     "domain:<domain>"),
    ({"alias": "a", "email": {"localpart": "a", "policy": "domain"}}, CONTEXT,
     'departments[1].rooms[1].email.policy: "domain": the domain policy names a mail domain'),
    ({"alias": "a", "email": {"localpart": "a", "subscribers": [{"address": "erika"}]}},
     CONTEXT, 'departments[1].rooms[1].email.subscribers[0].address: "erika" is not an '
              "email address."),
    ({"alias": "a", "email": {"localpart": "a", "subscribers": [
        "erika@stadt.example", {"address": "Erika@Stadt.example", "name": "E"}]}}, CONTEXT,
     'departments[1].rooms[1].email.subscribers[1].address: "erika@stadt.example" is already '
     "listed at departments[1].rooms[1].email.subscribers[0]"),
    ({"alias": "a", "email": {"localpart": "a", "subscribers": ["x@mail.stadt.example"]}},
     CONTEXT, "departments[1].rooms[1].email.subscribers[0].address: Room addresses cannot "
              "subscribe to rooms"),
    ({"alias": "a", "email": {"localpart": "a"}}, Context(("rathaus",), None),
     "departments[1].rooms[1].email: email is not enabled in this bridge's config"),
    ({"alias": "#a:stadt.example"}, CONTEXT,
     'departments[1].rooms[1].alias: "#a:stadt.example" is not an alias local part'),
    ({"alias": "bauamt-allgemein"}, CONTEXT,
     'departments[1].rooms[1].alias: "bauamt-allgemein" is already used at '
     "departments[0].rooms[0].alias"),
    ({"name": "Ohne Alias"}, CONTEXT, "departments[1].rooms[1].alias: missing"),
    ({"alias": "a", "topic": "x"}, CONTEXT,
     "departments[1].rooms[1].topic: unknown key (known here: alias, name, slack, email)"),
    ("schulamt-2", CONTEXT, "departments[1].rooms[1]: must be a mapping"),
])
def test_a_mistake_is_named_by_its_path(room: Any, context: Context, expected: str) -> None:
    found = problems(plan_with(room), context)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_department_mistakes_and_all_of_them_at_once() -> None:
    raw = {"version": 2, "departments": [
        {"name": "Bauamt", "admins": ["anna"], "space": "Bau Amt", "rooms": [
            {"alias": "a", "slack": {"workspace": "rathuas", "channel": "C0123ABCD"}},
            {"alias": "b", "slack": {"channel": "C0123ABCD"},
             "email": {"localpart": "bauamt"}},
            {"alias": "c", "slack": {"channel": "rathaus/C0123ABCD"},
             "email": {"localpart": "Bauamt"}}]},
        {"name": "Bauamt", "rooms": "keine"},
        {"rooms": []}]}
    assert problems(raw) == [
        "version: must be 1 (the only format this bridge reads), not 2",
        'departments[0].space: "Bau Amt" is not an alias local part: use lower-case letters, '
        "digits and . _ = - (no # and no domain)",
        'departments[0].admins[0]: "anna" is not a Matrix user ID (like '
        '"@anna.admin:stadt.example")',
        'departments[0].rooms[0].slack.channel: unknown workspace "rathuas"\n  (the config\'s '
        "slack.workspaces: rathaus)",
        'departments[0].rooms[2].slack.channel: "rathaus/C0123ABCD" is already linked at '
        "departments[0].rooms[1].slack",
        'departments[0].rooms[2].email.localpart: "bauamt" is already used at '
        "departments[0].rooms[1].email.localpart",
        'departments[1].name: "Bauamt" is already the name of departments[0]',
        "departments[1].rooms: must be a list",
        "departments[2].name: missing",
    ]


@pytest.mark.parametrize(("raw", "expected"), [
    (None, "the plan must be a mapping"),
    ({"version": 1}, "departments: missing"),
    ({"version": 1, "departments": []}, "departments: lists no department"),
    ({"departments": [{"name": "A", "rooms": []}]}, "version: missing"),
    ({"version": 1, "departments": [{"name": "A", "rooms": []}], "extra": 1},
     "extra: unknown key"),
    ({"version": 1, "people": []}, "people: lists nobody"),
    ({"version": 1, "people": {"matrix": "@a:b"}}, "people: must be a list"),
])
def test_the_top_of_the_file(raw: Any, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(raw)), problems(raw)


@pytest.mark.parametrize(("person", "context", "expected"), [
    ({"slack": ["rathaus:U0ANNA"]}, CONTEXT, "people[1].matrix: missing"),
    ({"matrix": "anna"}, CONTEXT,
     'people[1].matrix: "anna" is not a Matrix user ID (like "@anna.schmidt:stadt.example")'),
    ({"matrix": "@ben:stadt.example"}, CONTEXT,
     'people[1].matrix: "@ben:stadt.example" is already listed at people[0].matrix'),
    ({"matrix": "@c:stadt.example", "slack": ["U0ANNA"]}, CONTEXT,
     'people[1].slack[0]: "U0ANNA" is not a Slack user as <workspace>:<user id> (like '
     '"rathaus:U0123ABCD")'),
    ({"matrix": "@c:stadt.example", "slack": ["rathuas:U0ANNA"]}, CONTEXT,
     'people[1].slack[0]: unknown workspace "rathuas"\n  (the config\'s slack.workspaces: '
     "rathaus)"),
    ({"matrix": "@c:stadt.example", "slack": ["rathaus:u0ben"]}, CONTEXT,
     'people[1].slack[0]: "rathaus:U0BEN" is already listed at people[0].slack[0]'),
    ({"matrix": "@c:stadt.example", "slack": "rathaus:U0C"}, Context(None, "m.example"),
     "people[1].slack: Slack is not enabled in this bridge's config (slack.enabled)"),
    ({"matrix": "@c:stadt.example", "email": ["c(at)stadt.example"]}, CONTEXT,
     'people[1].email[0]: "c(at)stadt.example" is not an email address.'),
    ({"matrix": "@c:stadt.example", "email": ["Ben@Stadt.example"]}, CONTEXT,
     'people[1].email[0]: "ben@stadt.example" is already listed at people[0].email[0]'),
    ({"matrix": "@c:stadt.example", "email": ["c@stadt.example"]}, Context(("rathaus",), None),
     "people[1].email: email is not enabled in this bridge's config (email.enabled)"),
    ({"matrix": "@c:stadt.example", "teams": ["c"]}, CONTEXT,
     "people[1].teams: unknown key (known here: matrix, slack, email)"),
])
def test_a_mistake_in_people_is_named_by_its_path(person: dict[str, Any], context: Context,
                                                  expected: str) -> None:
    raw = {"version": 1, "people": [
        {"matrix": "@ben:stadt.example", "slack": ["rathaus:U0BEN"],
         "email": ["ben@stadt.example"]}, person]}
    found = [p for p in problems(raw, context) if not p.startswith("people[0]")]
    assert found == [expected], found


def test_people_read_as_written() -> None:
    plan = parse({"version": 1, "people": [
        {"matrix": "@anna.schmidt:stadt.example", "slack": ["rathaus:u0anna"],
         "email": ["Anna.Schmidt@Stadt.example"]},
        {"matrix": "@ben:stadt.example", "email": "ben@stadt.example"},
        {"matrix": "@nobody:stadt.example"}]}, CONTEXT)
    assert plan.departments == []
    assert [(p.matrix, p.identities(), p.path) for p in plan.people] == [
        ("@anna.schmidt:stadt.example",
         [("slack", "rathaus:U0ANNA"), ("email", "anna.schmidt@stadt.example")], "people[0]"),
        ("@ben:stadt.example", [("email", "ben@stadt.example")], "people[1]"),
        ("@nobody:stadt.example", [], "people[2]")]


def test_a_good_plan_reads_as_written() -> None:
    plan = parse({"version": 1, "departments": [{
        "name": "Bauamt", "space": "bauamt", "admins": ["@anna.admin:stadt.example"],
        "rooms": [{"alias": "bauamt-allgemein", "name": "Bauamt", "slack": {
            "channel": "C0123ABCD"}, "email": {
            "localpart": "Bauamt", "policy": "domain:Stadt.example", "subscribers": [
                {"address": "Erika@stadt.example", "name": "Erika Mustermann"},
                "max@stadt.example"]}}]}]}, CONTEXT)
    room = plan.rooms[0]
    assert (room.alias, room.department, room.admins) == (
        "bauamt-allgemein", "Bauamt", ["@anna.admin:stadt.example"])
    assert [c.label for c in room.slack] == ["rathaus/C0123ABCD"]  # the one workspace
    assert room.email is not None
    assert (room.email.localpart, room.email.policy_label) == ("bauamt",
                                                               "domain:stadt.example")
    assert [(s.address, s.name) for s in room.email.subscribers] == [
        ("erika@stadt.example", "Erika Mustermann"), ("max@stadt.example", None)]


def test_the_example_file_is_a_valid_plan_of_two_departments() -> None:
    plan = load(EXAMPLE, Context(("rathaus",), "mail.stadt.example"))
    assert [d.name for d in plan.departments] == ["Bauamt", "Personalamt"]
    assert plan.departments[0].space == "bauamt"
    assert {c.label for room in plan.rooms for c in room.slack} == {
        "rathaus/C0123ABCD", "rathaus/C0456EFGH", "rathaus/C0789IJKL", "rathaus/G0PERSLEIT"}
    assert [(p.matrix, p.identities()) for p in plan.people] == [
        ("@anna.schmidt:stadt.example",
         [("slack", "rathaus:U0ANNA"), ("email", "anna.schmidt@stadt.example")]),
        ("@erika.mustermann:stadt.example", [("email", "erika@stadt.example")])]


def test_the_commands_refuse_a_broken_plan_or_config_without_asking_the_bridge(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    assert bridge_cli(["generate-config", "-o", str(config)]) == 0
    data = yaml.safe_load(config.read_text())
    data["slack"].update(enabled=True, workspaces=[{"name": "rathaus", "bot_token": "xoxb-1",
                                                    "app_token": "xapp-1"}])
    config.write_text(yaml.safe_dump(data))
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ndepartments:\n  - name: Bauamt\n    rooms:\n"
                    "      - alias: bauamt\n"
                    "        slack: {workspace: rathuas, channel: C0123ABCD}\n")
    capsys.readouterr()
    for command in (["plan", "check"], ["plan", "apply"]):
        assert bridge_cli([*command, "-c", str(config), str(plan)]) == 2
        err = capsys.readouterr().err
        # The finding alone on its line, as the README shows it; the hint on the next.
        assert err.splitlines()[:2] == ['departments[0].rooms[0].slack.channel: unknown '
                                        'workspace "rathuas"',
                                        "  (the config's slack.workspaces: rathaus)"]
        assert "not a valid plan (1 problem); nothing was checked or changed" in err
    plan.write_text("version: 1\ndepartments: [\n")
    assert bridge_cli(["plan", "check", "-c", str(config), str(plan)]) == 2
    assert "not valid YAML (line" in capsys.readouterr().err

    plan.write_text("version: 1\ndepartments:\n  - name: Bauamt\n    rooms: [{alias: a}]\n")
    data["provisioning"]["shared_secret"] = ""
    config.write_text(yaml.safe_dump(data))
    assert bridge_cli(["plan", "apply", "-c", str(config), str(plan)]) == 2
    assert "provisioning.shared_secret" in capsys.readouterr().err
