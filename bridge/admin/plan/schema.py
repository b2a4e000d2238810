"""Reading a migration plan: YAML in, a checked :class:`Plan` out, or every mistake at once,
each named by its path in the file (``departments[0].rooms[1].slack.channel: unknown
workspace "rathuas"``).

What the file may name is checked against the bridge's config (its Slack workspaces, its
mail domain), not against the live systems: that is :mod:`.check`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.config import Config
from bridge.core.errors import CommandError

VERSION = 1
POLICIES = ("subscribers", "open")
_ALIAS = re.compile(r"^[a-z0-9._=-]+$")
_USER = re.compile(r"^@[^:\s]+:[^\s]+$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_DOMAIN = re.compile(r"^[a-z0-9.-]+\.[a-z]{2,}$")
# A Slack person as `people:` names them: <workspace>:<user id>.
_SLACK_PERSON = re.compile(r"^(?P<workspace>[^:\s]+):(?P<user>[UW][A-Z0-9]{2,})$", re.IGNORECASE)


class PlanError(Exception):
    """The plan cannot be used; ``problems`` are its lines, each ``path: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class SlackChannel:
    workspace: str
    channel: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.workspace}/{self.channel}"


@dataclass(frozen=True, slots=True)
class Subscriber:
    address: str
    name: str | None


@dataclass(slots=True)
class EmailPlan:
    localpart: str
    #: None: the plan leaves the policy as it is.
    policy: str | None
    policy_domain: str | None
    subscribers: list[Subscriber]
    path: str

    @property
    def policy_label(self) -> str | None:
        if self.policy == "domain":
            return f"domain:{self.policy_domain}"
        return self.policy


@dataclass(slots=True)
class RoomPlan:
    alias: str
    name: str | None
    department: str
    admins: list[str]
    slack: list[SlackChannel]
    email: EmailPlan | None
    path: str


@dataclass(slots=True)
class Department:
    name: str
    space: str | None
    admins: list[str]
    rooms: list[RoomPlan]
    path: str


@dataclass(slots=True)
class PersonPlan:
    """One person of ``people:``: their Matrix account and the identities linked to it
    (Slack ``<workspace>:<user id>``, email addresses in lower case)."""

    matrix: str
    slack: list[str]
    email: list[str]
    path: str

    def identities(self) -> list[tuple[str, str]]:
        """(network, identity) as the API's ``/people`` routes name them."""
        return [*(("slack", i) for i in self.slack), *(("email", i) for i in self.email)]


@dataclass(slots=True)
class Plan:
    departments: list[Department]
    people: list[PersonPlan] = field(default_factory=list)

    @property
    def rooms(self) -> list[RoomPlan]:
        return [room for department in self.departments for room in department.rooms]


@dataclass(frozen=True, slots=True)
class Context:
    """What the bridge's config says a plan may name."""

    #: The Slack workspaces' names; None when Slack is not enabled.
    workspaces: tuple[str, ...] | None
    #: The domain of room mail addresses; None when email is not enabled.
    mail_domain: str | None

    @classmethod
    def of(cls, config: Config) -> Context:
        sections = config.networks()
        slack, email = sections.get("slack"), sections.get("email")
        workspaces = tuple(w.name for w in getattr(slack, "workspaces", [])) \
            if slack is not None and slack.enabled else None
        domain = str(getattr(email, "domain", "")) or None \
            if email is not None and email.enabled else None
        return cls(workspaces, domain)


@dataclass
class _Reader:
    context: Context
    problems: list[str] = field(default_factory=list)

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str, known: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping with the keys {', '.join(known)}")
            return None
        for key in value:
            if key not in known:
                self.fail(f"{path}.{key}" if path else str(key),
                          f"unknown key (known here: {', '.join(known)})")
        for key in required:
            if value.get(key) is None:
                self.fail(f"{path}.{key}" if path else key, "missing")
        return value

    def text(self, value: Any, path: str) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(path, "must be a text")
            return None
        text = str(value).strip()
        if not text:
            self.fail(path, "must not be empty")
            return None
        return text

    def items(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        return value

    def alias(self, value: Any, path: str) -> str | None:
        alias = self.text(value, path)
        if alias is None:
            return None
        if not _ALIAS.match(alias):
            self.fail(path, f'"{alias}" is not an alias local part: use lower-case letters, '
                            'digits and . _ = - (no # and no domain)')
            return None
        return alias

    def users(self, value: Any, path: str) -> list[str]:
        found = []
        for index, item in enumerate(self.items(value, path)):
            user = self.text(item, f"{path}[{index}]")
            if user is None:
                continue
            if not _USER.match(user):
                self.fail(f"{path}[{index}]", f'"{user}" is not a Matrix user ID (like '
                                              '"@anna.admin:stadt.example")')
                continue
            found.append(user)
        return found


def load(path: Path, context: Context) -> Plan:
    """Read and check the plan file; :class:`PlanError` lists every mistake."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError([f"{path}: cannot read it ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanError([f"{path}: not valid YAML{where}: {problem}"]) from None
    return parse(raw, context)


def parse(raw: Any, context: Context) -> Plan:
    """Check a plan read from YAML; :class:`PlanError` lists every mistake."""
    reader = _Reader(context)
    top = reader.mapping(raw, "", ("version", "departments", "people"), ("version",))
    if top is None:
        raise PlanError(["the plan must be a mapping with `version: 1` and `departments`"])
    if top.get("departments") is None and top.get("people") is None:
        reader.fail("departments", "missing")
    if top.get("version") is not None and top.get("version") != VERSION:
        reader.fail("version", f"must be {VERSION} (the only format this bridge reads), "
                               f"not {top.get('version')!r}")
    departments = []
    seen_names: dict[str, str] = {}
    seen_aliases: dict[str, str] = {}
    seen_channels: dict[tuple[str, str], str] = {}
    seen_localparts: dict[str, str] = {}
    raw_departments = reader.items(top.get("departments"), "departments")
    if top.get("departments") is not None and not raw_departments:
        reader.fail("departments", "lists no department")
    for d_index, raw_department in enumerate(raw_departments):
        d_path = f"departments[{d_index}]"
        entry = reader.mapping(raw_department, d_path, ("name", "space", "admins", "rooms"),
                               ("name", "rooms"))
        if entry is None:
            continue
        name = reader.text(entry.get("name"), f"{d_path}.name") or ""
        if name and name in seen_names:
            reader.fail(f"{d_path}.name", f'"{name}" is already the name of '
                                          f"{seen_names[name]}")
        seen_names.setdefault(name, d_path)
        space = reader.alias(entry.get("space"), f"{d_path}.space")
        if space is not None:
            _unique(reader, seen_aliases, space, f"{d_path}.space")
        admins = reader.users(entry.get("admins"), f"{d_path}.admins")
        rooms = []
        for r_index, raw_room in enumerate(reader.items(entry.get("rooms"), f"{d_path}.rooms")):
            r_path = f"{d_path}.rooms[{r_index}]"
            room = _room(reader, raw_room, r_path, name, admins, seen_aliases, seen_channels,
                         seen_localparts)
            if room is not None:
                rooms.append(room)
        departments.append(Department(name, space, admins, rooms, d_path))
    people = _people(reader, top.get("people"))
    if reader.problems:
        raise PlanError(reader.problems)
    return Plan(departments, people)


def _people(reader: _Reader, raw: Any) -> list[PersonPlan]:
    """``people:``: who is who. Each Matrix account and each identity once in the plan."""
    people = []
    seen_users: dict[str, str] = {}
    seen: dict[tuple[str, str], str] = {}
    if raw is not None and isinstance(raw, list) and not raw:
        reader.fail("people", "lists nobody")
    for index, item in enumerate(reader.items(raw, "people")):
        path = f"people[{index}]"
        entry = reader.mapping(item, path, ("matrix", "slack", "email"), ("matrix",))
        if entry is None:
            continue
        user = reader.text(entry.get("matrix"), f"{path}.matrix")
        if user is not None and not _USER.match(user):
            reader.fail(f"{path}.matrix", f'"{user}" is not a Matrix user ID (like '
                                          '"@anna.schmidt:stadt.example")')
            user = None
        if user is not None and user in seen_users:
            reader.fail(f"{path}.matrix", f'"{user}" is already listed at {seen_users[user]}')
            user = None
        elif user is not None:
            seen_users[user] = f"{path}.matrix"
        slack = _person_identities(reader, entry.get("slack"), f"{path}.slack", "slack", seen)
        email = _person_identities(reader, entry.get("email"), f"{path}.email", "email", seen)
        if user is not None:
            people.append(PersonPlan(user, slack, email, path))
    return people


def _person_identities(reader: _Reader, raw: Any, path: str, network: str,
                       seen: dict[tuple[str, str], str]) -> list[str]:
    from bridge.email.actions import checked_address

    if raw is None:
        return []
    if network == "slack" and reader.context.workspaces is None:
        reader.fail(path, "Slack is not enabled in this bridge's config (slack.enabled)")
        return []
    if network == "email" and reader.context.mail_domain is None:
        reader.fail(path, "email is not enabled in this bridge's config (email.enabled)")
        return []
    many = isinstance(raw, list)
    found = []
    for index, item in enumerate(raw if many else [raw]):
        i_path = f"{path}[{index}]" if many else path
        typed = reader.text(item, i_path)
        if typed is None:
            continue
        if network == "slack":
            match = _SLACK_PERSON.match(typed)
            known = reader.context.workspaces or ()
            if match is None:
                reader.fail(i_path, f'"{typed}" is not a Slack user as <workspace>:<user id> '
                                    f"(like \"{known[0] if known else 'rathaus'}:U0123ABCD\")")
                continue
            if match["workspace"] not in known:
                reader.fail(i_path, f'unknown workspace "{match["workspace"]}"\n  (the '
                                    f"config's slack.workspaces: {', '.join(known)})")
                continue
            identity = f"{match['workspace']}:{match['user'].upper()}"
        else:
            try:
                identity = checked_address(typed, str(reader.context.mail_domain))
            except CommandError as exc:  # the action's own refusal
                reader.fail(i_path, str(exc).replace("`", '"'))
                continue
        if (network, identity) in seen:
            reader.fail(i_path, f'"{identity}" is already listed at {seen[network, identity]}')
            continue
        seen[network, identity] = i_path
        found.append(identity)
    return found


def _unique(reader: _Reader, seen: dict[str, str], alias: str, path: str) -> None:
    if alias in seen:
        reader.fail(path, f'"{alias}" is already used at {seen[alias]}')
    else:
        seen[alias] = path


def _room(reader: _Reader, raw: Any, path: str, department: str, admins: list[str],
          seen_aliases: dict[str, str], seen_channels: dict[tuple[str, str], str],
          seen_localparts: dict[str, str]) -> RoomPlan | None:
    entry = reader.mapping(raw, path, ("alias", "name", "slack", "email"), ("alias",))
    if entry is None:
        return None
    alias = reader.alias(entry.get("alias"), f"{path}.alias")
    if alias is not None:
        _unique(reader, seen_aliases, alias, f"{path}.alias")
    name = reader.text(entry.get("name"), f"{path}.name")
    slack: list[SlackChannel] = []
    raw_slack = entry.get("slack")
    if raw_slack is not None:
        if reader.context.workspaces is None:
            reader.fail(f"{path}.slack", "Slack is not enabled in this bridge's config "
                                         "(slack.enabled)")
        else:
            many = isinstance(raw_slack, list)
            for index, item in enumerate(raw_slack if many else [raw_slack]):
                s_path = f"{path}.slack[{index}]" if many else f"{path}.slack"
                channel = _slack(reader, item, s_path)
                if channel is None:
                    continue
                key = (channel.workspace, channel.channel)
                if key in seen_channels:
                    reader.fail(f"{s_path}.channel", f'"{channel.label}" is already linked at '
                                                     f"{seen_channels[key]}")
                else:
                    seen_channels[key] = s_path
                    slack.append(channel)
    email = None
    if entry.get("email") is not None:
        email = _email(reader, entry["email"], f"{path}.email", seen_localparts)
    if alias is None:
        return None
    return RoomPlan(alias, name, department, admins, slack, email, path)


def _slack(reader: _Reader, raw: Any, path: str) -> SlackChannel | None:
    entry = reader.mapping(raw, path, ("workspace", "channel"), ("channel",))
    if entry is None:
        return None
    channel = reader.text(entry.get("channel"), f"{path}.channel")
    workspace = reader.text(entry.get("workspace"), f"{path}.workspace")
    if channel is None:
        return None
    if "/" in channel:  # the short form, as apply prints it: rathaus/C0123ABCD
        named, channel = (part.strip() for part in channel.split("/", 1))
        if workspace is not None and named != workspace:
            reader.fail(f"{path}.channel", f'names the workspace "{named}", but workspace '
                                           f'says "{workspace}"')
            return None
        workspace = named
    known = reader.context.workspaces or ()
    if workspace is None:
        if len(known) != 1:
            reader.fail(f"{path}.workspace", "missing: this bridge has several Slack "
                                             f"workspaces ({', '.join(known)}); say which")
            return None
        workspace = known[0]
    elif workspace not in known:
        # Named at the channel: the channel is what cannot be found there.
        # The hint on a line of its own: the first line is the finding alone.
        reader.fail(f"{path}.channel", f'unknown workspace "{workspace}"\n  (the config\'s '
                                       f"slack.workspaces: {', '.join(known)})")
        return None
    channel = channel.lstrip("#") if not _CHANNEL_ID.match(channel) else channel
    if not channel:
        reader.fail(f"{path}.channel", "must name a channel (its ID, like C0123ABCD)")
        return None
    return SlackChannel(workspace, channel, path)


def _email(reader: _Reader, raw: Any, path: str,
           seen_localparts: dict[str, str]) -> EmailPlan | None:
    from bridge.email.actions import checked_address
    from bridge.email.addresses import is_valid_room_localpart

    entry = reader.mapping(raw, path, ("localpart", "policy", "subscribers"), ("localpart",))
    domain = reader.context.mail_domain
    if domain is None:
        reader.fail(path, "email is not enabled in this bridge's config (email.enabled)")
        return None
    if entry is None:
        return None
    localpart = reader.text(entry.get("localpart"), f"{path}.localpart")
    if localpart is not None:
        localpart = localpart.lower()
        if not is_valid_room_localpart(localpart):
            reader.fail(f"{path}.localpart", f'"{localpart}" cannot be a room address: use '
                                             "one word of a-z, 0-9, '.', '_' and '-'")
            localpart = None
        elif localpart in seen_localparts:
            reader.fail(f"{path}.localpart", f'"{localpart}" is already used at '
                                             f"{seen_localparts[localpart]}")
        else:
            seen_localparts[localpart] = f"{path}.localpart"
    policy, policy_domain = None, None
    raw_policy = reader.text(entry.get("policy"), f"{path}.policy")
    if raw_policy is not None:
        policy, _, policy_domain_text = raw_policy.partition(":")
        policy = policy.strip()
        if policy == "domain":
            policy_domain = policy_domain_text.strip().lower()
            if not _DOMAIN.match(policy_domain):
                reader.fail(f"{path}.policy", f'"{raw_policy}": the domain policy names a '
                                              "mail domain, like domain:stadt.example")
                policy = None
        elif policy not in POLICIES or policy_domain_text:
            reader.fail(f"{path}.policy", f'"{raw_policy}" is not a policy: subscribers, '
                                          "open or domain:<domain>")
            policy = None
    subscribers = []
    seen: dict[str, str] = {}
    for index, item in enumerate(reader.items(entry.get("subscribers"),
                                              f"{path}.subscribers")):
        s_path = f"{path}.subscribers[{index}]"
        if isinstance(item, str):
            item = {"address": item}
        sub = reader.mapping(item, s_path, ("address", "name"), ("address",))
        if sub is None:
            continue
        typed = reader.text(sub.get("address"), f"{s_path}.address")
        name = reader.text(sub.get("name"), f"{s_path}.name")
        if typed is None:
            continue
        try:
            address = checked_address(typed, domain)
        except CommandError as exc:  # the action's own refusal, as the bot would say it
            reader.fail(f"{s_path}.address", str(exc).replace("`", '"'))
            continue
        if address in seen:
            reader.fail(f"{s_path}.address", f'"{address}" is already listed at {seen[address]}')
            continue
        seen[address] = s_path
        subscribers.append(Subscriber(address, name))
    if localpart is None:
        return None
    return EmailPlan(localpart, policy, policy_domain, subscribers, path)
