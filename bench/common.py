"""What the benchmarks share: the bridge as a process, its database, its /metrics, the load
generator that speaks to it as a homeserver does, and small helpers (percentiles, /proc).

bench/transactions.py, the email benchmarks (email_common.py) and the Slack benchmarks
(slack_common.py) build on it; it is a module to import, not a benchmark to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from testkit.stub_homeserver import SentEvent, StubHomeserver
from testkit.synapse import SynapseServer, SynapseStartError

DOMAIN = "bench"
BOT = f"@bridgebot:{DOMAIN}"
ADMIN = f"@admin:{DOMAIN}"
USER = f"@user:{DOMAIN}"
PREFIX = "!bridge"

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- small helpers ---------------------------------------------------------------------


class BenchError(Exception):
    """The benchmark could not run to the end; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def proc_status_kb(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM``-style line of /proc/<pid>/status, in kB (0 if absent)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    # After the ")" closing the command name, field 3 of stat(5) is fields[0].
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine have used since boot (all cores), in seconds."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user and nice
    return (sum(fields[:8]) - idle) / CLK_TCK


_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(text: str, name: str) -> list[tuple[str, float]]:
    """Each non-zero sample of a metric as (its labels as written, value)."""
    samples = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is not None and match["name"] == name and float(match["value"]):
            samples.append((match["labels"] or "", float(match["value"])))
    return samples


@dataclass
class BridgeFailures:
    """``bridge_failures_total`` by kind, (labels, count): a delivery retried once reads
    differently from a lost event."""

    kinds: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def read(cls, metrics_text: str) -> BridgeFailures:
        return cls(metric_samples(metrics_text, "bridge_failures_total"))

    @property
    def total(self) -> float:
        return sum(count for _, count in self.kinds)

    def print(self, log_lines: int) -> None:
        print(f"bridge failures (bridge_failures_total): {self.total:.0f}; log lines at "
              f"WARNING or above: {log_lines}")
        for labels, count in self.kinds:
            print(f"  {count:.0f} x {labels}")


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None or match["name"] != name:
            continue
        have = dict(_LABEL.findall(match["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(match["value"])
    return None


def histogram_mean(before: str, after: str, name: str, **labels: str) -> float:
    """Mean of a Prometheus histogram's observations between two scrapes (NaN if none)."""
    def delta(suffix: str) -> float:
        return ((metric_value(after, name + suffix, **labels) or 0.0)
                - (metric_value(before, name + suffix, **labels) or 0.0))

    count = delta("_count")
    return delta("_sum") / count if count > 0 else math.nan


# --- the bridge process ----------------------------------------------------------------


class BridgeProcess:
    """``python -m bridge run -c <config>`` in its own process, pinned to one core."""

    def __init__(self, config_path: Path, workdir: Path, cpu: int | None,
                 profile_path: Path | None) -> None:
        self.config_path = config_path
        self.workdir = workdir
        self.cpu = cpu
        self.profile_path = profile_path
        self.log_path = workdir / "bridge.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        command = [sys.executable]
        if self.profile_path is not None:
            command += ["-m", "cProfile", "-o", str(self.profile_path)]
        command += ["-m", "bridge", "run", "-c", str(self.config_path)]
        # The generated config is the whole truth: no BRIDGE_* override from this shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        self.pin()

    def pin(self) -> None:
        """Pin every thread of the bridge (the event loop and aiosqlite's) to ``cpu``.

        Done right after the spawn (the interpreter has no other thread yet, and threads
        inherit the mask) and again after start-up, to be sure.
        """
        if self.cpu is None or self.proc is None:
            return
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), {self.cpu})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def hwm_mb(self) -> float:
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self) -> int:
        try:
            return len(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines())
        except OSError:
            return 0

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (clean shutdown, which also writes the profile), then SIGKILL."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# --- the database ----------------------------------------------------------------------


POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DATABASE_HELP = ("default: a temp SQLite file. `postgres` for the local PostgreSQL "
                 f"({POSTGRES_URL}), or a postgresql+asyncpg://user@host:port/db URL naming "
                 "the server and an admin database: a fresh database is created there and "
                 "dropped")


class BenchDatabase:
    """The bridge's database: a temp SQLite file, or a fresh PostgreSQL database.

    For PostgreSQL, ``--database`` names a server and a database to connect to for
    administration (default ``postgres``); the bench creates ``bench_<random>`` there and
    drops it at the end. ``--database postgres`` is short for the local server.
    """

    def __init__(self, url: str | None, workdir: Path) -> None:
        self.given = POSTGRES_URL if url in ("postgres", "postgresql") else url
        self.workdir = workdir
        self.url = ""
        self.kind = "sqlite"
        self._pg_admin_dsn: str | None = None
        self._pg_name: str | None = None

    async def create(self) -> str:
        if not self.given:
            self.url = f"sqlite+aiosqlite:///{self.workdir / 'bridge.db'}"
            return self.url
        if self.given.startswith("sqlite"):
            self.url = self.given
            return self.url
        if not self.given.startswith("postgresql"):
            raise BenchError("--database must be a sqlite+aiosqlite:// or postgresql+asyncpg:// "
                             "URL")
        import asyncpg
        from sqlalchemy.engine import make_url

        self.kind = "postgresql"
        given = make_url(self.given)
        admin = given.set(drivername="postgresql", database=given.database or "postgres")
        self._pg_admin_dsn = admin.render_as_string(hide_password=False)
        name = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            conn = await asyncpg.connect(self._pg_admin_dsn, timeout=10)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            safe = admin.render_as_string(hide_password=True)
            raise BenchError(f"cannot create a database on {safe}: {exc}") from None
        self._pg_name = name
        self.url = given.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False)
        return self.url

    async def drop(self) -> None:
        if self._pg_name is None or self._pg_admin_dsn is None:
            return
        import asyncpg

        conn = await asyncpg.connect(self._pg_admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
        finally:
            await conn.close()
        self._pg_name = None

    def describe(self) -> str:
        if self.kind == "postgresql":
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        return self.url


# --- load ------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    events: int = 0
    transactions: int = 0
    first_put: float = 0.0
    last_ack: float = 0.0
    handled_at: float = 0.0
    acks: list[float] = field(default_factory=list)  # seconds per transaction
    latencies: list[float] = field(default_factory=list)  # seconds per ping, end to end
    pings_sent: int = 0
    cpu_seconds: float = 0.0
    bench_cpu_seconds: float = 0.0
    other_cpu_seconds: float = 0.0  # every other process on the machine (the DB server too)
    retries: int = 0
    offered_rate: float | None = None
    offered_events: int = 0
    # The bridge's own view from its /metrics histograms (mean seconds during the phase).
    breakdown: dict[str, float] = field(default_factory=dict)

    @property
    def handled_per_second(self) -> float:
        span = self.handled_at - self.first_put
        return self.events / span if span > 0 else math.nan

    @property
    def acked_per_second(self) -> float:
        span = self.last_ack - self.first_put
        return self.events / span if span > 0 else math.nan

    @property
    def events_per_cpu_second(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds > 0 else math.nan


class Load:
    """Builds realistic events and sends them to the bridge like a homeserver does."""

    def __init__(self, session: aiohttp.ClientSession, bridge_url: str, hs_token: str,
                 rooms: list[str], stub: StubHomeserver, seed: int = 1) -> None:
        self.session = session
        self.bridge_url = bridge_url
        self.headers = {"Authorization": f"Bearer {hs_token}",
                        "Content-Type": "application/json"}
        self.rooms = rooms
        self.stub = stub
        self.run_id = uuid.uuid4().hex[:8]
        self._txn = 0
        self._event = 0
        self._random = random.Random(seed)
        # Ping event ID -> start of the PUT that carried it; replies are matched by
        # m.relates_to.m.in_reply_to.
        self._ping_started: dict[str, float] = {}
        self._latencies: list[float] | None = None
        self._replied = asyncio.Event()
        stub.on_sent.append(self._on_sent)

    def _on_sent(self, sent: SentEvent) -> None:
        reply_to = sent.in_reply_to
        if reply_to is None:
            return
        started = self._ping_started.pop(reply_to, None)
        if started is not None and self._latencies is not None:
            self._latencies.append(sent.arrived - started)
            self._replied.set()

    def _event_id(self) -> str:
        self._event += 1
        return f"${self.run_id}-{self._event}:{DOMAIN}"

    def message(self, room_id: str, body: str) -> dict[str, Any]:
        return {
            "type": "m.room.message",
            "event_id": self._event_id(),
            "room_id": room_id,
            "sender": USER,
            "origin_server_ts": int(time.time() * 1000),
            "content": {"msgtype": "m.text", "body": body},
            "unsigned": {"age": 12},
        }

    def chat(self, count: int, ping_every: int | None) -> list[dict[str, Any]]:
        """``count`` chat messages in random rooms; every ``ping_every``-th is a ping."""
        events = []
        for _ in range(count):
            room = self._random.choice(self.rooms)
            n = self._event + 1
            if ping_every and n % ping_every == 0:
                events.append(self.message(room, f"{PREFIX} ping"))
            else:
                events.append(self.message(
                    room, f"message {n}: the quick brown fox jumps over the lazy dog"))
        return events

    def invite_bot(self, room_id: str) -> dict[str, Any]:
        return {
            "type": "m.room.member",
            "event_id": self._event_id(),
            "room_id": room_id,
            "sender": ADMIN,
            "state_key": BOT,
            "origin_server_ts": int(time.time() * 1000),
            "content": {"membership": "invite", "displayname": "Bridge bot"},
            "unsigned": {"age": 5},
        }

    async def put(self, events: list[dict[str, Any]], phase: PhaseResult | None) -> float:
        """Send one transaction; retry like a homeserver until it is acknowledged."""
        self._txn += 1
        url = f"{self.bridge_url}/_matrix/app/v1/transactions/{self.run_id}-{self._txn}"
        body = json.dumps({"events": events}).encode()
        pings = [e["event_id"] for e in events if e["content"].get("body", "").startswith(
            PREFIX)]
        for attempt in range(6):
            started = time.monotonic()
            for event_id in pings:  # latency counts from the first attempt
                self._ping_started.setdefault(event_id, started)
            try:
                async with self.session.put(url, data=body, headers=self.headers) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError as exc:
                status, detail = 0, repr(exc)
            else:
                detail = f"HTTP {status}"
            done = time.monotonic()
            if status == 200:
                if phase is not None:
                    if not phase.transactions:
                        phase.first_put = started
                    phase.transactions += 1
                    phase.events += len(events)
                    phase.acks.append(done - started)
                    phase.last_ack = done
                    phase.pings_sent += len(pings)
                return done - started
            if phase is not None:
                phase.retries += 1
            print(f"  transaction {self._txn} not acknowledged ({detail}); retrying",
                  file=sys.stderr)
            await asyncio.sleep(0.2 * 2 ** attempt)
        raise BenchError(f"the bridge did not acknowledge transaction {self._txn}")

    def record_latencies(self, latencies: list[float]) -> None:
        """Append the latency of every ping reply from now on to ``latencies``."""
        self._latencies = latencies

    async def wait_replies(self, count: int, timeout: float) -> bool:
        """Until ``count`` latencies are recorded; False if the timeout came first."""
        deadline = time.monotonic() + timeout
        while self._latencies is not None and len(self._latencies) < count:
            self._replied.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replied.wait(), remaining)
        return True


class BridgeClient:
    """Reads the bridge's /metrics and /_bridge/health."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def metrics(self) -> str:
        async with self.session.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    async def handled(self) -> float:
        text = await self.metrics()
        value = metric_value(text, "bridge_events_total", network="matrix", direction="in")
        return value or 0.0

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.url}/_bridge/health") as resp:
            return resp.status, await resp.json()

    async def wait_handled(self, target: float, timeout: float) -> float:
        """Poll until the bridge counted ``target`` inbound events handled; returns when."""
        return await poll_until(self.handled, target, time.monotonic() + timeout,
                                "the bridge handled {done:.0f} of {target:.0f} events "
                                f"within {timeout:.0f}s")


# A scrape of /metrics costs the bridge about 3 ms of CPU (it renders every series): polled
# every 50 ms during a run, that was a fifth of the bridge's CPU in a Slack benchmark,
# charged to the messages. A Prometheus server scrapes every 15 s or so.
FINE_POLL_SECONDS = 0.02
COARSE_POLL_SECONDS = 1.0


async def poll_until(read: Callable[[], Awaitable[float]], target: float, deadline: float,
                     timeout_message: str) -> float:
    """Poll ``read`` until it reaches ``target``; returns the monotonic time it did.

    While much is left, the next poll waits for half of what the rate seen so far needs for
    the rest (at most COARSE_POLL_SECONDS), so a run costs the bridge a few dozen scrapes,
    not thousands; near the end it polls every FINE_POLL_SECONDS, so the end is still seen
    within that. BenchError with ``timeout_message`` (formatted with ``done`` and
    ``target``) after ``deadline``.
    """
    first_at, first = time.monotonic(), await read()
    done = first
    while done < target:
        now = time.monotonic()
        if now > deadline:
            raise BenchError(timeout_message.format(done=done, target=target))
        rate = (done - first) / (now - first_at) if now > first_at else 0.0
        wait = 0.5 * (target - done) / rate if rate > 0 else FINE_POLL_SECONDS
        await asyncio.sleep(min(COARSE_POLL_SECONDS, max(FINE_POLL_SECONDS, wait)))
        done = await read()
    return time.monotonic()


def chunks(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[i:i + size] for i in range(0, len(events), size)]


# --- start-up and report ---------------------------------------------------------------


def write_config(path: Path, hs_port: int, as_port: int, db_url: str, tokens: tuple[str, str]
                 ) -> dict[str, Any]:
    data: dict[str, Any] = {
        "homeserver": {"address": f"http://127.0.0.1:{hs_port}", "domain": DOMAIN,
                       "verify_tls": False},
        "appservice": {"id": "bench-bridge", "address": f"http://127.0.0.1:{as_port}",
                       "hostname": "127.0.0.1", "port": as_port, "bot_username": "bridgebot",
                       "bot_displayname": "Bridge bot", "as_token": tokens[0],
                       "hs_token": tokens[1]},
        "database": {"url": db_url},
        "bridge": {"admins": [ADMIN]},
        "logging": {"level": os.environ.get("BENCH_BRIDGE_LOG_LEVEL", "WARNING"), "format": "text"},
    }
    # Refuse a config the bridge would refuse, here with a clear message.
    from bridge.config import parse_config

    parse_config(json.loads(json.dumps(data)), environ={})
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    path.chmod(0o600)
    return data


async def wait_started(bridge: BridgeProcess, client: BridgeClient, stub: StubHomeserver,
                       timeout: float) -> float:
    """Until /_bridge/health says ready and the bot set-up (register, name, ping) is done."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not bridge.alive():
            raise BenchError("the bridge exited during start-up:\n" + bridge.log_tail())
        with contextlib.suppress(aiohttp.ClientError, ValueError):
            status, _ = await client.health()
            if status == 200 and stub.state.pings >= 1 and BOT in stub.state.displaynames:
                return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise BenchError(f"the bridge was not ready within {timeout:.0f}s:\n" + bridge.log_tail())


async def start_synapse(workdir: Path, port: int, registration: Path) -> SynapseServer:
    """A real Synapse for a benchmark, under ``workdir``, with the bridge's registration;
    BenchError if it does not come up."""
    print("starting Synapse ...", flush=True)
    synapse = SynapseServer(workdir, port=port, server_name=DOMAIN,
                            registration_files=[registration])
    try:
        await asyncio.to_thread(synapse.start)
    except SynapseStartError as exc:
        raise BenchError(f"Synapse did not start: {exc}") from None
    return synapse


def git_revision() -> str:
    """The commit measured (with -dirty for local changes), for comparing runs."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def print_profile(path: Path, top: int) -> None:
    import pstats

    if not path.exists():
        print(f"no profile was written to {path}", file=sys.stderr)
        return
    print(f"\ncProfile of the bridge process ({path}), top {top} by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time:")
    stats.sort_stats("cumulative").print_stats(top)
