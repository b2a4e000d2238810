"""Fault run: mixed traffic across Matrix, Slack and email while things break (issue 14).

Not a timed test but a script that prints figures. Everything is real and runs on this
machine, each part in its own throwaway copy so that it can be broken without touching
anything else:

- a PostgreSQL cluster of its own (initdb and pg_ctl from /usr/lib/postgresql/*/bin, on a
  free port, in the temp directory): the bridge's database, restarted mid-run;
- a Synapse of its own (testkit/synapse.py, SQLite), restarted mid-run;
- the bridge as its own process (``python -m bridge run``), killed with SIGKILL and started
  again three times;
- in this process: the Slack simulator (testkit/slack_sim; Socket Mode), answering bursts of
  429 (with Retry-After) and 5xx to ``chat.postMessage`` and dropping the bridge's websocket
  once; and an SMTP sink (testkit/smtp_sink.py) as the bridge's mail relay, down for 30 s.

``--rooms`` rooms are each linked to a Slack channel and to an email address with one
subscriber. ``--messages`` messages are written, a third each in Slack (people in the
channel), in Matrix (a user in the room) and by mail (the subscriber, over SMTP to the
bridge), round-robin over the rooms, at ``--rate`` messages/s. Each writer keeps its room's
order (the next message only once the previous one was accepted) and retries as the real
sender would: Synapse's client API until 200 (same transaction ID, so Synapse dedupes),
SMTP until 250 (same Message-ID, as a mail server retries). Each message carries a marker
``[run-n]``; every message should reach the two other sides of its room once, in order.

The faults are spread over the traffic (the n-th of F once n/(F+1) of the messages were
sent); each is recorded with when it ended (the service back). After the last message was
sent the script waits until everything arrived or ``--settle`` seconds passed, reads every
room back from Synapse, and prints per direction: sent, arrived, lost, doubled, out of
order, and the time from the end of the last fault to the last arrival.

Target: 0 lost, 0 doubled, 0 out of order. Exit code 0 met, 3 missed, 1 the run failed.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiosmtplib
import yaml
from common import (
    BenchError,
    BridgeClient,
    BridgeProcess,
    free_port,
    git_revision,
    metric_samples,
    start_synapse,
    verdict,
    write_config,
)
from email_common import MAIL_DOMAIN, make_mail, run
from slack_common import (
    ADMIN,
    BOT,
    MARKER,
    PREFIX,
    BenchWorkspace,
    PostCounter,
    add_workspace,
    slack_config,
)

from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from testkit.synapse import SynapseServer

SOURCES = ("slack", "matrix", "mail")
DIRECTIONS = {  # source -> the directions its messages take
    "slack": ("Slack -> Matrix", "Slack -> mail"),
    "matrix": ("Matrix -> Slack", "Matrix -> mail"),
    "mail": ("mail -> Matrix", "mail -> Slack"),
}
ORDERED_DIRECTIONS = [d for s in SOURCES for d in DIRECTIONS[s]]
SUBSCRIBER_DOMAIN = "buerger.example"
# Settling stops early once nothing is queued (bridge, Synapse) and nothing arrived for this
# many seconds.
STALLED_AFTER = 120.0


def subscriber(room: int) -> str:
    return f"person{room}@{SUBSCRIBER_DOMAIN}"


# --- a PostgreSQL cluster of its own ----------------------------------------------------------


def _pg_bin(name: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for directory in reversed(versions):
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found (in /usr/lib/postgresql/*/bin or PATH); the fault "
                         "run needs a PostgreSQL server of its own (Debian: postgresql)")
    return found


class PgCluster:
    """A throwaway PostgreSQL cluster: initdb in ``directory``, trust authentication, listening
    on 127.0.0.1:``port`` (and a socket in the directory, not in /var/run). As root, the
    server runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.log = directory / "postgresql.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        result = subprocess.run([*self._as_user, *command], capture_output=True, text=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stderr or result.stdout}")

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            # The postgres user must reach its directory inside the (root's) temp dir.
            self.directory.parent.chmod(0o711)
            shutil.chown(self.directory, "postgres", "postgres")
            self.directory.chmod(0o700)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-instructions", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=100 -c fsync=off")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  "stop")

    def crash_restart(self) -> None:
        """Stop as if the server had died (immediate: no checkpoint, recovery at start)."""
        self.stop("immediate")
        self.start()


# --- the plan: who writes what, where --------------------------------------------------------


@dataclass(slots=True)
class Message:
    n: int
    source: str  # slack | matrix | mail
    room: int
    scheduled: float = 0.0  # seconds after the start of traffic
    sent_at: float | None = None  # wall clock, when it was accepted by its first hop
    refused: str | None = None  # a permanent refusal (never retried; counted apart)


@dataclass(slots=True)
class Arrival:
    n: int
    where: int  # room index where it arrived (-1: somewhere unknown)
    at: float  # wall clock; for Matrix, when this script's /sync saw it (or the server's ts)
    message_id: str = ""  # mail: its Message-ID header


@dataclass
class FaultRecord:
    name: str
    started: float
    ended: float
    detail: str = ""


@dataclass
class Figures:
    sent: int = 0
    arrived: int = 0
    lost: int = 0
    doubled: int = 0
    out_of_order: int = 0
    misplaced: int = 0
    # Mail: copies with the Message-ID of the first (a mail client shows them as one).
    same_message_id: int = 0
    last_arrival: float | None = None
    examples: dict[str, list[int]] = field(default_factory=dict)  # what -> message numbers

    def example(self, what: str, n: int) -> None:
        found = self.examples.setdefault(what, [])
        if len(found) < 10:
            found.append(n)


@dataclass
class Results:
    revision: str = ""
    messages: int = 0
    rooms: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    figures: dict[str, Figures] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    send_seconds: float = 0.0
    settle_seconds: float = 0.0
    complete: bool = False
    failures: list[tuple[str, float]] = field(default_factory=list)
    restarts: int = 0
    load_before: str = ""
    load_after: str = ""
    wall_seconds: float = 0.0

    @property
    def last_fault_end(self) -> float | None:
        return max((f.ended for f in self.faults), default=None)

    def met(self) -> bool:
        return self.complete and all(
            f.lost == 0 and f.doubled == 0 and f.out_of_order == 0 and f.misplaced == 0
            for f in self.figures.values())

    def summary(self, met: bool | None = None) -> dict[str, Any]:
        # (met: what the report decided; the runner passes it, as to every benchmark)
        last = self.last_fault_end
        return {
            "revision": self.revision, "messages": self.messages, "rooms": self.rooms,
            "targets_met": self.met() if met is None else met, "load_before": self.load_before,
            "load_after": self.load_after,
            "faults": [{"name": f.name, "started": f.started, "ended": f.ended,
                        "detail": f.detail} for f in self.faults],
            "directions": {
                name: {"sent": f.sent, "arrived": f.arrived, "lost": f.lost,
                       "doubled": f.doubled, "out_of_order": f.out_of_order,
                       "misplaced": f.misplaced, "same_message_id": f.same_message_id,
                       "examples": f.examples,
                       "last_fault_to_last_arrival_s": (
                           round(f.last_arrival - last, 1)
                           if f.last_arrival is not None and last is not None else None)}
                for name, f in self.figures.items()},
            "refused": self.refused,
        }


# --- the run ---------------------------------------------------------------------------------


class KillableBridge(BridgeProcess):
    """The bridge process; its log is appended to across restarts."""

    def start(self) -> None:
        command = [sys.executable, "-m", "bridge", "run", "-c", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent
                                                              .parent), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


class FaultRun:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.run = uuid.uuid4().hex[:8]
        self.synapse_port, self.as_port = free_port(), free_port()
        self.smtp_port = free_port()
        self.tokens = (f"as_{uuid.uuid4().hex}", f"hs_{uuid.uuid4().hex}")
        self.pg = PgCluster(workdir / "pg")
        self.sim = SlackSimulator(host="127.0.0.1", port=0)
        self.posts = PostCounter(self.sim)
        self.sim.webapi = self.posts
        self.sink = SmtpSink()
        self.synapse: SynapseServer | None = None
        self.bridge: KillableBridge | None = None
        self.session: aiohttp.ClientSession | None = None
        self.client: BridgeClient | None = None
        self.admin: MatrixTestClient | None = None
        self.workspace: BenchWorkspace | None = None
        self.room_ids: list[str] = []
        self.room_index: dict[str, int] = {}
        self.messages: list[Message] = []
        self.by_n: dict[int, Message] = {}
        self.arrivals: dict[str, list[Arrival]] = defaultdict(list)
        self.matrix_seen: dict[str, float] = {}  # event ID -> when /sync saw it
        self.faults: list[FaultRecord] = []
        self.current_fault = ""
        self.restarts = 0
        self.sent = 0
        self._stop_sync = asyncio.Event()
        self._sent_more = asyncio.Event()

    # --- set-up ---

    async def start(self) -> None:
        print(f"starting PostgreSQL (own cluster in {self.pg.directory}) ...", flush=True)
        await asyncio.to_thread(self.pg.init)
        await self.sim.start()
        self.workspace = add_workspace(self.sim, self.args.rooms, self.args.users)
        await self.sink.start()
        config_path = self.workdir / "config.yaml"
        data = write_config(config_path, self.synapse_port, self.as_port, self.pg.url,
                            self.tokens)
        data["slack"] = slack_config(self.sim, rate_limits=False)
        data["email"] = {
            "enabled": True, "domain": MAIL_DOMAIN, "sender_auth": "none",
            "token_secret": f"faults-{uuid.uuid4().hex}",
            "smtp_in": {"hostname": "127.0.0.1", "port": self.smtp_port},
            "smtp_out": {"host": "127.0.0.1", "port": self.sink.port},
        }
        from bridge.config import parse_config
        from bridge.registration import build_registration

        config = parse_config(json.loads(json.dumps(data)), environ={})
        config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        config_path.chmod(0o600)
        registration = self.workdir / "registration.yaml"
        registration.write_text(yaml.safe_dump(build_registration(config)), encoding="utf-8")
        self.synapse = await start_synapse(self.workdir / "synapse", self.synapse_port,
                                           registration)
        self.bridge = KillableBridge(config_path, self.workdir, None, None)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.client = BridgeClient(self.session, f"http://127.0.0.1:{self.as_port}")
        print("starting the bridge ...", flush=True)
        self.bridge.start()
        await self.wait_ready()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Until /_bridge/health is 200, Slack is connected and SMTP listens."""
        assert self.client is not None and self.bridge is not None
        deadline = time.monotonic() + (timeout or self.args.timeout)
        last = ""
        while time.monotonic() < deadline:
            if not self.bridge.alive():
                raise BenchError("the bridge exited:\n" + self.bridge.log_tail())
            with contextlib.suppress(aiohttp.ClientError, ValueError, TimeoutError):
                status, health = await self.client.health()
                slack = (health.get("networks") or {}).get("slack") or {}
                last = json.dumps(health)[:300]
                if status == 200 and slack.get("ok") and await self._smtp_listens():
                    return
            await asyncio.sleep(0.1)
        raise BenchError(f"the bridge was not ready within {timeout or self.args.timeout:.0f}s "
                         f"({last}):\n{self.bridge.log_tail()}")

    async def _smtp_listens(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.smtp_port)
        except OSError:
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def make_rooms(self) -> None:
        """Per room, as an admin does it: a room with the bot, linked to a channel and to an
        address, the room's mail writer subscribed."""
        assert self.synapse is not None and self.workspace is not None
        user_id, token = await self.synapse.register_user(ADMIN[1:].split(":")[0])
        self.admin = MatrixTestClient(self.synapse.url, user_id, token)
        await self.admin.initial_sync()
        for i, channel in enumerate(self.workspace.channels):
            room = await open_room(BOT, self.admin, bot_power=100, name=f"Amt {i:03d}")
            await command(BOT, self.admin, room, f"{PREFIX} link slack {channel}",
                          expect="Linked")
            await command(BOT, self.admin, room, f"{PREFIX} link email amt{i}-{self.run}",
                          expect="Linked")
            await command(BOT, self.admin, room, f"{PREFIX} email subscribe {subscriber(i)}",
                          expect="Subscribed")
            self.room_ids.append(room)
            self.room_index[room] = i
            print(f"  room {i + 1}/{self.args.rooms} linked", flush=True)

    # --- the traffic ---

    def plan(self) -> None:
        for i in range(self.args.messages):
            message = Message(n=i + 1, source=SOURCES[i % 3], room=(i // 3) % self.args.rooms,
                              scheduled=i / self.args.rate)
            self.messages.append(message)
            self.by_n[message.n] = message

    def tag(self, n: int) -> str:
        return f"[{self.run}-{n}]"

    def text(self, message: Message) -> str:
        return (f"Nachricht {message.n} aus {message.source} zur Sitzung am Dienstag, bitte "
                f"Unterlagen mitbringen {self.tag(message.n)}")

    async def send_slack(self, m: Message) -> None:
        assert self.workspace is not None
        ws = self.workspace
        user = ws.users[m.n % len(ws.users)]
        await self.sim.post_message(ws.team, ws.channels[m.room], user, text=self.text(m))

    async def send_matrix(self, m: Message) -> None:
        assert self.admin is not None
        room = self.room_ids[m.room]
        path = (f"/rooms/{quote(room, safe='')}/send/m.room.message/faults-{self.run}-{m.n}")
        body = {"msgtype": "m.text", "body": self.text(m)}
        while True:  # the same transaction ID each time: Synapse keeps one event
            try:
                await self.admin.request("PUT", path, json_body=body, http_timeout=20)
                return
            except Exception:  # down, restarting, overloaded: a client retries
                await asyncio.sleep(0.5)

    async def send_mail(self, m: Message) -> None:
        sender = subscriber(m.room)
        to = f"amt{m.room}-{self.run}@{MAIL_DOMAIN}"
        raw = make_mail(sender=sender, sender_name=f"Person {m.room}", to=to,
                        subject=f"Sitzung {m.room}", body=self.text(m) + "\n",
                        message_id=f"<faults-{self.run}-{m.n}@{SUBSCRIBER_DOMAIN}>")
        while True:  # as a mail server: retry until 250, the same Message-ID
            try:
                await aiosmtplib.send(raw, sender=sender, recipients=[to],
                                      hostname="127.0.0.1", port=self.smtp_port, timeout=30)
                return
            except aiosmtplib.SMTPResponseException as exc:
                if 500 <= exc.code < 600:
                    m.refused = f"{exc.code} {exc.message}"
                    return
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.5)

    async def writer(self, messages: list[Message], send: Callable[[Message], Awaitable[None]],
                     started: float) -> None:
        """One room's messages from one side, in order, each after the previous was
        accepted, not before its scheduled time."""
        for m in messages:
            delay = started + m.scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(m)
            if m.refused is None:
                m.sent_at = time.time()
                self.sent += 1
                self._sent_more.set()

    async def traffic(self) -> float:
        lanes: dict[tuple[str, int], list[Message]] = defaultdict(list)
        for m in self.messages:
            lanes[(m.source, m.room)].append(m)
        senders = {"slack": self.send_slack, "matrix": self.send_matrix, "mail": self.send_mail}
        started = time.monotonic()
        await asyncio.gather(*(self.writer(ms, senders[source], started)
                               for (source, _), ms in lanes.items()))
        return time.monotonic() - started

    # --- the faults ---

    async def faults_task(self) -> None:
        faults: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("Slack 429 burst", self.fault_429),
            ("bridge SIGKILL 1", self.fault_kill),
            ("Synapse restart", self.fault_synapse),
            ("Slack 5xx burst", self.fault_5xx),
            ("bridge SIGKILL 2", self.fault_kill),
            ("PostgreSQL restart", self.fault_postgres),
            ("mail relay down 30 s", self.fault_relay),
            ("Slack websocket dropped", self.fault_socket),
            ("bridge SIGKILL 3", self.fault_kill),
        ]
        total = len(self.messages)
        for i, (name, action) in enumerate(faults, start=1):
            threshold = total * i // (len(faults) + 1)
            while self.sent < threshold:
                self._sent_more.clear()
                await self._sent_more.wait()
            self.current_fault = name
            started = time.time()
            print(f"  fault: {name} (after {self.sent} messages sent) ...", flush=True)
            detail = await action()
            self.faults.append(FaultRecord(name, started, time.time(), detail))
            print(f"  fault: {name} over after {time.time() - started:.1f} s"
                  f"{f' ({detail})' if detail else ''}", flush=True)
            self.current_fault = ""

    async def fault_429(self) -> str:
        count = self.args.burst
        self.sim.rate_limit("chat.postMessage", retry_after=2, times=count)
        await self._wait_fault_used("chat.postMessage")
        return f"{count} x 429 Retry-After: 2 to chat.postMessage"

    async def fault_5xx(self) -> str:
        count = self.args.burst
        half = count // 2
        self.sim.fail("chat.postMessage", status=500, times=half)
        self.sim.fail("chat.postMessage", status=503, times=count - half,
                      error="service_unavailable")
        await self._wait_fault_used("chat.postMessage")
        return f"{half} x 500, {count - half} x 503 to chat.postMessage"

    async def _wait_fault_used(self, method: str) -> None:
        """Until the bridge has had every injected answer (or a minute passed: traffic may
        have no Matrix -> Slack message left)."""
        deadline = time.monotonic() + 60
        while self.sim.faults.get(method):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        self.sim.faults.pop(method, None)

    async def fault_kill(self) -> str:
        assert self.bridge is not None
        self.bridge.kill()
        self.restarts += 1
        self.bridge.start()
        await self.wait_ready(120)
        return "restarted, ready again"

    async def fault_synapse(self) -> str:
        assert self.synapse is not None
        await asyncio.to_thread(self.synapse.restart)
        return "SIGTERM, started again"

    async def fault_postgres(self) -> str:
        await asyncio.to_thread(self.pg.crash_restart)
        return "pg_ctl stop -m immediate, start"

    async def fault_relay(self) -> str:
        await self.sink.stop(drop_connections=True)
        await asyncio.sleep(self.args.relay_down)
        await self.sink.start()
        return f"refused connections for {self.args.relay_down:.0f} s"

    async def fault_socket(self) -> str:
        assert self.workspace is not None
        await self.sim.drop_sockets(self.workspace.team)
        return "closed without a disconnect message"

    # --- arrivals ---

    def watch(self) -> None:
        """Note every Slack post and every mail the bridge makes, as they come."""
        assert self.workspace is not None
        channel_room = {c: i for i, c in enumerate(self.workspace.channels)}

        def on_post(at_monotonic: float, text: str, channel: str) -> None:
            n = self.marker(text)
            if n is None:
                return
            source = self.by_n[n].source
            direction = DIRECTIONS[source][0 if source == "matrix" else 1]
            at = time.time() - (time.monotonic() - at_monotonic)
            self.arrivals[direction].append(Arrival(n, channel_room.get(channel, -1), at))

        self.posts.listeners.append(on_post)

    def marker(self, text: str) -> int | None:
        match = MARKER.search(text)
        if match is None or match["run"] != self.run:
            return None
        n = int(match["n"])
        return n if n in self.by_n else None

    def mail_arrivals(self) -> None:
        """Every mail the sink took, in the order it took them."""
        rooms = {subscriber(i): i for i in range(self.args.rooms)}
        for received in list(self.sink.received):
            mail = message_from_bytes(received.raw, policy=policy.default)
            text = "\n".join(str(part.get_content()) for part in mail.walk()
                             if part.get_content_maintype() == "text")
            n = self.marker(text)
            if n is None:
                continue
            source = self.by_n[n].source
            if source == "mail":
                continue  # (a mail writer's own message is not sent back to them)
            direction = DIRECTIONS[source][1]
            for rcpt in received.rcpt_tos:
                self.arrivals[direction].append(Arrival(n, rooms.get(rcpt.lower(), -1),
                                                        received.arrived,
                                                        str(mail["Message-ID"] or "")))

    async def sync_loop(self) -> None:
        """The admin's /sync, to note when each message reached the room (through Synapse
        restarts: errors are waited out)."""
        assert self.admin is not None
        since: str | None = None
        flt = json.dumps({"room": {"timeline": {"limit": 500}, "state": {"lazy_load_members":
                                                                         True}},
                          "presence": {"types": []}, "account_data": {"types": []}})
        while not self._stop_sync.is_set():
            params = {"timeout": "5000", "filter": flt}
            if since:
                params["since"] = since
            try:
                body = await self.admin.request("GET", "/sync", params=params, http_timeout=30)
            except Exception:
                await asyncio.sleep(1)
                continue
            now = time.time()
            since = body.get("next_batch")
            for room in (body.get("rooms") or {}).get("join", {}).values():
                for event in (room.get("timeline") or {}).get("events", []):
                    self.matrix_seen.setdefault(event.get("event_id", ""), now)

    async def matrix_arrivals(self) -> None:
        """Every room read back from Synapse (/messages), oldest first."""
        assert self.admin is not None
        for index, room in enumerate(self.room_ids):
            events: list[dict[str, Any]] = []
            params = {"dir": "b", "limit": "1000"}
            while True:
                page = await self.admin.request(
                    "GET", f"/rooms/{quote(room, safe='')}/messages", params=params)
                events += page.get("chunk", [])
                if not page.get("chunk") or not page.get("end"):
                    break
                params = {**params, "from": page["end"]}
            for event in reversed(events):
                if event.get("type") != "m.room.message" or event.get("sender") == ADMIN:
                    continue
                n = self.marker(str((event.get("content") or {}).get("body", "")))
                if n is None:
                    continue
                source = self.by_n[n].source
                if source == "matrix":
                    continue
                at = self.matrix_seen.get(event["event_id"],
                                          event.get("origin_server_ts", 0) / 1000)
                self.arrivals[DIRECTIONS[source][0]].append(Arrival(n, index, at))

    def expected(self) -> dict[str, int]:
        counts = dict.fromkeys(ORDERED_DIRECTIONS, 0)
        for m in self.messages:
            if m.sent_at is not None:
                for direction in DIRECTIONS[m.source]:
                    counts[direction] += 1
        return counts

    def live_counts(self) -> dict[str, int]:
        """Distinct messages arrived so far per direction (Slack posts now, mail now,
        Matrix as /sync saw them is not matched by marker here, so it is left out)."""
        counts = {d: len({a.n for a in self.arrivals[d]}) for d in ORDERED_DIRECTIONS}
        mail: dict[str, set[int]] = {d: set() for d in ORDERED_DIRECTIONS}
        for received in list(self.sink.received):
            n = self.marker(received.raw.decode("utf-8", "replace").replace("=\r\n", ""))
            if n is not None and self.by_n[n].source != "mail":
                mail[DIRECTIONS[self.by_n[n].source][1]].add(n)
        for d, ns in mail.items():
            if ns:
                counts[d] = len(ns)
        return counts

    async def queues(self) -> str:
        assert self.client is not None
        with contextlib.suppress(aiohttp.ClientError, ValueError, TimeoutError):
            _, health = await self.client.health()
            return json.dumps(health.get("queues"))
        return "(bridge not answering)"

    async def settle(self) -> bool:
        """Until every Slack post and mail arrived and the bridge's queues are empty, or
        ``--settle`` seconds passed; True if everything arrived."""
        deadline = time.monotonic() + self.args.settle
        expected = self.expected()
        outward = [d for d in ORDERED_DIRECTIONS if "-> Slack" in d or "-> mail" in d]
        next_print = 0.0
        last_counts: dict[str, int] = {}
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            counts = self.live_counts()
            queues = await self.queues()
            done = all(counts[d] >= expected[d] for d in outward)
            empty = '"inbox": 0' in queues and '"outbox": 0' in queues
            if time.monotonic() >= next_print:
                print("  waiting: " + ", ".join(f"{d} {counts[d]}/{expected[d]}"
                                                for d in outward) + f"; queues {queues}",
                      flush=True)
                next_print = time.monotonic() + 10
            if done and empty:
                return True
            if counts != last_counts:
                last_counts, still_since = counts, time.monotonic()
            elif empty and await self._synapse_idle() and \
                    time.monotonic() - still_since > STALLED_AFTER:
                # Nothing queued anywhere and nothing arrived for a while: what is
                # missing will not come.
                print(f"  nothing queued and nothing new for {STALLED_AFTER:.0f} s: "
                      "stopped waiting", flush=True)
                return False
            await asyncio.sleep(1)
        return False

    async def _synapse_idle(self) -> bool:
        """Synapse holds no transaction for the bridge (it re-sends what it queued while
        it counted the bridge as down one at a time, which can take many minutes)."""
        assert self.synapse is not None
        try:
            return await asyncio.to_thread(self.synapse.unsent_appservice_transactions,
                                           "bench-bridge") == 0
        except Exception:
            return False

    async def progress(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(10)
            fault = f"; fault: {self.current_fault}" if self.current_fault else ""
            print(f"  {time.monotonic() - started:5.0f} s: sent {self.sent}/{len(self.messages)}"
                  f"{fault}", flush=True)

    # --- figures ---

    def figures(self) -> dict[str, Figures]:
        out: dict[str, Figures] = {}
        for direction in ORDERED_DIRECTIONS:
            sent = {m.n: m for m in self.messages
                    if m.sent_at is not None and direction in DIRECTIONS[m.source]}
            f = Figures(sent=len(sent))
            seen: dict[int, int] = defaultdict(int)
            first_id: dict[int, str] = {}
            latest: dict[int, int] = {}  # room -> highest n arrived there so far
            for a in self.arrivals[direction]:  # in the order they arrived
                if a.n not in sent:
                    continue
                if a.where != sent[a.n].room:
                    f.misplaced += 1
                    f.example("wrong room", a.n)
                    continue
                seen[a.n] += 1
                if seen[a.n] > 1:
                    f.doubled += 1
                    f.example("doubled", a.n)
                    if a.message_id and a.message_id == first_id.get(a.n):
                        f.same_message_id += 1
                    continue
                first_id[a.n] = a.message_id
                if a.n < latest.get(a.where, 0):
                    f.out_of_order += 1
                    f.example("out of order", a.n)
                latest[a.where] = max(latest.get(a.where, 0), a.n)
                f.last_arrival = max(f.last_arrival or 0.0, a.at)
            f.arrived = len(seen)
            f.lost = f.sent - f.arrived
            for n in sorted(set(sent) - set(seen))[:10]:
                f.example("lost", n)
            out[direction] = f
        return out

    async def close(self) -> None:
        self._stop_sync.set()
        if self.admin is not None:
            await self.admin.close()
        if self.bridge is not None:
            await asyncio.to_thread(self.bridge.stop)
        if self.session is not None:
            await self.session.close()
        await self.sim.stop()
        await self.sink.stop(drop_connections=True)
        if self.synapse is not None:
            await asyncio.to_thread(self.synapse.stop)
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            await asyncio.to_thread(self.pg.stop)


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as handle:
        return " ".join(handle.read().split()[:3])


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(revision=git_revision(), messages=args.messages, rooms=args.rooms,
                      load_before=load_average())
    run = FaultRun(args, workdir)
    sync_task: asyncio.Task[None] | None = None
    progress_task: asyncio.Task[None] | None = None
    try:
        await run.start()
        print(f"linking {args.rooms} rooms to Slack channels and mail addresses ...",
              flush=True)
        await run.make_rooms()
        run.plan()
        run.watch()
        sync_task = asyncio.create_task(run.sync_loop())
        progress_task = asyncio.create_task(run.progress())
        print(f"traffic: {args.messages} messages at {args.rate:g}/s over {args.rooms} rooms, "
              "9 faults on the way", flush=True)
        faults = asyncio.create_task(run.faults_task())
        results.send_seconds = await run.traffic()
        print(f"all {run.sent} messages sent after {results.send_seconds:.0f} s; "
              "faults still to come run now" if not faults.done() else
              f"all {run.sent} messages sent after {results.send_seconds:.0f} s", flush=True)
        await faults
        settle_started = time.monotonic()
        print("waiting for everything to arrive ...", flush=True)
        results.complete = await run.settle()
        results.settle_seconds = time.monotonic() - settle_started
        await asyncio.sleep(2)  # the admin's /sync catches up with the last events
        run.mail_arrivals()
        await run.matrix_arrivals()
        results.figures = run.figures()
        results.faults = run.faults
        results.refused = [f"{m.n} ({m.source}, room {m.room}): {m.refused}"
                           for m in run.messages if m.refused]
        results.restarts = run.restarts
        assert run.client is not None
        with contextlib.suppress(aiohttp.ClientError):
            results.failures = metric_samples(await run.client.metrics(),
                                              "bridge_failures_total")
        results.load_after = load_average()
    finally:
        for task in (sync_task, progress_task):
            if task is not None:
                task.cancel()
        await run.close()
    return results


def report(args: argparse.Namespace, r: Results) -> bool:
    last = r.last_fault_end
    print()
    print("=" * 92)
    print(f"Fault run: {r.messages} messages over {r.rooms} rooms (Slack, Matrix, mail), "
          f"PostgreSQL; tree {r.revision}")
    print(f"machine load (1/5/15 min) before {r.load_before}, after {r.load_after}; sending took "
          f"{r.send_seconds:.0f} s, settling {r.settle_seconds:.0f} s")
    print("faults:")
    first = r.faults[0].started if r.faults else 0.0
    for f in r.faults:
        print(f"  +{f.started - first:6.1f} s  {f.name:26} {f.ended - f.started:5.1f} s  "
              f"{f.detail}")
    print("-" * 92)
    print(f"{'direction':16} {'sent':>6} {'arrived':>8} {'lost':>6} {'doubled':>8} "
          f"{'out of order':>13} {'wrong room':>10}  last fault -> last arrival")
    for name, f in r.figures.items():
        after = (f"{f.last_arrival - last:7.1f} s"
                 if f.last_arrival is not None and last is not None else "    n/a")
        print(f"{name:16} {f.sent:6} {f.arrived:8} {f.lost:6} {f.doubled:8} "
              f"{f.out_of_order:13} {f.misplaced:10}  {after}")
    for name, f in r.figures.items():
        if f.same_message_id:
            print(f"{name}: {f.same_message_id} of the {f.doubled} doubled mails carried the "
                  "first copy's Message-ID (a mail client shows them once)")
        for what, numbers in f.examples.items():
            print(f"{name}: {what}, e.g. messages {', '.join(map(str, numbers))}")
    if r.refused:
        print(f"refused by the bridge with 5xx (not sent, not counted): {len(r.refused)}")
        for line in r.refused[:10]:
            print(f"  {line}")
    if not r.complete:
        print(f"not everything arrived within --settle {args.settle:.0f} s")
    if r.failures:
        print("bridge_failures_total (of the last bridge process):")
        for labels, count in r.failures:
            print(f"  {count:.0f} x {labels}")
    ok = r.met()
    print("-" * 92)
    print(f"target: 0 lost, 0 doubled, 0 out of order in every direction: {verdict(ok)}")
    print("=" * 92)
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Mixed Matrix/Slack/mail traffic while the bridge is killed, Synapse and "
                    "PostgreSQL restarted, Slack answers 429/5xx and drops the websocket, "
                    "and the mail relay is down; prints lost/doubled/out of order per "
                    "direction.")
    parser.add_argument("--messages", type=int, default=10000,
                        help="messages in all, a third from each side (default 10000)")
    parser.add_argument("--rooms", type=int, default=10,
                        help="rooms, each linked to a channel and an address (default 10)")
    parser.add_argument("--users", type=int, default=4, help="Slack people (default 4)")
    parser.add_argument("--rate", type=float, default=15.0,
                        help="messages offered per second, all sides together (default 15)")
    parser.add_argument("--burst", type=int, default=20,
                        help="429 answers in the 429 burst, 5xx answers in the 5xx burst "
                             "(default 20)")
    parser.add_argument("--relay-down", type=float, default=30.0,
                        help="seconds the mail relay is down (default 30)")
    parser.add_argument("--settle", type=float, default=1800.0,
                        help="after the last message was sent, wait at most this long for "
                             "everything to arrive (default 1800: on a loaded 2-core machine "
                             "the bridge and Synapse work off the backlog for many minutes)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="give up when a set-up step takes longer (default 120)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the figures to FILE as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (configs, logs of the bridge, Synapse "
                             "and PostgreSQL)")
    args = parser.parse_args(argv)
    if min(args.messages, args.rooms, args.users) < 1 or args.rate <= 0:
        parser.error("--messages, --rooms, --users and --rate must be positive")
    if args.messages < 3 * args.rooms:
        parser.error("--messages must be at least 3 x --rooms (a message from each side in "
                     "each room)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 the target was met, 3 missed, 1 the run failed."""
    return run(parse_args(argv), benchmark, report, prefix="bridge-faults-")


if __name__ == "__main__":
    raise SystemExit(main())
