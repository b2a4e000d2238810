"""Benchmark: Slack -> Matrix messages per second through the bridge, side by side with the
same messages posted straight through the appservice API, against one real Synapse.

Everything runs on this machine: a throwaway Synapse (from the matrix-synapse package, as the
tests start it: testkit/synapse.py), the bridge as its own process (``python -m bridge
run``, pinned to ``--bridge-cpu``), and in this process (pinned to ``--bench-cpu``) the Slack
simulator and the load. Synapse is pinned to ``--synapse-cpu`` (default: the bench's core), so
that in both phases it shares a core with the same light client work and the bridge has its
own.

``--channels`` Slack channels are linked to as many rooms, made as an admin makes them
(``createRoom`` with the bot invited, ``!bridge link slack <channel>``). ``--users`` Slack users
post in every channel; their puppets join the rooms during a warm-up. Then, per round:

1. **direct**: ``--messages`` m.room.message events go straight to Synapse through the
   appservice API (``PUT /rooms/{room}/send`` with the as_token and ``?user_id=<puppet>``,
   ``&ts=``), as the puppets of the Slack users, with the content the bridge would send for
   the same Slack text. One sender per room, each sending its room's messages one after the
   other: the concurrency the bridge uses (one delivery in flight per room). Rate = messages /
   (first PUT -> last answer).
2. **bridge**: the same number of messages are posted in Slack (the simulator emits them over
   Socket Mode at once, spread over the channels); the bridge stores, acknowledges and
   delivers them to Synapse. Rate = messages / (first post -> the bridge has delivered the
   last one to Synapse, read from its ``bridge_events_total{network="matrix",direction="out"}``).

Afterwards the bench reads every room's timeline from Synapse (``/messages``) and checks that
each message of each phase is there exactly once, in the room of its channel.

Targets: the bridge reaches at least 95% of the direct rate, and spends at most 1 ms of
CPU per message (its whole process, from /proc, the puppet's event coming back included).
Run ``python bench/slack_synapse.py --help`` for the options; bench/README.md explains the
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml
from common import (
    BenchDatabase,
    BridgeClient,
    BridgeFailures,
    BridgeProcess,
    free_port,
    git_revision,
    machine_busy_seconds,
    metric_value,
    poll_until,
    proc_cpu_seconds,
    start_synapse,
    verdict,
    write_config,
)
from email_common import BenchError, run
from slack_common import (
    ADMIN,
    BOT,
    PREFIX,
    BenchWorkspace,
    Messages,
    Planned,
    add_slack_args,
    add_workspace,
    database_arg,
    puppet_of,
    resent_envelopes,
    slack_config,
)

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.slack_sim.richtext import escape_client_text, rich_text_blocks
from testkit.synapse import SynapseServer

TARGET_SHARE = 0.95
# Bridge CPU per relayed Slack message (its whole process, from /proc), the handling of the
# puppet's event that the homeserver sends back included (issue 15).
TARGET_CPU_MS = 1.0


# --- pinning and CPU -----------------------------------------------------------------------


def pin(pid: int, cpu: int | None) -> None:
    """Every thread of a process to one core (threads started later inherit it)."""
    if cpu is None:
        return
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.sched_setaffinity(int(tid), {cpu})


@dataclass
class Cpu:
    """CPU seconds used by the bridge, Synapse, this process and everything else."""

    bridge: float = 0.0
    synapse: float = 0.0
    bench: float = 0.0
    other: float = 0.0


class CpuClock:
    def __init__(self, bridge_pid: int, synapse_pid: int) -> None:
        self.pids = (bridge_pid, synapse_pid, os.getpid())
        self.start = self._read()

    def _read(self) -> tuple[float, ...]:
        return (*(proc_cpu_seconds(p) for p in self.pids), machine_busy_seconds())

    def stop(self) -> Cpu:
        end = self._read()
        bridge, synapse, bench, busy = (b - a for a, b in zip(self.start, end, strict=True))
        return Cpu(bridge, synapse, bench, max(0.0, busy - bridge - synapse - bench))


# --- results -------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    messages: int = 0
    started: float = 0.0
    finished: float = 0.0
    cpu: Cpu = field(default_factory=Cpu)
    found: int = 0  # in Synapse, checked afterwards
    duplicates: int = 0
    misplaced: int = 0
    resent: int = 0  # bridge phase: envelopes the simulator had to send again
    # bridge phase: the bridge's CPU seconds from the first post until it has also handled
    # every puppet's event the homeserver sent back (its matrix "in" events counter)
    bridge_cpu_with_echo: float = math.nan

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.bridge_cpu_with_echo / self.messages if self.messages else math.nan

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else math.nan

    @property
    def complete(self) -> bool:
        return self.found == self.messages and not self.duplicates and not self.misplaced

    def cpu_line(self) -> str:
        span = self.seconds or math.nan
        c = self.cpu
        return (f"CPU: bridge {100 * c.bridge / span:.0f}%, Synapse {100 * c.synapse / span:.0f}%"
                f", bench+simulator {100 * c.bench / span:.0f}%, other processes "
                f"{100 * c.other / span:.0f}% (of one core)")

    def summary(self) -> dict[str, Any]:
        span = self.seconds or math.nan
        return {"messages": self.messages, "seconds": round(self.seconds, 3),
                "per_second": round(self.per_second, 1), "found": self.found,
                "duplicates": self.duplicates, "misplaced": self.misplaced,
                "resent_envelopes": self.resent,
                "bridge_cpu_ms_per_message": None if math.isnan(self.cpu_ms_per_message)
                else round(self.cpu_ms_per_message, 3),
                "cpu_share": {k: round(v / span, 2) for k, v in vars(self.cpu).items()}}


@dataclass
class Results:
    database: str = ""
    synapse_version: str = ""
    startup_seconds: float = math.nan
    setup_seconds: float = math.nan
    rounds: list[tuple[Phase, Phase]] = field(default_factory=list)
    failures: BridgeFailures = field(default_factory=BridgeFailures)
    log_lines: int = 0
    log_tail: str = ""
    wall_seconds: float = math.nan

    def totals(self) -> tuple[float, float]:
        """(direct, bridge) messages/s over all rounds."""
        def rate(phases: list[Phase]) -> float:
            seconds = sum(p.seconds for p in phases)
            return sum(p.messages for p in phases) / seconds if seconds > 0 else math.nan
        return (rate([d for d, _ in self.rounds]), rate([b for _, b in self.rounds]))

    def bridge_cpu_ms(self) -> float:
        """Bridge CPU per message over all rounds' bridge phases (echoes included), in ms."""
        messages = sum(b.messages for _, b in self.rounds)
        cpu = sum(b.bridge_cpu_with_echo for _, b in self.rounds)
        return 1000 * cpu / messages if messages else math.nan

    def summary(self, met: bool) -> dict[str, Any]:
        direct, bridge = self.totals()
        return {"database": self.database, "synapse": self.synapse_version,
                "targets_met": met, "revision": git_revision(),
                "direct_per_second": round(direct, 1), "bridge_per_second": round(bridge, 1),
                "bridge_share": round(bridge / direct, 3) if direct else None,
                "bridge_cpu_ms_per_message": round(self.bridge_cpu_ms(), 3),
                "rounds": [{"direct": d.summary(), "bridge": b.summary()}
                           for d, b in self.rounds],
                "failures": self.failures.total}


# --- the set-up ----------------------------------------------------------------------------


class Setup:
    """Synapse, the simulator, the bridge and the admin; everything :func:`benchmark` needs."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.synapse_port, self.as_port = free_port(), free_port()
        self.tokens = (f"as_{uuid.uuid4().hex}", f"hs_{uuid.uuid4().hex}")
        self.sim = SlackSimulator(host="127.0.0.1", port=0, ack_timeout=args.ack_timeout)
        self.database = BenchDatabase(args.database, workdir)
        self.synapse: SynapseServer | None = None
        self.bridge: BridgeProcess | None = None
        self.session: aiohttp.ClientSession | None = None
        self.client: BridgeClient | None = None
        self.admin: MatrixTestClient | None = None
        self.workspace: BenchWorkspace | None = None
        self.rooms: dict[str, str] = {}  # channel -> room

    @property
    def synapse_url(self) -> str:
        return f"http://127.0.0.1:{self.synapse_port}"

    @property
    def synapse_pid(self) -> int:
        assert self.synapse is not None and self.synapse._proc is not None
        return self.synapse._proc.pid

    def pin_synapse(self) -> None:
        pin(self.synapse_pid, self.args.synapse_cpu)

    async def start(self) -> float:
        await self.sim.start()
        self.workspace = add_workspace(self.sim, self.args.channels, self.args.users)
        db_url = await self.database.create()
        config_path = self.workdir / "config.yaml"
        data = write_config(config_path, self.synapse_port, self.as_port, db_url, self.tokens)
        data["slack"] = slack_config(self.sim, rate_limits=True)
        from bridge.config import parse_config
        from bridge.registration import build_registration

        config = parse_config(json.loads(json.dumps(data)), environ={})
        config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        registration = self.workdir / "registration.yaml"
        registration.write_text(yaml.safe_dump(build_registration(config)), encoding="utf-8")

        self.synapse = await start_synapse(self.workdir / "synapse", self.synapse_port,
                                           registration)
        self.pin_synapse()

        self.bridge = BridgeProcess(config_path, self.workdir, self.args.bridge_cpu, None)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        self.client = BridgeClient(self.session, f"http://127.0.0.1:{self.as_port}")
        print(f"starting the bridge ({self.database.describe()}) ...")
        started = time.monotonic()
        self.bridge.start()
        print(f"  bridge pid {self.bridge.pid}", flush=True)
        await self.wait_ready()
        self.bridge.pin()
        return time.monotonic() - started

    async def wait_ready(self) -> None:
        """Until /_bridge/health is 200 and Slack is connected."""
        assert self.client is not None and self.bridge is not None
        deadline = time.monotonic() + self.args.timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, ValueError):
                status, health = await self.client.health()
                slack = (health.get("networks") or {}).get("slack") or {}
                last = str(slack.get("detail") or health)
                if status == 200 and slack.get("ok"):
                    return
            await asyncio.sleep(0.05)
        raise BenchError(f"the bridge was not ready and connected to Slack within "
                         f"{self.args.timeout:.0f}s ({last}):\n{self.log_tail()}")

    async def wait_idle(self) -> None:
        """Until the bridge's inbox and outbox are empty (its health report says so)."""
        assert self.client is not None
        deadline = time.monotonic() + self.args.timeout
        queues: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            _, health = await self.client.health()
            queues = health.get("queues") or {}
            if queues.get("inbox") == 0 and queues.get("outbox") == 0:
                return
            await asyncio.sleep(0.1)
        raise BenchError(f"the bridge's queues did not empty within {self.args.timeout:.0f}s "
                         f"({queues}):\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.bridge is not None and not self.bridge.alive():
            raise BenchError("the bridge exited:\n" + self.bridge.log_tail())
        if self.synapse is not None and not self.synapse.running:
            raise BenchError("Synapse exited:\n" + self.synapse.log_tail(20))

    def log_tail(self, lines: int = 15) -> str:
        return self.bridge.log_tail(lines) if self.bridge is not None else ""

    async def link_rooms(self) -> None:
        """As an admin does it: a room per channel with the bot (power level 100, so that it
        can invite the puppets), then ``!bridge link slack <channel>``."""
        assert self.synapse is not None and self.workspace is not None
        user_id, token = await self.synapse.register_user(ADMIN[1:].split(":")[0])
        self.admin = MatrixTestClient(self.synapse_url, user_id, token)
        await self.admin.initial_sync()
        for i, channel in enumerate(self.workspace.channels):
            try:
                room = await open_room(BOT, self.admin, bot_power=100, name=f"Amt {i:03d}")
                await command(BOT, self.admin, room, f"{PREFIX} link slack {channel}",
                              expect="Linked")
            except TimeoutError as exc:
                raise BenchError(f"setting up the room for {channel} failed: "
                                 f"{str(exc).splitlines()[0]}\n{self.log_tail()}") from None
            self.rooms[channel] = room

    async def handled_in(self) -> float:
        """Matrix events the bridge has handled (received from the homeserver)."""
        assert self.client is not None
        text = await self.client.metrics()
        return metric_value(text, "bridge_events_total", network="matrix",
                            direction="in") or 0.0

    async def delivered(self) -> float:
        """Matrix events the bridge has sent (its outbox's deliveries to the homeserver)."""
        assert self.client is not None
        text = await self.client.metrics()
        return metric_value(text, "bridge_events_total", network="matrix",
                            direction="out") or 0.0

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
        if self.bridge is not None:
            code = await asyncio.to_thread(self.bridge.stop)
            if code not in (0, None):
                print(f"the bridge exited with code {code}:\n{self.bridge.log_tail()}",
                      file=sys.stderr)
        if self.session is not None:
            await self.session.close()
        await self.sim.stop()
        if self.synapse is not None:
            await asyncio.to_thread(self.synapse.stop)
        try:
            await self.database.drop()
        except Exception as exc:
            print(f"could not drop the benchmark database: {exc!r}", file=sys.stderr)


# --- the two ways into Synapse -------------------------------------------------------------


class _Resolver:
    """The bridge's view of the workspace for the formatter: members are their puppets."""

    allow_room_mention = False
    via_server: str | None = None

    def __init__(self, workspace: BenchWorkspace) -> None:
        self.names = {u.id: u.display_name or u.real_name
                      for u in workspace.team.users.values()}

    def user(self, slack_user_id: str) -> tuple[str, str] | None:
        name = self.names.get(slack_user_id)
        return (puppet_of(slack_user_id), name) if name is not None else None

    def channel(self, slack_channel_id: str) -> tuple[str | None, str] | None:
        return None


def bridged_content(text: str, resolver: _Resolver) -> dict[str, Any]:
    """What the bridge posts for a person's Slack text (same formatter, same shape)."""
    from bridge.slack.format import slack_to_matrix
    from bridge.slack.inbound import SlackToMatrix

    wire = escape_client_text(text)
    formatted = slack_to_matrix(wire, rich_text_blocks(wire), resolver)
    content = SlackToMatrix._text_content(formatted, "", "")
    assert content is not None
    return content


async def direct_phase(setup: Setup, messages: Messages, planned: list[Planned],
                       phase: Phase | None) -> None:
    """The planned messages straight into Synapse through the appservice API, one sender per
    room, each sending its room's messages one after the other."""
    assert setup.session is not None and setup.workspace is not None
    resolver = _Resolver(setup.workspace)
    by_room: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for m in planned:
        room = setup.rooms[m.channel]
        # The transaction ID is unique per message: Synapse answers a repeated one with the
        # event it already made.
        path = (f"{setup.synapse_url}/_matrix/client/v3/rooms/{quote(room, safe='')}/send/"
                f"m.room.message/direct-{messages.run}-{m.n}")
        by_room.setdefault(room, []).append(
            (path, puppet_of(m.user), bridged_content(m.text, resolver)))
    headers = {"Authorization": f"Bearer {setup.tokens[0]}"}
    session = setup.session

    async def sender(items: list[tuple[str, str, dict[str, Any]]]) -> None:
        for path, user, content in items:
            params = {"user_id": user, "ts": str(int(time.time() * 1000))}
            for attempt in range(5):
                async with session.put(path, params=params, json=content,
                                       headers=headers) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        break
                    if attempt == 4 or resp.status not in (429, 500, 502, 503):
                        raise BenchError(f"Synapse answered {resp.status} to a send as {user}: "
                                         f"{body[:300]!r}")
                await asyncio.sleep(0.2 * 2 ** attempt)

    clock = CpuClock(setup.bridge.pid, setup.synapse_pid) if setup.bridge else None
    echoes = await setup.handled_in()
    started = time.monotonic()
    await asyncio.gather(*(sender(items) for items in by_room.values()))
    if phase is not None and clock is not None:
        phase.finished = time.monotonic()
        phase.started = started
        phase.cpu = clock.stop()
        phase.messages = len(planned)
    # Synapse sends these events to the bridge too: until it has them all, so that they do
    # not count in the next phase.
    await poll_until(setup.handled_in, echoes + len(planned),
                     time.monotonic() + setup.args.timeout,
                     "the bridge received {done:.0f} of the {target:.0f} direct messages "
                     f"from Synapse within {setup.args.timeout:.0f}s")


async def bridge_phase(setup: Setup, messages: Messages, planned: list[Planned],
                       phase: Phase | None) -> None:
    """The planned messages posted in Slack at once; until the bridge delivered them all."""
    assert setup.bridge is not None and setup.workspace is not None
    team = setup.workspace.team
    base = await setup.delivered()
    echoes = await setup.handled_in()
    resent = resent_envelopes(setup.sim, team)
    clock = CpuClock(setup.bridge.pid, setup.synapse_pid)
    bridge_cpu = proc_cpu_seconds(setup.bridge.pid)
    started = time.monotonic()
    for m in planned:
        await messages.post(m)
    deadline = started + setup.args.timeout

    async def delivered() -> float:
        setup.check_alive()
        return await setup.delivered() - base

    finished = await poll_until(delivered, len(planned), deadline,
                                "the bridge delivered {done:.0f} of {target:.0f} messages to "
                                f"Synapse within {setup.args.timeout:.0f}s")
    if phase is not None:
        phase.finished = finished
        phase.started = started
        phase.cpu = clock.stop()
        phase.messages = len(planned)
        phase.resent = resent_envelopes(setup.sim, team) - resent
        # The puppets' events come back from Synapse; until the bridge has handled them all
        # (whether stored or, needing no relay, only acknowledged), for its CPU per message.
        await poll_until(setup.handled_in, echoes + len(planned), deadline,
                         "the bridge received {done:.0f} of the {target:.0f} puppets' events "
                         f"back from Synapse within {setup.args.timeout:.0f}s")
        phase.bridge_cpu_with_echo = proc_cpu_seconds(setup.bridge.pid) - bridge_cpu


async def check_in_synapse(setup: Setup, messages: Messages,
                           phases: list[tuple[Phase, list[Planned]]]) -> None:
    """Read each room's timeline back: every planned message once, in its channel's room."""
    assert setup.admin is not None
    seen: Counter[int] = Counter()
    where: dict[int, str] = {}
    wanted = {m.n for _, planned in phases for m in planned}
    for room in setup.rooms.values():
        params = {"dir": "b", "limit": "1000"}
        while True:
            page = await setup.admin.request("GET", f"/rooms/{quote(room, safe='')}/messages",
                                             params=params)
            for event in page.get("chunk", []):
                if event.get("type") != "m.room.message":
                    continue
                n = messages.marker(str((event.get("content") or {}).get("body", "")))
                if n in wanted:
                    seen[n] += 1
                    where.setdefault(n, room)
            if not page.get("chunk") or not page.get("end"):
                break
            params = {**params, "from": page["end"]}
    for phase, planned in phases:
        phase.found = sum(1 for m in planned if seen[m.n])
        phase.duplicates = sum(seen[m.n] - 1 for m in planned if seen[m.n] > 1)
        phase.misplaced = sum(1 for m in planned
                              if m.n in where and where[m.n] != setup.rooms[m.channel])


# --- the benchmark -------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    setup = Setup(args, workdir)
    try:
        results.startup_seconds = await setup.start()
        results.database = setup.database.describe()
        results.synapse_version = await synapse_version(setup)
        print(f"linking {args.channels} channels to rooms ...")
        started = time.monotonic()
        await setup.link_rooms()
        results.setup_seconds = time.monotonic() - started
        assert setup.workspace is not None and setup.bridge is not None
        messages = Messages(setup.workspace)

        # Warm-up, not measured: every user once in every channel through the bridge (the
        # puppets are registered, named, given their avatar and joined to every room), then
        # once more straight through the appservice API.
        warm = args.channels * args.users
        print(f"warm-up: {warm} messages through the bridge, {warm} direct ...")
        await bridge_phase(setup, messages, messages.plan(warm), None)
        await setup.wait_idle()
        await direct_phase(setup, messages, messages.plan(warm), None)
        await setup.wait_idle()
        await asyncio.sleep(1.0)

        checked: list[tuple[Phase, list[Planned]]] = []
        for number in range(1, args.rounds + 1):
            setup.pin_synapse()  # threads Synapse started since
            setup.bridge.pin()
            direct, bridge = Phase("direct"), Phase("bridge")
            planned = messages.plan(args.messages)
            print(f"round {number}: {args.messages} messages straight to Synapse ...")
            await direct_phase(setup, messages, planned, direct)
            print(f"  {direct.per_second:.0f} messages/s")
            await asyncio.sleep(1.0)
            planned_bridge = messages.plan(args.messages)
            print(f"round {number}: {args.messages} messages posted in Slack, through the "
                  "bridge ...")
            await bridge_phase(setup, messages, planned_bridge, bridge)
            print(f"  {bridge.per_second:.0f} messages/s")
            await asyncio.sleep(1.0)
            results.rounds.append((direct, bridge))
            checked += [(direct, planned), (bridge, planned_bridge)]
        print("reading the rooms back from Synapse ...")
        await check_in_synapse(setup, messages, checked)
        assert setup.client is not None
        results.failures = BridgeFailures.read(await setup.client.metrics())
        results.log_lines = setup.bridge.log_lines()
        results.log_tail = setup.bridge.log_tail(15) if results.log_lines else ""
    finally:
        await setup.close()
    return results


async def synapse_version(setup: Setup) -> str:
    assert setup.session is not None
    with contextlib.suppress(aiohttp.ClientError, ValueError, KeyError):
        async with setup.session.get(f"{setup.synapse_url}/_synapse/admin/v1/server_version",
                                     headers={"Authorization": f"Bearer {setup.tokens[0]}"}
                                     ) as resp:
            if resp.status == 200:
                return str((await resp.json())["server_version"])
    import importlib.metadata

    return importlib.metadata.version("matrix-synapse")


# --- report --------------------------------------------------------------------------------


def report(args: argparse.Namespace, r: Results) -> bool:
    def cpu(value: int | None) -> str:
        return f"CPU {value}" if value is not None else "unpinned"

    direct, bridge = r.totals()
    share = bridge / direct if direct else math.nan
    complete = all(d.complete and b.complete for d, b in r.rounds)
    cpu_ms = r.bridge_cpu_ms()
    ok = complete and share >= TARGET_SHARE and cpu_ms <= TARGET_CPU_MS
    print()
    print("=" * 78)
    print("Slack -> Matrix through the bridge vs. straight through the appservice API, "
          "one Synapse")
    print(f"bridge on {cpu(args.bridge_cpu)}; Synapse on {cpu(args.synapse_cpu)}; bench and "
          f"Slack simulator on {cpu(args.bench_cpu)}")
    print(f"Synapse {r.synapse_version} (SQLite); bridge database: {r.database}; tree: "
          f"{git_revision()}")
    print(f"{args.channels} channels = rooms, {args.users} Slack users (puppets), "
          f"{args.messages} messages per phase, one in flight per room")
    print("-" * 78)
    print(f"start-up until ready:             {r.startup_seconds:8.2f} s")
    print(f"rooms made and linked in          {r.setup_seconds:8.2f} s")
    for number, (d, b) in enumerate(r.rounds, start=1):
        print(f"round {number}:")
        for phase, what in ((d, "direct (appservice API)"), (b, "through the bridge    ")):
            extra = f", {phase.resent} envelopes re-sent" if phase.name == "bridge" else ""
            print(f"  {what} {phase.per_second:7.0f} messages/s  ({phase.messages} in "
                  f"{phase.seconds:.2f} s; in Synapse: {phase.found} found, "
                  f"{phase.duplicates} duplicates, {phase.misplaced} in a wrong room{extra})")
            print(f"      {phase.cpu_line()}")
            if phase.name == "bridge":
                print(f"      bridge CPU per message, the puppet's event coming back "
                      f"included: {b.cpu_ms_per_message:.2f} ms")
        print(f"  bridge / direct: {100 * b.per_second / d.per_second:.0f}%")
    r.failures.print(r.log_lines)
    if r.log_tail:
        print(f"bridge log (WARNING and above), last lines:\n{r.log_tail}")
    print(f"whole run: {r.wall_seconds:.0f} s")
    print("-" * 78)
    print(f"direct: {direct:.0f} messages/s; through the bridge: {bridge:.0f} messages/s = "
          f"{100 * share:.0f}% (target >= {100 * TARGET_SHARE:.0f}%, every message once) "
          f"{verdict(complete and share >= TARGET_SHARE)}")
    print(f"bridge CPU per Slack message (from /proc, the puppet's event coming back "
          f"included): {cpu_ms:.2f} ms (target <= {TARGET_CPU_MS:g} ms) "
          f"{verdict(cpu_ms <= TARGET_CPU_MS)}")
    print("=" * 78)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Slack -> Matrix messages/s through the bridge vs. straight through the "
                    "appservice API, against one throwaway Synapse.")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages per phase (default 2000)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="direct + bridge phases, repeated (default 1)")
    add_slack_args(parser)
    database_arg(parser)
    parser.add_argument("--ack-timeout", type=float, default=3.0,
                        help="seconds the simulator waits for a Socket Mode ack before it sends "
                             "the envelope again (default 3, as Slack)")
    parser.add_argument("--bridge-cpu", type=int, default=0,
                        help="core the bridge is pinned to (default 0; -1: not pinned)")
    parser.add_argument("--bench-cpu", type=int, default=1,
                        help="core this process is pinned to (default 1; -1: not pinned)")
    parser.add_argument("--synapse-cpu", type=int, default=None,
                        help="core Synapse is pinned to (default: the bench's; -1: not pinned)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="give up when a step has not finished after this long (default "
                             "300)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the numbers to FILE as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (configs, databases, logs)")
    args = parser.parse_args(argv)
    if min(args.messages, args.rounds, args.channels, args.users) < 1:
        parser.error("--messages, --rounds, --channels and --users must be positive")
    if args.synapse_cpu is None:
        args.synapse_cpu = args.bench_cpu
    available = os.sched_getaffinity(0)
    for name in ("bridge_cpu", "bench_cpu", "synapse_cpu"):
        value = getattr(args, name)
        if value is not None and value < 0:
            setattr(args, name, None)
        elif value is not None and value not in available:
            parser.error(f"--{name.replace('_', '-')} {value}: this process may use CPUs "
                         f"{sorted(available)}")
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv), benchmark, report, prefix="bridge-slack-bench-")


if __name__ == "__main__":
    raise SystemExit(main())
