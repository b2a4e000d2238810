"""Shared parts of the email benchmarks: email_inbound.py, email_memory.py, email_fanout.py.

Built on bench/common.py and testkit/stub_homeserver.py: the bridge runs as its own
process (``python -m bridge run``) pinned to one core, with email switched on; this process,
pinned to the other core, runs the stub homeserver, plays the homeserver's side of the
appservice API (transactions) and the mail servers on the other end (SMTP clients that send
to the bridge, or an SMTP sink that the bridge relays to).

A room is set up the way an admin does it: ``@admin:bench`` invites the bot (a membership
event in a transaction), then sends ``!bridge link email <name>`` and ``!bridge email
subscribe <address>`` as command events; the stub records the bot's replies, which answer
each command (``m.in_reply_to``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from common import (
    ADMIN,
    BOT,
    DATABASE_HELP,
    DOMAIN,
    PREFIX,
    USER,
    BenchDatabase,
    BenchError,
    BridgeClient,
    BridgeFailures,
    BridgeProcess,
    Load,
    chunks,
    free_port,
    git_revision,
    machine_busy_seconds,
    metric_value,
    print_profile,
    proc_cpu_seconds,
    proc_status_kb,
    wait_started,
    write_config,
)

from testkit.stub_homeserver import SentEvent, StubHomeserver

__all__ = [
    "ADMIN", "BOT", "DOMAIN", "PREFIX", "USER", "BenchError", "SentEvent",
    "machine_busy_seconds", "metric_value", "proc_cpu_seconds",
    "proc_status_kb",
]

MAIL_DOMAIN = "bridge.bench.example"  # the domain of room addresses (email.domain)
PUPPET_PREFIX = "@email_"  # email.puppet_prefix, as a user ID starts
MIB = 1024 * 1024

# --- realistic text ----------------------------------------------------------------------

# Sentences of the kind a citizen writes to a building authority. Paragraphs are drawn from
# them at random (seeded), so a long body is varied prose, as a parser and compressor see in
# real mail, not one character or one block repeated.
_SENTENCES = [
    "Sehr geehrte Damen und Herren, ich wende mich heute mit einer Frage zu meinem Bauantrag "
    "an Sie.",
    "Am vergangenen Dienstag habe ich die überarbeiteten Pläne für den Anbau an der "
    "Müllerstraße eingereicht.",
    "Leider ist mir bis heute nicht klar, ob die Abstandsflächen zum Nachbargrundstück "
    "ausreichen.",
    "Der Architekt meint, dass eine Befreiung nach der Landesbauordnung möglich wäre, "
    "sofern der Nachbar zustimmt.",
    "Die schriftliche Zustimmung von Frau Özdemir liegt mir vor; ich reiche sie gern "
    "nach, falls sie noch fehlt.",
    "Könnten Sie mir bitte mitteilen, bis wann mit einer Entscheidung zu rechnen ist?",
    "Für die Finanzierung benötigt meine Bank spätestens Ende des Monats einen "
    "verbindlichen Bescheid.",
    "Außerdem würde ich gern wissen, ob für die Garage eine gesonderte Genehmigung "
    "erforderlich ist.",
    "Im Bebauungsplan ist die Fläche als allgemeines Wohngebiet ausgewiesen, die "
    "Grundflächenzahl beträgt 0,4.",
    "Die Entwässerung des Grundstücks soll über eine Versickerungsmulde im hinteren "
    "Gartenbereich erfolgen.",
    "Ein Bodengutachten aus dem Jahr 2019 bestätigt, dass der Untergrund dafür geeignet "
    "ist.",
    "Bei der Ortsbesichtigung im Frühjahr wurde angemerkt, dass die Dachneigung etwas "
    "flacher ausfallen müsse.",
    "Wir haben die Dachneigung daraufhin von 38 auf 32 Grad verringert und die Gauben "
    "entsprechend angepasst.",
    "Sollten noch Unterlagen fehlen, geben Sie mir bitte kurz Bescheid, damit ich sie "
    "umgehend besorgen kann.",
    "Gern komme ich auch persönlich in Ihre Sprechstunde, wenn sich die offenen Punkte so "
    "schneller klären lassen.",
    "Für Rückfragen erreichen Sie mich werktags ab 16 Uhr telefonisch oder jederzeit per "
    "E-Mail.",
    "Vielen Dank im Voraus für Ihre Mühe und die bisherige freundliche Unterstützung.",
    "Die Nachbarn auf der Südseite haben übrigens angekündigt, ebenfalls einen Wintergarten "
    "zu planen.",
    "Es wäre schön, wenn sich beide Vorhaben gestalterisch aufeinander abstimmen ließen.",
    "Mit freundlichen Grüßen aus der Weststadt, auch im Namen meiner Frau.",
]


def german_text(size: int, seed: int = 1) -> str:
    """About ``size`` bytes (UTF-8) of German prose in paragraphs wrapped at 72 columns."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    total = 0
    while total < size:
        sentences = rng.sample(_SENTENCES, rng.randint(3, 7))
        paragraph = textwrap.fill(" ".join(sentences), width=72)
        paragraphs.append(paragraph)
        total += len(paragraph.encode("utf-8")) + 2
    text = "\n\n".join(paragraphs)
    data = text.encode("utf-8")[:size]
    return data.decode("utf-8", "ignore").rstrip() + "\n"


def make_mail(*, sender: str, sender_name: str, to: str, subject: str, body: str,
              attachments: list[tuple[bytes, str, str]] | None = None,
              message_id: str | None = None) -> bytes:
    """A mail as it goes over SMTP (CRLF line ends). ``attachments``: (data, mimetype,
    filename), base64 in MIME. The text is quoted-printable, as mail clients send umlauts."""
    msg = EmailMessage()
    msg["From"] = f"{sender_name} <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(_now_local())
    msg["Message-ID"] = message_id or make_msgid(domain=sender.rsplit("@", 1)[-1])
    msg.set_content(body, cte="quoted-printable")
    for data, mimetype, filename in attachments or []:
        maintype, subtype = mimetype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP_POLICY)


def _now_local() -> Any:
    from datetime import datetime

    return datetime.now().astimezone()


# --- the stub homeserver, with a media repository -----------------------------------------


@dataclass(slots=True)
class Upload:
    """A file the bridge uploaded (POST /_matrix/media/v3/upload): its size and SHA-256,
    not its bytes."""

    started: float  # time.monotonic() when the request's headers had arrived
    finished: float  # ... when its body had been read
    size: int
    mimetype: str
    filename: str | None
    user_id: str
    content_uri: str
    sha256: str = ""


class EmailStub(StubHomeserver):
    """The stub homeserver plus ``POST /_matrix/media/v3/upload`` (what mautrix's
    ``upload_media`` calls when the bridge posts a mail's attachments).

    The stub registers a catch-all route last; aiohttp tries routes in order, so a route
    added here would never be reached. Instead the catch-all handler (``unknown``) hands
    uploads to :meth:`upload`. The body is read in chunks and only counted: aiohttp's
    ``request.read()`` refuses bodies over 1 MiB, and keeping 20 MB is pointless.
    """

    UPLOAD_PATH = "/_matrix/media/v3/upload"

    def __init__(self, domain: str, as_token: str, bot_mxid: str | None = None,
                 admin: str | None = None) -> None:
        super().__init__(domain, as_token, bot_mxid=bot_mxid, admin=admin)
        self.uploads: list[Upload] = []
        self._media_ids = itertools.count(1)

    async def unknown(self, request: web.Request) -> web.Response:
        if request.method == "POST" and request.path == self.UPLOAD_PATH:
            return await self.upload(request)
        return await super().unknown(request)

    async def upload(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        # The stub's middleware checks the token for known routes only; this one it cannot
        # tell from an unknown call, so the check is here.
        self.state.calls[f"POST {self.UPLOAD_PATH}"] += 1
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else request.query.get(
            "access_token", "")
        if token != self.as_token:
            return web.json_response({"errcode": "M_UNKNOWN_TOKEN",
                                      "error": "Unknown access token"}, status=401)
        size = 0
        digest = hashlib.sha256()
        async for chunk in request.content.iter_chunked(1 << 20):
            size += len(chunk)
            digest.update(chunk)
        uri = f"mxc://{self.domain}/bench{next(self._media_ids)}"
        self.uploads.append(Upload(started=started, finished=time.monotonic(), size=size,
                                   mimetype=request.headers.get("Content-Type", ""),
                                   filename=request.query.get("filename"),
                                   user_id=self._user(request), content_uri=uri,
                                   sha256=digest.hexdigest()))
        return web.json_response({"content_uri": uri})

    def calls_summary(self) -> str:
        # The catch-all route is named /{tail}; uploads are counted under their own path.
        calls = {k: v for k, v in self.state.calls.items() if not k.endswith(" /{tail}")}
        return ", ".join(f"{k.replace('/_matrix/client', '')} x{v}"
                         for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))

    def unknown_summary(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.state.unknown.items())) or "none"


# --- the bridge with email on, and an admin who drives its bot ----------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", default=None, help=DATABASE_HELP)
    parser.add_argument("--bridge-cpu", type=int, default=0,
                        help="core the bridge is pinned to (default 0; -1: not pinned)")
    parser.add_argument("--bench-cpu", type=int, default=1,
                        help="core this process is pinned to (default 1; -1: not pinned)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="give up when a step has not finished after this long (default 60)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the numbers to FILE as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (config, SQLite file, bridge log)")
    parser.add_argument("--profile", default=None, metavar="FILE",
                        help="run the bridge under cProfile, write the stats to FILE and print "
                             "the top functions (cProfile slows the bridge down)")
    parser.add_argument("--profile-top", type=int, default=30)


def check_common_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.profile:
        args.profile = Path(args.profile).resolve()
    available = os.sched_getaffinity(0)
    for name in ("bridge_cpu", "bench_cpu"):
        value = getattr(args, name)
        if value is not None and value < 0:
            setattr(args, name, None)
        elif value not in available:
            parser.error(f"--{name.replace('_', '-')} {value}: this process may use CPUs "
                         f"{sorted(available)}")
    if args.bridge_cpu is not None and args.bridge_cpu == args.bench_cpu:
        print("warning: the bridge and the bench share a core; numbers will be lower",
              file=sys.stderr)


def cpus_line(args: argparse.Namespace) -> str:
    def cpu(value: int | None) -> str:
        return f"on CPU {value}" if value is not None else "unpinned"

    return f"bridge {cpu(args.bridge_cpu)}; bench, stub and mail peers {cpu(args.bench_cpu)}"


class Harness:
    """Stub homeserver + database + the bridge process with email on + an admin."""

    def __init__(self, args: argparse.Namespace, workdir: Path, *,
                 max_message_size: int | None = None, relay_port: int | None = None,
                 max_connections: int | None = None) -> None:
        self.args = args
        self.workdir = workdir
        self.hs_port, self.as_port, self.smtp_port = free_port(), free_port(), free_port()
        # Nothing listens on the relay port unless a benchmark runs a sink there.
        self.relay_port = relay_port or free_port()
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.tokens = (f"as_{uuid.uuid4().hex}", f"hs_{uuid.uuid4().hex}")
        self.stub = EmailStub(DOMAIN, self.tokens[0], bot_mxid=BOT, admin=ADMIN)
        self.database = BenchDatabase(args.database, workdir)
        self.bridge: BridgeProcess | None = None
        self.session: aiohttp.ClientSession | None = None
        self.client: BridgeClient | None = None
        self.load: Load | None = None
        self.startup_seconds = math.nan
        self.database_name = ""
        self.run_id = uuid.uuid4().hex[:8]
        self._event_ids = itertools.count(1)
        # Bot replies by the event they answer; wakes waiters.
        self.replies: dict[str, SentEvent] = {}
        self._sent = asyncio.Condition()
        self.stub.on_sent.append(self._on_sent)
        self.sent_listeners: list[Callable[[SentEvent], None]] = []

    # --- start and stop ---

    async def start(self) -> None:
        await self.stub.start("127.0.0.1", self.hs_port)
        db_url = await self.database.create()
        self.database_name = self.database.describe()
        config_path = self.workdir / "config.yaml"
        self.write_config(config_path, db_url)
        self.bridge = BridgeProcess(config_path, self.workdir, self.args.bridge_cpu,
                                    self.args.profile)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        bridge_url = f"http://127.0.0.1:{self.as_port}"
        self.client = BridgeClient(self.session, bridge_url)
        self.load = Load(self.session, bridge_url, self.tokens[1], [], self.stub)
        print(f"starting the bridge ({self.database_name}) ...")
        self.bridge.start()
        self.startup_seconds = await wait_started(self.bridge, self.client, self.stub, 60)
        self.bridge.pin()
        await self.wait_smtp(30)

    def write_config(self, path: Path, db_url: str) -> None:
        data = write_config(path, self.hs_port, self.as_port, db_url, self.tokens)
        smtp_in: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.smtp_port}
        if self.max_message_size is not None:
            smtp_in["max_message_size"] = self.max_message_size
        smtp_out: dict[str, Any] = {"host": "127.0.0.1", "port": self.relay_port}
        if self.max_connections is not None:
            smtp_out["max_connections"] = self.max_connections
        data["email"] = {
            "enabled": True, "domain": MAIL_DOMAIN, "sender_auth": "none",
            "token_secret": f"bench-{uuid.uuid4().hex}", "smtp_in": smtp_in,
            "smtp_out": smtp_out,
        }
        from bridge.config import parse_config

        parse_config(json.loads(json.dumps(data)), environ={})
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        path.chmod(0o600)

    async def wait_smtp(self, timeout: float) -> None:
        """Until the bridge's SMTP server accepts connections."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.smtp_port)
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"the bridge's SMTP server did not listen on port "
                                     f"{self.smtp_port} within {timeout:.0f}s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def close(self) -> None:
        if self.bridge is not None:
            # In a thread: while the bridge shuts down, this loop must go on serving the
            # stub and the SMTP sink (the bridge says QUIT to its relay connections).
            code = await asyncio.to_thread(self.bridge.stop)
            if code not in (0, None):
                print(f"the bridge exited with code {code}:\n{self.bridge.log_tail()}",
                      file=sys.stderr)
        if self.session is not None:
            await self.session.close()
        await self.stub.stop()
        try:
            await self.database.drop()
        except Exception as exc:
            print(f"could not drop the benchmark database: {exc!r}", file=sys.stderr)

    # --- what the stub saw ---

    def _on_sent(self, sent: SentEvent) -> None:
        reply_to = sent.in_reply_to
        if reply_to is not None and sent.sender == BOT:
            self.replies[reply_to] = sent
        for listener in self.sent_listeners:
            listener(sent)

    # --- transactions from the "homeserver" ---

    def event(self, room_id: str, sender: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "m.room.message",
            "event_id": f"${self.run_id}-{next(self._event_ids)}:{DOMAIN}",
            "room_id": room_id,
            "sender": sender,
            "origin_server_ts": int(time.time() * 1000),
            "content": content,
            "unsigned": {"age": 10},
        }

    async def put(self, events: list[dict[str, Any]]) -> float:
        """One transaction, retried like a homeserver does; returns its ack time."""
        assert self.load is not None
        return await self.load.put(events, None)

    async def commands(self, room_id: str, texts: list[str], batch: int = 50) -> list[str]:
        """Send admin commands (``batch`` per transaction); the bot's reply to each."""
        events = [self.event(room_id, ADMIN, {"msgtype": "m.text", "body": text})
                  for text in texts]
        for part in chunks(events, batch):
            await self.put(part)
        wanted = [e["event_id"] for e in events]
        deadline = time.monotonic() + self.args.timeout
        while not all(w in self.replies for w in wanted):
            if time.monotonic() > deadline:
                done = sum(w in self.replies for w in wanted)
                raise BenchError(f"the bot answered {done} of {len(wanted)} commands within "
                                 f"{self.args.timeout:.0f}s:\n{self.log_tail()}")
            self.check_alive()
            await asyncio.sleep(0.02)
        return [str(self.replies[w].content.get("body", "")) for w in wanted]

    async def email_room(self, localpart: str, subscribers: list[str],
                         policy: str | None = None, batch: int = 50) -> tuple[str, str]:
        """A room the bot joined, linked to ``localpart@MAIL_DOMAIN``, with subscribers."""
        assert self.load is not None
        room_id = f"!{localpart}-{uuid.uuid4().hex[:6]}:{DOMAIN}"
        await self.put([self.load.invite_bot(room_id)])
        deadline = time.monotonic() + self.args.timeout
        while not any(e.room_id == room_id and e.sender == BOT
                      and str(e.content.get("body", "")).startswith("Hello")
                      for e in self.stub.state.sent):
            if time.monotonic() > deadline:
                raise BenchError(f"the bot did not greet {room_id}:\n{self.log_tail()}")
            self.check_alive()
            await asyncio.sleep(0.02)
        [linked] = await self.commands(room_id, [f"{PREFIX} link email {localpart}"])
        address = f"{localpart}@{MAIL_DOMAIN}"
        if "Linked" not in linked:
            raise BenchError(f"`link email {localpart}` was answered: {linked}")
        if policy is not None:
            [answer] = await self.commands(room_id, [f"{PREFIX} email policy {policy}"])
            if "From now on" not in answer:
                raise BenchError(f"`email policy {policy}` was answered: {answer}")
        answers = await self.commands(room_id, [f"{PREFIX} email subscribe {a}"
                                                for a in subscribers], batch)
        wrong = [a for a in answers if not a.startswith("Subscribed")]
        if wrong:
            raise BenchError(f"{len(wrong)} subscribe commands failed, e.g.: {wrong[0]}")
        return room_id, address

    # --- the bridge process ---

    def check_alive(self) -> None:
        if self.bridge is not None and not self.bridge.alive():
            raise BenchError("the bridge exited:\n" + self.bridge.log_tail())

    def log_tail(self, lines: int = 15) -> str:
        return self.bridge.log_tail(lines) if self.bridge is not None else ""

    async def metrics(self) -> str:
        assert self.client is not None
        return await self.client.metrics()

    async def outcome(self) -> Outcome:
        """Failures, log lines and stub calls, for the end of a report."""
        assert self.bridge is not None
        metrics = await self.metrics()
        return Outcome(
            failures=BridgeFailures.read(metrics),
            log_lines=self.bridge.log_lines(),
            log_tail=self.bridge.log_tail(15) if self.bridge.log_lines() else "",
            calls=self.stub.calls_summary(),
            unknown=self.stub.unknown_summary(),
        )


@dataclass
class Outcome:
    failures: BridgeFailures = field(default_factory=BridgeFailures)
    log_lines: int = 0
    log_tail: str = ""
    calls: str = ""
    unknown: str = "none"

    def print(self, wall_seconds: float) -> None:
        """The end of a report, before its verdict."""
        print(f"stub homeserver: calls: {self.calls}")
        print(f"stub homeserver: calls it did not know: {self.unknown}")
        self.failures.print(self.log_lines)
        if self.log_tail:
            print(f"bridge log (WARNING and above), last lines:\n{self.log_tail}")
        print(f"whole run: {wall_seconds:.0f} s")


@dataclass
class CpuMeter:
    """CPU used by the bridge, this process and everything else between two points."""

    bridge_pid: int
    started: float = field(default_factory=time.monotonic)
    bridge0: float = 0.0
    own0: float = 0.0
    busy0: float = 0.0
    bridge: float = 0.0
    own: float = 0.0
    other: float = 0.0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.bridge0 = proc_cpu_seconds(self.bridge_pid)
        self.own0 = proc_cpu_seconds(os.getpid())
        self.busy0 = machine_busy_seconds()

    def stop(self) -> CpuMeter:
        self.seconds = time.monotonic() - self.started
        self.bridge = proc_cpu_seconds(self.bridge_pid) - self.bridge0
        self.own = proc_cpu_seconds(os.getpid()) - self.own0
        self.other = max(0.0, machine_busy_seconds() - self.busy0 - self.bridge - self.own)
        return self

    def line(self) -> str:
        span = self.seconds or math.nan
        return (f"CPU: bridge {100 * self.bridge / span:.0f}% of one core, bench+stub+mail "
                f"peers {100 * self.own / span:.0f}%, other processes "
                f"{100 * self.other / span:.0f}%")


def histogram_delta(before: str, after: str, name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram's observations between two scrapes."""
    def delta(suffix: str) -> float:
        return ((metric_value(after, name + suffix, **labels) or 0.0)
                - (metric_value(before, name + suffix, **labels) or 0.0))

    return delta("_count"), delta("_sum")


def header(title: str, args: argparse.Namespace, database: str) -> None:
    print()
    print("=" * 78)
    print(f"{title} ({cpus_line(args)})")
    print(f"database: {database}; tree: {git_revision()}")
    print("-" * 78)


def run(args: argparse.Namespace, benchmark: Callable[[argparse.Namespace, Path],
                                                      Awaitable[Any]],
        report: Callable[[argparse.Namespace, Any], bool],
        prefix: str = "bridge-email-bench-") -> int:
    """Pin this process, run ``benchmark`` in a temp dir, print the report; the exit code:
    0 targets met, 3 a target missed, 1 the benchmark failed."""
    if getattr(args, "bench_cpu", None) is not None:  # (faults.py pins nothing)
        os.sched_setaffinity(0, {args.bench_cpu})
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    started = time.monotonic()

    async def main() -> Any:
        # SIGTERM cancels the benchmark like Ctrl-C, so its finally blocks clean up.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await benchmark(args, workdir)

    try:
        results = asyncio.run(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:
        print("benchmark terminated", file=sys.stderr)
        return 143
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.wall_seconds = time.monotonic() - started
    met = report(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results.summary(met), indent=2) + "\n",
                                   encoding="utf-8")
    if getattr(args, "profile", None):  # (slack_synapse.py takes no --profile)
        print_profile(Path(args.profile), args.profile_top)
    return 0 if met else 3
