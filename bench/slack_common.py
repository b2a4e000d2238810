"""Shared parts of the Slack benchmarks: slack_synapse.py, slack_latency.py, slack_outbound.py.

The Slack side is the simulator of testkit/slack_sim (``SlackSimulator``), run in this process:
one workspace in Socket Mode with ``--channels`` channels and ``--users`` people who are
members of all of them (and the app's bot user, so that the app hears them and may post).
The bridge (its own process, ``python -m bridge run``, pinned to one core, as in
transactions.py) talks to it with slack-sdk exactly as to Slack.

What is here:

- the workspace and the bridge's ``slack`` config section for it;
- realistic Slack messages (mrkdwn, links, a mention, emoji, a list, a quote), each carrying a
  marker (``[run-n]``) so that the Matrix event it becomes can be matched to it;
- :class:`PostCounter`, the simulator's Web API noting when each ``chat.postMessage`` arrived;
- :class:`SlackHarness`, the email benchmarks' harness (bench/email_common.py: stub
  homeserver with a media repository, the bridge process, an admin who drives the bot in
  transactions) with Slack switched on, and rooms linked to channels with
  ``!bridge link slack <channel>``. Email stays on as well, idle: the harness is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from common import ADMIN, BOT, DATABASE_HELP, DOMAIN, PREFIX, git_revision
from email_common import BenchError, Harness

from testkit.slack_sim import SlackSimulator, Team
from testkit.slack_sim.webapi import WebApi

__all__ = ["ADMIN", "BOT", "DOMAIN", "PREFIX"]

TEAM_ID = "T0BENCH"
TEAM_NAME = "bench"
BOT_TOKEN = "xoxb-bench-token"
APP_TOKEN = "xapp-bench-token"
PUPPET_PREFIX = "slack_"  # slack.puppet_prefix (the default)

# What people write in Slack: mrkdwn with the usual decorations. ``{other}`` becomes a mention
# of another member (the bridge looks the user up once, then knows them).
_TEXTS = [
    "Guten Morgen *alle*, die Sitzung beginnt heute um 10 Uhr in Raum 2.14 :coffee:",
    "Der Bauantrag <https://bauamt.example/antrag/4711|4711> ist eingegangen, <@{other}> "
    "schaust du bitte drüber?",
    "Bitte _bis Freitag_ die Stellungnahmen ins Laufwerk legen. ~Donnerstag~ geht leider "
    "nicht, da ist Personalversammlung.",
    "Bei drei Anträgen fehlt noch `Formular B-12`:\n• Müllerstraße 5\n• Gartenweg 12\n"
    "• Am Markt 1",
    "> Die Abstandsflächen zum Nachbargrundstück reichen aus.\nDas sehe ich auch so :+1:",
    "Kurze Frage: wer übernimmt heute die Bürgersprechstunde? Ich bin ab 14 Uhr im "
    "Außentermin.",
    "Die neue Gebührenordnung gilt ab dem 1. des Monats, Details stehen im Intranet unter "
    "<https://intranet.example/gebuehren>.",
    "Danke euch für die schnelle Hilfe gestern :pray: Der Bürger war sehr zufrieden.",
]
MARKER = re.compile(r"\[(?P<run>[0-9a-f]{8})-(?P<n>\d+)\]")


def channel_ids(count: int) -> list[str]:
    return [f"C0BENCH{i:03d}" for i in range(count)]


def user_ids(count: int) -> list[str]:
    return [f"U0BENCH{i:03d}" for i in range(count)]


def puppet_of(user_id: str, team_id: str = TEAM_ID) -> str:
    """The Matrix user the bridge makes for a Slack user (@slack_<team>_<user>, lower case)."""
    from bridge.core.connector import escape_localpart

    return f"@{PUPPET_PREFIX}{escape_localpart(f'{team_id}_{user_id}')}:{DOMAIN}"


# --- the workspace ---------------------------------------------------------------------------


@dataclass
class BenchWorkspace:
    sim: SlackSimulator
    team: Team
    channels: list[str]
    users: list[str]


def add_workspace(sim: SlackSimulator, channels: int, users: int) -> BenchWorkspace:
    """A Socket Mode workspace: ``users`` people and the app's bot user in every channel."""
    team = sim.add_team(team_id=TEAM_ID, name=TEAM_NAME, bot_token=BOT_TOKEN,
                        app_token=APP_TOKEN, bot_name="matrix-bridge")
    people = user_ids(users)
    surnames = ["Schmidt", "Weber", "Öztürk", "Nowak", "Fischer", "Becker", "Wagner", "Hoffmann"]
    for i, user in enumerate(people):
        first = ["Anna", "Ben", "Cem", "Dana", "Emil", "Frida", "Gül", "Hans"][i % 8]
        sim.add_user(team, user, name=f"{first.lower()}{i}",
                     real_name=f"{first} {surnames[i % len(surnames)]}",
                     display_name=first if i % 2 == 0 else "")
    ids = channel_ids(channels)
    for i, channel in enumerate(ids):
        sim.add_channel(team, channel, name=f"amt-{i:03d}", topic=f"Sachgebiet {i}",
                        members=[*people, team.bot_user_id])
    return BenchWorkspace(sim, team, ids, people)


def slack_config(sim: SlackSimulator, *, rate_limits: bool) -> dict[str, Any]:
    """The bridge's ``slack`` section against the simulator, Socket Mode."""
    return {
        "enabled": True,
        "puppet_prefix": PUPPET_PREFIX,
        "api_url": sim.api_url,
        "workspaces": [{"name": TEAM_NAME, "bot_token": BOT_TOKEN, "app_token": APP_TOKEN}],
        "rate_limits": rate_limits,
    }


# --- messages --------------------------------------------------------------------------------


@dataclass(slots=True)
class Planned:
    """One Slack message of a phase: where, by whom, and its text with the marker."""

    n: int
    channel: str
    user: str
    text: str


class Messages:
    """Builds the messages of each phase, spread round-robin over the channels and
    the users, and remembers when each was emitted and when it arrived (time.monotonic())."""

    def __init__(self, workspace: BenchWorkspace) -> None:
        self.workspace = workspace
        self.run = uuid.uuid4().hex[:8]
        self._n = itertools.count(1)
        self.planned: dict[int, Planned] = {}
        self.emitted: dict[int, float] = {}
        self.arrived: dict[int, float] = {}
        self.arrived_in: dict[int, str] = {}  # the room (or channel) it reached
        self.duplicates = 0

    def plan(self, count: int) -> list[Planned]:
        ws = self.workspace
        planned = []
        for i in range(count):
            n = next(self._n)
            user = ws.users[(i // len(ws.channels) + i) % len(ws.users)]
            other = ws.users[(ws.users.index(user) + 1) % len(ws.users)]
            text = _TEXTS[n % len(_TEXTS)].format(other=other)
            message = Planned(n, ws.channels[i % len(ws.channels)], user,
                              f"{text} {self.tag(n)}")
            self.planned[n] = message
            planned.append(message)
        return planned

    async def post(self, message: Planned) -> None:
        """A person writes it in Slack: the simulator stores it and emits the event."""
        ws = self.workspace
        self.emitted[message.n] = time.monotonic()
        await ws.sim.post_message(ws.team, message.channel, message.user, text=message.text)

    def marker(self, body: str) -> int | None:
        """The message number in a Matrix body, if it is one of this run's."""
        match = MARKER.search(body)
        if match is None or match["run"] != self.run:
            return None
        return int(match["n"])

    def tag(self, n: int) -> str:
        return f"[{self.run}-{n}]"

    def note_arrival(self, body: str, at: float, where: str) -> None:
        n = self.marker(body)
        if n is None:
            return
        if n in self.arrived:
            self.duplicates += 1
        else:
            self.arrived[n] = at
            self.arrived_in[n] = where

    def misrouted(self, planned: list[Planned], target: Callable[[Planned], str]) -> int:
        """Messages that arrived somewhere else than ``target(message)`` (the room linked to
        their channel, or their channel)."""
        return sum(1 for m in planned
                   if m.n in self.arrived_in and self.arrived_in[m.n] != target(m))

    def missing(self, planned: list[Planned]) -> int:
        return sum(1 for m in planned if m.n not in self.arrived)

    def latencies(self, planned: list[Planned]) -> list[float]:
        return [self.arrived[m.n] - self.emitted[m.n] for m in planned
                if m.n in self.arrived and m.n in self.emitted]


def chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- what the simulator's Web API receives -------------------------------------------------


class PostCounter(WebApi):
    """The simulator's Web API, telling listeners about each accepted ``chat.postMessage``
    (arrival time.monotonic(), text, channel) and keeping Slack's errors for the others.
    Installed with ``sim.webapi = PostCounter(sim)``."""

    def __init__(self, sim: SlackSimulator) -> None:
        super().__init__(sim)
        self.posted = 0
        self.refused: list[str] = []
        self.listeners: list[Callable[[float, str, str], None]] = []

    def call(self, name: str, raw: dict[str, Any],
             token: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        status, body, headers = super().call(name, raw, token)
        if name == "chat.postMessage":
            now = time.monotonic()
            if status == 200 and body.get("ok"):
                self.posted += 1
                text, channel = str(raw.get("text") or ""), str(raw.get("channel") or "")
                for listener in self.listeners:
                    listener(now, text, channel)
            else:
                self.refused.append(str(body.get("error") or status))
        return status, body, headers


# --- the stub-homeserver harness with Slack on ---------------------------------------------


def add_slack_args(parser: argparse.ArgumentParser, *, channels: int = 20,
                   users: int = 8) -> None:
    parser.add_argument("--channels", type=int, default=channels,
                        help=f"Slack channels, each linked to its own room (default {channels})")
    parser.add_argument("--users", type=int, default=users,
                        help=f"Slack users posting in every channel (default {users})")


class SlackHarness(Harness):
    """The email benchmarks' harness (stub homeserver, database, the bridge process, an
    admin) with the simulator in this process and the bridge's ``slack`` section pointing at
    it; :meth:`link_channels` gives each channel a room."""

    def __init__(self, args: argparse.Namespace, workdir: Path, *, rate_limits: bool) -> None:
        super().__init__(args, workdir)
        self.sim = SlackSimulator(host="127.0.0.1", port=0)
        self.posts = PostCounter(self.sim)
        self.sim.webapi = self.posts
        self.rate_limits = rate_limits
        self.workspace: BenchWorkspace | None = None
        self.rooms: dict[str, str] = {}  # channel -> room

    async def start(self) -> None:
        await self.sim.start()
        self.workspace = add_workspace(self.sim, self.args.channels, self.args.users)
        await super().start()
        assert self.bridge is not None
        print(f"  bridge pid {self.bridge.pid}", flush=True)
        await self.wait_slack(self.args.timeout)

    def write_config(self, path: Path, db_url: str) -> None:
        super().write_config(path, db_url)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["slack"] = slack_config(self.sim, rate_limits=self.rate_limits)
        from bridge.config import parse_config

        parse_config(json.loads(json.dumps(data)), environ={})
        path.write_text(yaml.safe_dump(data), encoding="utf-8")

    async def wait_slack(self, timeout: float) -> None:
        """Until the bridge says its Slack workspace is connected (Socket Mode hello)."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            self.check_alive()
            _, health = await self.client.health()
            slack = (health.get("networks") or {}).get("slack") or {}
            detail = str(slack.get("detail"))
            if slack.get("ok"):
                return
            await asyncio.sleep(0.05)
        raise BenchError(f"the bridge did not connect to Slack within {timeout:.0f}s "
                         f"({detail}):\n{self.log_tail()}")

    async def close(self) -> None:
        await super().close()
        await self.sim.stop()

    async def link_channels(self) -> dict[str, str]:
        """A room per channel, as an admin makes it: invite the bot, then
        ``!bridge link slack <channel>`` in it."""
        assert self.workspace is not None and self.load is not None
        rooms = {c: f"!{c.lower()}-{uuid.uuid4().hex[:6]}:{DOMAIN}"
                 for c in self.workspace.channels}
        for part in chunked(list(rooms.values()), 50):
            await self.put([self.load.invite_bot(room) for room in part])
        deadline = time.monotonic() + self.args.timeout
        wanted = set(rooms.values())
        while True:
            greeted = {e.room_id for e in self.stub.state.sent
                       if e.sender == BOT and str(e.content.get("body", "")).startswith("Hello")}
            if wanted <= greeted:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the bot greeted {len(greeted & wanted)} of {len(wanted)} "
                                 f"rooms within {self.args.timeout:.0f}s:\n{self.log_tail()}")
            self.check_alive()
            await asyncio.sleep(0.02)
        for channel, room in rooms.items():
            [answer] = await self.commands(room, [f"{PREFIX} link slack {channel}"])
            if "Linked" not in answer:
                raise BenchError(f"`link slack {channel}` was answered: {answer}")
        self.rooms = rooms
        return rooms


    def count_arrivals(self, messages: Messages) -> None:
        """Note every message a Slack puppet sends to the stub homeserver."""
        prefix = f"@{PUPPET_PREFIX}"

        def on_sent(sent: Any) -> None:
            if sent.sender.startswith(prefix) and sent.event_type == "m.room.message":
                messages.note_arrival(str(sent.content.get("body", "")), sent.arrived,
                                      sent.room_id)

        self.sent_listeners.append(on_sent)

    async def wait_arrived(self, messages: Messages, planned: list[Planned], timeout: float,
                           where: str = "the homeserver",
                           why: Callable[[], str] = lambda: "") -> None:
        """Until every planned message reached ``where`` (noted in ``messages``); ``why``
        adds what that side said, should they not."""
        deadline = time.monotonic() + timeout
        while messages.missing(planned):
            if time.monotonic() > deadline:
                raise BenchError(f"{len(planned) - messages.missing(planned)} of "
                                 f"{len(planned)} messages reached {where} within "
                                 f"{timeout:.0f}s{why()}:\n{self.log_tail()}")
            self.check_alive()
            await asyncio.sleep(0.01)


def resent_envelopes(sim: SlackSimulator, team: Team) -> int:
    """Events the app acknowledged only on a repeated delivery (the first went unacked for
    the simulator's ack_timeout, 3 s as Slack's, or the connection dropped)."""
    return sum(1 for d in sim.dispatcher.teams[team.id].delivered if d.attempt)


def slack_header(title: str, args: argparse.Namespace, database: str) -> None:
    def cpu(value: int | None) -> str:
        return f"on CPU {value}" if value is not None else "unpinned"

    print()
    print("=" * 78)
    print(title)
    print(f"bridge {cpu(args.bridge_cpu)}; bench, stub homeserver and Slack simulator "
          f"{cpu(args.bench_cpu)}")
    print(f"database: {database}; tree: {git_revision()}")
    print("-" * 78)


def database_arg(parser: argparse.ArgumentParser) -> None:
    """``--database`` as the other benchmarks have it (for scripts that do not take
    email_common's common arguments)."""
    parser.add_argument("--database", default=None, help=DATABASE_HELP)
