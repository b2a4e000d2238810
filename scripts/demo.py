"""`make demo`: the bridge doing its main job on a throwaway local Synapse, nothing else needed.

What it does, each step a function below:

1. recreate ``demo/`` at the repo root (git-ignored);
2. generate the bridge config and registration with the real ``bridge`` CLI, keeping the
   embedded SQLite database (``demo/bridge.db``), and start Synapse with that registration;
3. start the mail sink and the Slack simulator (testkit/slack_sim, standing in for Slack: a
   workspace "demo" with Anna and Ben in #bauamt), then ``bridge run`` as a subprocess
   (Socket Mode to the simulator), wait for ``/_bridge/health``, run ``bridge check``;
4. as ``@admin:demo.test``: chat with the bot directly (``help``), printing the exchange as a
   transcript;
5. roll out two departments from a migration plan (``demo/plan.yaml``) with
   ``bridge plan check`` and ``bridge plan apply``: the bot creates their rooms (and the
   Bauamt's space), links them to Slack channels and room addresses and subscribes a
   colleague on email to each; the admin joins the Bauamt's room (``!bridge status``);
6. email in that room: show a room message land in the colleague's mailbox (a small SMTP
   sink the demo runs writes ``demo/mailbox/``) and her mail, sent over real SMTP, appear in
   the room as her puppet;
7. Slack in the same room: show Anna's Slack message appear as her puppet (and go on to the
   colleague on email: the room is the hub) and a room message reach the Slack channel;
8. print the progress report (``bridge report``), the admin page's URL and login and how to
   go on by hand (including one-line
   commands that mail the room and post into the Slack channel), and keep everything
   running until Ctrl-C.

``--once`` stops after step 7 (for CI smoke checks). Exit code 0 on success, 1 with a clear
message if a step fails, 130 if interrupted before the demo was ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import smtplib
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import yaml
from aiosmtpd.smtp import SMTP, Envelope, Session

# The demo borrows the test harness (a real Synapse, a small Matrix client, the Slack
# simulator) from testkit/, which the editable install (`make .venv/.installed`) provides.
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator, Team
from testkit.synapse import SynapseServer, SynapseStartError, free_port

REPO = Path(__file__).resolve().parent.parent

DEMO = REPO / "demo"
SERVER_NAME = "demo.test"  # Synapse's server_name; unrelated to the port it listens on
ADMIN_LOCALPART = "admin"
ADMIN_PASSWORD = "demo"
ADMIN_MXID = f"@{ADMIN_LOCALPART}:{SERVER_NAME}"
GROUP_ROOM_NAME = "Bauamt \u2013 Allgemein"  # the plan's first room, where the demo talks
HEALTH_TIMEOUT = 30.0  # first start migrates the database and registers the bot
REPLY_TIMEOUT = 15.0  # the bot answers in well under a second; 15 s means "broken"
MAIL_DOMAIN = "mail.demo.test"  # room addresses: <localpart>@mail.demo.test
ROOM_ADDRESS_LOCALPART = "bauamt"
ROOM_ADDRESS = f"{ROOM_ADDRESS_LOCALPART}@{MAIL_DOMAIN}"
COLLEAGUE_ADDRESS = "erika@stadt.example"  # a member of staff who works by email
COLLEAGUE_NAME = "Erika Mustermann"
MAILBOX = DEMO / "mailbox"  # the demo's SMTP sink: <recipient>/<timestamp>-<n>.eml
MAIL_TIMEOUT = 15.0  # mail goes through the outbox in well under a second
# The Slack simulator's workspace: team "demo", two people, one channel the app is in.
SLACK_TEAM_ID = "T0DEMO"
SLACK_TEAM = "demo"
SLACK_BOT_TOKEN = "xoxb-demo-bot-token"
SLACK_APP_TOKEN = "xapp-demo-app-token"  # with an app token the bridge uses Socket Mode
SLACK_CHANNEL_ID = "C0BAUAMT"
SLACK_CHANNEL = "bauamt"
SLACK_PEOPLE = [("U0ANNA", "anna", "Anna Schmidt", "Anna"), ("U0BEN", "ben", "Ben Weber", "")]
SLACK_TIMEOUT = 15.0  # a message crosses in well under a second
# The second department's channel, which the plan links to its room.
SLACK_CHANNEL2_ID = "C0ORDNUNG"
SLACK_CHANNEL2 = "ordnungsamt"
PLAN_PATH = DEMO / "plan.yaml"
GROUP_ROOM_ALIAS = f"#bauamt-allgemein:{SERVER_NAME}"


def demo_plan() -> str:
    """The migration plan the demo applies: two departments, each with a room linked to a
    Slack channel and a room address, and a colleague who stays on email."""
    return f"""\
# A migration plan (see README, "Operating a migration"): applied by the demo with
#   bridge plan apply -c {rel(DEMO / 'config.yaml')} {rel(PLAN_PATH)}
version: 1
departments:
  - name: Bauamt
    space: bauamt
    admins: ["{ADMIN_MXID}"]
    rooms:
      - alias: bauamt-allgemein
        name: "{GROUP_ROOM_NAME}"
        slack: {{workspace: {SLACK_TEAM}, channel: {SLACK_CHANNEL_ID}}}
        email:
          localpart: {ROOM_ADDRESS_LOCALPART}
          policy: subscribers
          subscribers:
            - {{address: {COLLEAGUE_ADDRESS}, name: {COLLEAGUE_NAME}}}
  - name: Ordnungsamt
    admins: ["{ADMIN_MXID}"]
    rooms:
      - alias: ordnungsamt
        name: "Ordnungsamt"
        slack: {{workspace: {SLACK_TEAM}, channel: {SLACK_CHANNEL2_ID}}}
        email:
          localpart: ordnungsamt
          policy: domain:stadt.example
          subscribers:
            - {{address: max@stadt.example, name: Max Muster}}
"""

T = TypeVar("T")


class DemoError(Exception):
    """A step failed; the message says which and where to look."""


@dataclass
class Demo:
    """Everything the steps share, and what has to be stopped on exit."""

    synapse_port: int = field(default_factory=free_port)
    bridge_port: int = field(default_factory=free_port)
    smtp_in_port: int = field(default_factory=free_port)  # the bridge receives mail here
    sink_port: int = field(default_factory=free_port)  # ... and sends it to the sink here
    slack_port: int = field(default_factory=free_port)  # the Slack simulator
    config_path: Path = DEMO / "config.yaml"
    registration_path: Path = DEMO / "registration.yaml"
    bridge_log_path: Path = DEMO / "bridge.log"
    synapse: SynapseServer | None = None
    bridge: subprocess.Popen[bytes] | None = None
    bridge_log: IO[bytes] | None = None
    sink: MailSink | None = None
    slack: SlackSide | None = None
    bot_mxid: str = ""
    dm_room: str = ""
    group_room: str = ""

    @property
    def homeserver_url(self) -> str:
        return f"http://127.0.0.1:{self.synapse_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}/_bridge/health"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}/_bridge/admin/"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}/_bridge/api/v1"

    @property
    def slack_url(self) -> str:
        return f"http://127.0.0.1:{self.slack_port}"


# --- output ------------------------------------------------------------------------------


def rel(path: Path) -> str:
    """A path relative to the repo root: what the user types there (`make demo` runs from
    it), and what the CLI subprocesses, which run there, are given."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


_OUTPUT = threading.Lock()  # the mail sink prints from its own thread


def emit(text: str) -> None:
    """Print whole lines at once, so that the sink's notices never split a line."""
    with _OUTPUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def heading(text: str) -> None:
    emit(f"\n== {text}")


def say(text: str) -> None:
    emit(f"   {text}")


def chat_line(who: str, text: str) -> None:
    """One chat message, continuation lines indented under the first."""
    label = f"   {who:>10} | "
    lines = text.splitlines() or [""]
    emit("\n".join([label + lines[0],
                    *(" " * (len(label) - 2) + "| " + line for line in lines[1:])]))


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return textwrap.indent("\n".join(text.splitlines()[-lines:]), "   | ")


# --- step 1: a fresh demo directory --------------------------------------------------------


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def fresh_demo_dir() -> None:
    # Wiping the directory under a demo that is still running would leave it writing into
    # deleted files on ports nobody knows about any more; refuse instead.
    # (Synapse writes no pid file when it does not daemonize; the bridge's is ours.)
    pid_file = DEMO / "bridge.pid"
    pid = _pid_alive(pid_file)
    if pid is not None:
        raise DemoError(f"a previous demo still seems to run: its bridge is process {pid} "
                        f"(see {rel(pid_file)}). Stop that demo with Ctrl-C, or remove "
                        f"{rel(DEMO)}/ if that process is something else.")
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    say(f"fresh directory {rel(DEMO)}/")


# --- step 2: config, registration, Synapse ---------------------------------------------------


def run_cli(*args: str) -> str:
    """Run the real `bridge` CLI, as an operator would; return its output."""
    cmd = [sys.executable, "-m", "bridge", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise DemoError(f"`bridge {' '.join(args)}` failed (exit code {proc.returncode}):\n"
                        f"{textwrap.indent(output, '   | ')}")
    return output


def _set_yaml_keys(text: str, values: dict[tuple[str, ...], Any]) -> str:
    """Set ``section.key`` (or ``section.sub.key``) values by editing lines, so the file
    keeps its comments.

    Only handles the block-mapping shape of the example config (``key: value`` lines,
    nesting by indentation); the caller checks the result and falls back to a YAML dump.
    """
    out: list[str] = []
    parents: list[tuple[int, str]] = []  # (indentation, key) of the enclosing mappings
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            indent = len(line) - len(stripped)
            while parents and parents[-1][0] >= indent:
                parents.pop()
            key = stripped.split(":", 1)[0]
            path = (*(k for _, k in parents), key)
            if path in values:
                # JSON is valid YAML: quoted strings and flow lists, no surprises with ':'.
                line = f"{' ' * indent}{key}: {json.dumps(values[path])}"
            parents.append((indent, key))
        out.append(line)
    return "\n".join(out) + "\n"


def _yaml_get(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _yaml_set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def write_config(demo: Demo) -> None:
    say(run_cli("generate-config", "-o", rel(demo.config_path)))
    values: dict[tuple[str, ...], Any] = {
        ("homeserver", "address"): demo.homeserver_url,
        ("homeserver", "domain"): SERVER_NAME,
        ("appservice", "address"): f"http://127.0.0.1:{demo.bridge_port}",
        ("appservice", "hostname"): "127.0.0.1",
        ("appservice", "port"): demo.bridge_port,
        ("bridge", "admins"): [ADMIN_MXID],
        # The embedded default, but inside demo/ so each run starts empty.
        ("database", "url"): f"sqlite+aiosqlite:///{DEMO / 'bridge.db'}",
        # Email: the bridge receives on smtp_in and relays staff's mail to the demo's sink.
        ("email", "enabled"): True,
        ("email", "domain"): MAIL_DOMAIN,
        ("email", "sender_auth"): "none",
        ("email", "smtp_in", "hostname"): "127.0.0.1",
        ("email", "smtp_in", "port"): demo.smtp_in_port,
        ("email", "smtp_out", "host"): "127.0.0.1",
        ("email", "smtp_out", "port"): demo.sink_port,
        # Slack: the simulator's Web API; the app token means Socket Mode (the bridge
        # connects out, as it would to Slack, with no public URL).
        ("slack", "enabled"): True,
        ("slack", "api_url"): f"{demo.slack_url}/api/",
        ("slack", "workspaces"): [{"name": SLACK_TEAM, "bot_token": SLACK_BOT_TOKEN,
                                   "app_token": SLACK_APP_TOKEN}],
    }
    original = demo.config_path.read_text()
    edited = _set_yaml_keys(original, values)
    data = yaml.safe_load(edited)
    if any(_yaml_get(data, path) != v for path, v in values.items()):
        # The template changed shape: lose its comments rather than the settings.
        data = yaml.safe_load(original)
        for path, v in values.items():
            _yaml_set(data, path, v)
        edited = yaml.safe_dump(data, sort_keys=False)
    demo.config_path.write_text(edited)
    say(f"set homeserver {demo.homeserver_url} ({SERVER_NAME}), bridge port "
        f"{demo.bridge_port}, admin {ADMIN_MXID}, database {rel(DEMO / 'bridge.db')}")
    say(f"email on: room addresses @{MAIL_DOMAIN}, the bridge receives mail on "
        f"127.0.0.1:{demo.smtp_in_port} and relays to the demo's mail sink "
        f"127.0.0.1:{demo.sink_port}")
    say("email.sender_auth: none -- trusts the From header; for this demo only, never in "
        "production (see the comment in the config)")
    say(f"slack on: workspace {SLACK_TEAM!r} in Socket Mode, Web API {demo.slack_url}/api/ "
        "(the Slack simulator, standing in for slack.com)")
    say(run_cli("generate-registration", "-c", rel(demo.config_path),
                "-r", rel(demo.registration_path)))
    demo.bot_mxid = f"@{data['appservice']['bot_username']}:{SERVER_NAME}"


def start_synapse(demo: Demo) -> None:
    demo.synapse = SynapseServer(DEMO / "synapse", port=demo.synapse_port,
                                 server_name=SERVER_NAME,
                                 registration_files=[demo.registration_path])
    started = time.monotonic()
    try:
        demo.synapse.start()
    except SynapseStartError as exc:
        raise DemoError(f"Synapse did not start: {exc}") from None
    say(f"Synapse is up at {demo.homeserver_url} after {time.monotonic() - started:.1f} s "
        f"(log: {rel(demo.synapse.log_path)})")


# --- step 3: staff's mailboxes, Slack, then the bridge --------------------------------------


class ThreadedServer:
    """A server of the demo's in an event loop on a thread of its own, so that it keeps
    answering the bridge while the main thread waits for processes or for Ctrl-C.
    Subclasses open it in :meth:`_open` and close it in :meth:`_close`."""

    name = "server"  # for the thread and for errors

    def __init__(self, port: int) -> None:
        self.port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        ready = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready, failed),),
                                        name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()
        if not ready.wait(10) or failed:
            reason = failed[0] if failed else "no answer within 10 s"
            raise DemoError(f"the {self.name} could not listen on 127.0.0.1:{self.port}: "
                            f"{reason}")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Close the server and end its loop (open sessions are cancelled)."""
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            with suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    async def _serve(self, ready: threading.Event, failed: list[BaseException]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            try:
                await self._open()
            except OSError as exc:
                failed.append(exc)
                ready.set()
                return
            ready.set()
            await self._stopping.wait()
        finally:
            await self._close()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError


class MailSink(ThreadedServer):
    """The mail server behind which staff's mailboxes sit, as far as the demo is concerned:
    an aiosmtpd server that accepts every mail and writes one file per recipient,
    ``demo/mailbox/<recipient>/<timestamp>-<n>.eml``, printing a line for each.
    """

    name = "mail sink"

    def __init__(self, root: Path, port: int) -> None:
        super().__init__(port)
        self.root = root
        self.count = 0
        self._server: asyncio.Server | None = None

    async def _open(self) -> None:
        assert self._loop is not None
        self._server = await self._loop.create_server(
            lambda: SMTP(self, hostname="mailbox.demo.test", decode_data=False),
            "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        subject = message_from_bytes(raw, policy=policy.default).get("Subject", "(none)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            for recipient in envelope.rcpt_tos:
                self.count += 1
                # The address is the folder name; keep it from leaving the mailbox.
                folder = "".join(c if c.isalnum() or c in "@.+_-" else "_"
                                 for c in recipient.lower()).lstrip(".") or "_"
                path = self.root / folder / f"{stamp}-{self.count}.eml"
                path.parent.mkdir(parents=True, exist_ok=True)
                # Write, then rename: whoever waits for the file never sees half of it.
                partial = path.with_suffix(".part")
                partial.write_bytes(raw)
                partial.replace(path)
                say(f"[mail sink] mail for {recipient}: Subject {subject!r} -> {rel(path)}")
        except OSError as exc:
            say(f"[mail sink] could not store a mail: {exc}")
            return "451 4.3.0 Mailbox not writable; try again later"
        return "250 2.0.0 Delivered to the demo mailbox"


def start_mail_sink(demo: Demo) -> None:
    demo.sink = MailSink(MAILBOX, demo.sink_port)
    demo.sink.start()
    say(f"mail sink (staff's mailboxes) listening on 127.0.0.1:{demo.sink_port}; "
        f"every mail it receives is a file in {rel(MAILBOX)}/<recipient>/")


class SlackSide(ThreadedServer):
    """Slack, as far as the demo is concerned: the simulator of testkit/slack_sim (Web API,
    Socket Mode, and /_sim/ endpoints for people), with a workspace "demo" where Anna and Ben
    are in #bauamt and so is the app's bot user.

    :meth:`run` hands it work from the demo's main loop.
    """

    name = "Slack simulator"

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.sim: SlackSimulator | None = None
        self.team: Team | None = None

    async def _open(self) -> None:
        self.sim = sim = SlackSimulator(host="127.0.0.1", port=self.port)
        await sim.start()
        team = sim.add_team(team_id=SLACK_TEAM_ID, name=SLACK_TEAM,
                            bot_token=SLACK_BOT_TOKEN, app_token=SLACK_APP_TOKEN,
                            bot_name="matrix-bridge")
        for user_id, name, real_name, display_name in SLACK_PEOPLE:
            sim.add_user(team, user_id, name=name, real_name=real_name,
                         display_name=display_name)
        sim.add_channel(team, SLACK_CHANNEL_ID, name=SLACK_CHANNEL,
                        topic="Bauanträge und Pläne",
                        members=[*(p[0] for p in SLACK_PEOPLE), team.bot_user_id])
        sim.add_channel(team, SLACK_CHANNEL2_ID, name=SLACK_CHANNEL2,
                        topic="Sondernutzungen", members=[SLACK_PEOPLE[1][0], team.bot_user_id])
        self.team = team

    async def _close(self) -> None:
        if self.sim is not None:
            await self.sim.stop()

    async def run(self, work: Callable[[SlackSimulator, Team], Coroutine[Any, Any, T]]) -> T:
        """Run ``work`` in the simulator's loop (its state is not to be touched from
        another thread) and wait for its result."""
        assert self._loop is not None and self.sim is not None and self.team is not None
        future = asyncio.run_coroutine_threadsafe(work(self.sim, self.team), self._loop)
        return await asyncio.wrap_future(future)


def start_slack(demo: Demo) -> None:
    demo.slack = SlackSide(demo.slack_port)
    demo.slack.start()
    people = ", ".join(f"{real} ({name})" for _, name, real, _ in SLACK_PEOPLE)
    say(f"Slack simulator at {demo.slack_url} (Web API {demo.slack_url}/api/, Socket Mode): "
        f"workspace {SLACK_TEAM!r}, #{SLACK_CHANNEL} ({SLACK_CHANNEL_ID}) with {people}, "
        f"#{SLACK_CHANNEL2} ({SLACK_CHANNEL2_ID})")




def start_bridge(demo: Demo) -> None:
    demo.bridge_log = demo.bridge_log_path.open("wb")
    demo.bridge = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "-c", rel(demo.config_path)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=demo.bridge_log, stderr=subprocess.STDOUT,
        # Own process group: Ctrl-C reaches only this script, which then stops the bridge
        # before Synapse, so the bridge never sees its homeserver vanish first.
        start_new_session=True,
    )
    (DEMO / "bridge.pid").write_text(f"{demo.bridge.pid}\n")
    say(f"started `bridge run -c {rel(demo.config_path)}` (pid {demo.bridge.pid}, "
        f"log: {rel(demo.bridge_log_path)})")


def wait_for_health(demo: Demo) -> None:
    assert demo.bridge is not None
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < HEALTH_TIMEOUT:
        code = demo.bridge.poll()
        if code is not None:
            raise DemoError(f"the bridge exited with code {code} during start-up; "
                            f"{rel(demo.bridge_log_path)} ends with:\n"
                            f"{tail(demo.bridge_log_path)}")
        try:
            with urllib.request.urlopen(demo.health_url, timeout=2) as resp:
                if resp.status == 200:
                    say(f"GET {demo.health_url} -> 200 after "
                        f"{time.monotonic() - started:.1f} s: {resp.read().decode()}")
                    return
        except urllib.error.HTTPError as exc:  # 503 while starting
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise DemoError(f"{demo.health_url} did not answer 200 within {HEALTH_TIMEOUT:.0f} s "
                    f"(last: {last}); {rel(demo.bridge_log_path)} ends with:\n"
                    f"{tail(demo.bridge_log_path)}")


def run_check(demo: Demo) -> None:
    # `bridge check` against the running bridge: the operator's "is my setup right?".
    say(f"$ bridge check -c {rel(demo.config_path)}")
    for line in run_cli("check", "-c", rel(demo.config_path)).splitlines():
        say(f"  {line}")


# --- step 4: talk to the bot ----------------------------------------------------------------


def _bot_notice(bot: str, contains: str = "", reply_to: str | None = None) -> Any:
    def predicate(event: dict[str, Any]) -> bool:
        content = event["content"]
        in_reply_to = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        return (event["type"] == "m.room.message" and event["sender"] == bot
                and content.get("msgtype") == "m.notice"
                and contains in content.get("body", "")
                and (reply_to is None or in_reply_to == reply_to))
    return predicate


async def _wait_for_bot(demo: Demo, client: MatrixTestClient, room_id: str, what: str,
                        predicate: Any) -> str:
    started = time.monotonic()
    try:
        event = await client.wait_for_event(room_id, predicate, timeout=REPLY_TIMEOUT)
    except TimeoutError as exc:
        raise DemoError(f"the bot did not send {what} within {REPLY_TIMEOUT:.0f} s.\n"
                        f"   {exc}\n   {rel(demo.bridge_log_path)} ends with:\n"
                        f"{tail(demo.bridge_log_path)}") from None
    body = str(event["content"].get("body", ""))
    chat_line("bot", body)
    say(f"{'':>10}   ({what} after {time.monotonic() - started:.2f} s)")
    return body


async def _open_room(demo: Demo, client: MatrixTestClient, *, direct: bool) -> str:
    name = None if direct else GROUP_ROOM_NAME
    # In a department's room the bot is made moderator, as the README asks admins to do,
    # so that it can invite remote users, rename the room and redact.
    levels = None if direct else {"users": {demo.bot_mxid: 50}}
    room_id = await client.create_room(invite=[demo.bot_mxid], is_direct=direct, name=name,
                                       power_level_content_override=levels)
    if direct:
        # So that Matrix clients (Element, ...) list the room under "People" too.
        await client.request("PUT", f"/user/{quote(client.user_id, safe='')}/account_data/"
                                    "m.direct", json_body={demo.bot_mxid: [room_id]})
    chat_line("*", f"{ADMIN_LOCALPART} created {room_id} and invited {demo.bot_mxid}")
    await _wait_for_bot(demo, client, room_id, "its greeting",
                        _bot_notice(demo.bot_mxid, "Hello"))
    return room_id


async def _command(demo: Demo, client: MatrixTestClient, room_id: str, text: str) -> str:
    chat_line(ADMIN_LOCALPART, text)
    event_id = await client.send_text(room_id, text)
    return await _wait_for_bot(demo, client, room_id, f"the answer to `{text}`",
                               _bot_notice(demo.bot_mxid, reply_to=event_id))


async def talk_to_bot(demo: Demo) -> None:
    assert demo.synapse is not None
    user_id, token = await demo.synapse.register_user(ADMIN_LOCALPART, password=ADMIN_PASSWORD)
    say(f"registered {user_id} with password {ADMIN_PASSWORD!r} (shared-secret registration)")
    client = MatrixTestClient(demo.homeserver_url, user_id, token)
    try:
        await client.initial_sync()

        heading(f"Direct chat with the bot {demo.bot_mxid} (commands are plain words)")
        demo.dm_room = await _open_room(demo, client, direct=True)
        await _command(demo, client, demo.dm_room, "help")

        apply_plan(demo)
        heading(f'The Bauamt\'s room "{GROUP_ROOM_NAME}" (commands start with !bridge)')
        demo.group_room = await _join_planned_room(demo, client)
        await _command(demo, client, demo.group_room, "!bridge status")

        await show_email(demo, client)
        await show_slack(demo, client)
    finally:
        await client.close()


# --- step 5: the migration plan ---------------------------------------------------------


def apply_plan(demo: Demo) -> None:
    heading(f"5. Two departments from a migration plan ({rel(PLAN_PATH)})")
    PLAN_PATH.write_text(demo_plan(), encoding="utf-8")
    for line in demo_plan().splitlines()[3:]:
        say(f"  {line}")
    # Applied twice: the second run finds nothing to do (a plan can be re-applied any time).
    for command in (("plan", "check"), ("plan", "apply"), ("plan", "apply")):
        say(f"$ bridge {' '.join(command)} -c {rel(demo.config_path)} {rel(PLAN_PATH)}")
        output = run_cli(*command, "-c", rel(demo.config_path), rel(PLAN_PATH))
        for line in output.splitlines():
            say(f"  {line}")


async def _join_planned_room(demo: Demo, client: MatrixTestClient) -> str:
    """The plan's bot invited the admin to the rooms it created: accept for the Bauamt's."""
    room_id = await client.join(GROUP_ROOM_ALIAS)
    chat_line("*", f"{ADMIN_LOCALPART} joined {GROUP_ROOM_ALIAS} ({room_id}), created by the "
                   "bot from the plan")
    return room_id


# --- step 6: email ---------------------------------------------------------------------------


def _mailbox_files(address: str) -> set[Path]:
    return set((MAILBOX / address).glob("*.eml"))


async def _wait_for_mail(demo: Demo, address: str, text: str,
                         before: set[Path]) -> tuple[Path, EmailMessage]:
    """The first new mail in ``address``'s mailbox whose text contains ``text``."""
    started = time.monotonic()
    while time.monotonic() - started < MAIL_TIMEOUT:
        for path in sorted(_mailbox_files(address) - before):
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            body = message.get_body(("plain",))  # type: ignore[attr-defined]
            if body is not None and text in body.get_content():
                return path, message  # type: ignore[return-value]
        await asyncio.sleep(0.1)
    raise DemoError(f"no mail with {text!r} reached {rel(MAILBOX / address)}/ within "
                    f"{MAIL_TIMEOUT:.0f} s; {rel(demo.bridge_log_path)} ends with:\n"
                    f"{tail(demo.bridge_log_path)}")


def _colleague_mail(subject: str, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"{COLLEAGUE_NAME} <{COLLEAGUE_ADDRESS}>"
    message["To"] = ROOM_ADDRESS
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=COLLEAGUE_ADDRESS.split("@", 1)[1])
    message.set_content(text)
    return message


def _smtp_send(demo: Demo, message: EmailMessage) -> str:
    """Hand a mail to the bridge's SMTP server, as the colleague's mail server would;
    returns the bridge's final answer (it says 250 only once the mail is taken)."""
    where = f"the bridge's SMTP server 127.0.0.1:{demo.smtp_in_port}"
    problem = reply = ""
    try:
        with smtplib.SMTP("127.0.0.1", demo.smtp_in_port, timeout=30) as smtp:
            smtp.ehlo("mx.stadt.example")
            code, answer = smtp.mail(COLLEAGUE_ADDRESS)
            if code == 250:
                code, answer = smtp.rcpt(ROOM_ADDRESS)
            if code in (250, 251):
                code, answer = smtp.data(message.as_bytes())
            reply = f"{code} {answer.decode(errors='replace')}"
            if code != 250:
                problem = f"{where} refused the mail: {reply}"
    except (smtplib.SMTPException, OSError) as exc:
        problem = f"sending the mail to {where} failed: {exc}"
    if problem:
        raise DemoError(f"{problem}; {rel(demo.bridge_log_path)} ends with:\n"
                        f"{tail(demo.bridge_log_path)}")
    return reply


def _puppet_message(demo: Demo, text: str) -> Any:
    def predicate(event: dict[str, Any]) -> bool:
        return (event["type"] == "m.room.message"
                and event["sender"] not in (ADMIN_MXID, demo.bot_mxid)
                and text in event["content"].get("body", ""))
    return predicate


async def show_email(demo: Demo, client: MatrixTestClient) -> None:
    room = demo.group_room
    heading(f'6. Email in "{GROUP_ROOM_NAME}" (colleague {COLLEAGUE_ADDRESS}, mailbox sink '
            f"in {rel(MAILBOX)}/)")
    await _command(demo, client, room, "!bridge email list")

    # Matrix -> mail: the room's message lands in the subscriber's mailbox.
    text = "The meeting starts tomorrow at 10:00 in room 2.14."
    before = _mailbox_files(COLLEAGUE_ADDRESS)
    chat_line(ADMIN_LOCALPART, text)
    started = time.monotonic()
    await client.send_text(room, text)
    path, mail = await _wait_for_mail(demo, COLLEAGUE_ADDRESS, text, before)
    say(f"{'':>10}   (in {COLLEAGUE_ADDRESS}'s mailbox after "
        f"{time.monotonic() - started:.2f} s: {rel(path)})")
    for header in ("From", "To", "Subject", "Reply-To"):
        say(f"{header:>20}: {mail.get(header, '(none)')}")

    # Mail -> Matrix: Erika writes to the room address over real SMTP.
    subject, body = "Plans for tomorrow", "I will bring the plans for the meeting.\n\nErika"
    message = _colleague_mail(subject, body)
    say(f"SMTP to 127.0.0.1:{demo.smtp_in_port}: From {message['From']}, To {ROOM_ADDRESS}, "
        f"Subject {subject!r}")
    started = time.monotonic()
    reply = await asyncio.to_thread(_smtp_send, demo, message)
    say(f"{'':>10}   (the bridge answered: {reply})")
    try:
        event = await client.wait_for_event(room, _puppet_message(demo, body.splitlines()[0]),
                                            timeout=MAIL_TIMEOUT)
    except TimeoutError as exc:
        raise DemoError(f"the mail did not appear in the room within {MAIL_TIMEOUT:.0f} s.\n"
                        f"   {exc}\n   {rel(demo.bridge_log_path)} ends with:\n"
                        f"{tail(demo.bridge_log_path)}") from None
    members = await client.get_joined_members(room)
    name = members.get(event["sender"], {}).get("display_name") or event["sender"]
    chat_line(COLLEAGUE_NAME.split()[0].lower(), str(event["content"].get("body", "")))
    say(f"{'':>10}   (posted by {event['sender']} \"{name}\", her puppet, after "
        f"{time.monotonic() - started:.2f} s)")


# --- step 7: Slack ---------------------------------------------------------------------------


async def _slack_messages(demo: Demo) -> list[dict[str, Any]]:
    """#bauamt as people in Slack read it (the simulator's /_sim/messages)."""
    assert demo.slack is not None

    async def read(sim: SlackSimulator, team: Team) -> list[dict[str, Any]]:
        return list(sim.transcript({"team": team.id, "channel": SLACK_CHANNEL_ID,
                                    "limit": "100"})["messages"])

    return await demo.slack.run(read)


async def show_slack(demo: Demo, client: MatrixTestClient) -> None:
    assert demo.slack is not None
    room = demo.group_room
    heading(f'7. Slack in "{GROUP_ROOM_NAME}" (workspace {SLACK_TEAM!r}, channel '
            f"#{SLACK_CHANNEL}; the Slack simulator stands in for Slack)")
    await _command(demo, client, room, "!bridge slack channels")

    # Slack -> Matrix (-> email): Anna writes in #bauamt; her puppet says it in the room,
    # and the colleague on email gets it too: the room is the hub.
    anna_id, _, anna_name, _ = SLACK_PEOPLE[0]
    text = "Guten Morgen! Die *Pläne* für die Sitzung liegen im Laufwerk :page_facing_up:"
    chat_line("anna/slack", text)
    mails_before = _mailbox_files(COLLEAGUE_ADDRESS)
    started = time.monotonic()

    async def post(sim: SlackSimulator, team: Team) -> str:
        return await sim.post_message(team, SLACK_CHANNEL_ID, anna_id, text=text)

    await demo.slack.run(post)
    try:
        event = await client.wait_for_event(room, _puppet_message(demo, "Guten Morgen!"),
                                            timeout=SLACK_TIMEOUT)
    except TimeoutError as exc:
        raise DemoError(f"Anna's Slack message did not appear in the room within "
                        f"{SLACK_TIMEOUT:.0f} s.\n   {exc}\n   {rel(demo.bridge_log_path)} "
                        f"ends with:\n{tail(demo.bridge_log_path)}") from None
    members = await client.get_joined_members(room)
    name = members.get(event["sender"], {}).get("display_name") or event["sender"]
    content = event["content"]
    chat_line("anna", str(content.get("body", "")))
    say(f"{'':>10}   (posted by {event['sender']} \"{name}\", the puppet of {anna_name}, "
        f"after {time.monotonic() - started:.2f} s;")
    say(f"{'':>10}    HTML: {content.get('formatted_body', '(none)')})")
    path, _ = await _wait_for_mail(demo, COLLEAGUE_ADDRESS, "Guten Morgen!", mails_before)
    say(f"{'':>10}   (and mailed to {COLLEAGUE_ADDRESS}: {rel(path)})")

    # Matrix -> Slack: the admin answers in the room; the app posts it in #bauamt under
    # the admin's display name.
    text = "Danke Anna, ich bringe sie ausgedruckt mit."
    chat_line(ADMIN_LOCALPART, text)
    started = time.monotonic()
    await client.send_text(room, text)
    deadline = started + SLACK_TIMEOUT
    posted = None
    while posted is None:
        posted = next((m for m in await _slack_messages(demo) if text in m.get("text", "")),
                      None)
        if posted is None:
            if time.monotonic() > deadline:
                raise DemoError(f"the room message did not reach Slack #{SLACK_CHANNEL} "
                                f"within {SLACK_TIMEOUT:.0f} s; {rel(demo.bridge_log_path)} "
                                f"ends with:\n{tail(demo.bridge_log_path)}")
            await asyncio.sleep(0.1)
    say(f"{'':>10}   (in Slack #{SLACK_CHANNEL} after {time.monotonic() - started:.2f} s, "
        f"posted by the app as {posted['from']!r})")


# --- step 8: over to the user -------------------------------------------------------------


def mail_one_liner(demo: Demo) -> str:
    """A shell command, standard library only, that mails the room as the colleague."""
    code = "; ".join([
        "import smtplib, email.message, email.utils",
        "m = email.message.EmailMessage()",
        f"m['From'] = '{COLLEAGUE_NAME} <{COLLEAGUE_ADDRESS}>'",
        f"m['To'] = '{ROOM_ADDRESS}'",
        "m['Subject'] = 'Hello from my mailbox'",
        f"m['Message-ID'] = email.utils.make_msgid(domain='{COLLEAGUE_ADDRESS.split('@')[1]}')",
        "m.set_content('Written in a mail program, read in Matrix.')",
        f"s = smtplib.SMTP('127.0.0.1', {demo.smtp_in_port})",
        "s.send_message(m)",
        "s.quit()",
        f"print('mail sent to {ROOM_ADDRESS}')",
    ])
    # Double quotes around it; nothing inside that a shell would expand or end on.
    assert not any(c in code for c in '"$`\\!'), code
    return f'python3 -c "{code}"'


def slack_post_one_liner(demo: Demo) -> str:
    """A curl command that posts into #bauamt as Anna (the simulator's /_sim/post)."""
    _, anna, _, _ = SLACK_PEOPLE[0]
    return (f"curl -s {demo.slack_url}/_sim/post -d team={SLACK_TEAM} -d channel={SLACK_CHANNEL} "
            f"-d user={anna} --data-urlencode 'text=Hallo aus Slack, die Statik ist da.'")


def print_report(demo: Demo) -> None:
    heading(f"8. The progress report: $ bridge report -c {rel(demo.config_path)}")
    for line in run_cli("report", "-c", rel(demo.config_path)).splitlines():
        say(f"  {line}")


def print_admin_page(demo: Demo) -> None:
    secret = yaml.safe_load(demo.config_path.read_text())["provisioning"]["shared_secret"]
    heading("The admin page")
    say(f"admin page:       {demo.admin_url}")
    say(f"log in with:      {ADMIN_LOCALPART} / {ADMIN_PASSWORD} (a bridge admin), or the "
        f"provisioning secret {secret}")
    say(f"the API:          curl -H 'Authorization: Bearer {secret}' "
        f"{demo.api_url}/rooms")
    say(f"the report:       .venv/bin/bridge report -c {rel(demo.config_path)}")


def print_next_steps(demo: Demo) -> None:
    hs = demo.homeserver_url
    room = quote(demo.dm_room, safe="")
    login_body = json.dumps({"type": "m.login.password",
                             "identifier": {"type": "m.id.user", "user": ADMIN_LOCALPART},
                             "password": ADMIN_PASSWORD}, separators=(",", ":"))
    message = json.dumps({"msgtype": "m.text", "body": "!bridge ping"}, separators=(",", ":"))
    token_of = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    heading("The demo keeps running. Go on by hand:")
    say(f"homeserver:       {hs}  (server name {SERVER_NAME})")
    say(f"login:            {ADMIN_LOCALPART} / {ADMIN_PASSWORD}  ({ADMIN_MXID}, a bridge admin)")
    say(f"bot:              {demo.bot_mxid}")
    say(f"direct chat:      {demo.dm_room}")
    say(f"group room:       {demo.group_room}  ({GROUP_ROOM_NAME}, {GROUP_ROOM_ALIAS})")
    say(f"bridge config:    {rel(demo.config_path)}")
    say(f"bridge log:       {rel(demo.bridge_log_path)}   (tail -f it in another terminal)")
    assert demo.synapse is not None
    say(f"Synapse log:      {rel(demo.synapse.log_path)}")
    say(f"health:           curl {demo.health_url}")
    print()
    say("Log in (keeps the access token in $TOKEN):")
    print(f"     TOKEN=$(curl -s -X POST {hs}/_matrix/client/v3/login "
          f"-H 'Content-Type: application/json' -d {shlex.quote(login_body)} | {token_of})")
    say("Send `!bridge ping` into the direct chat:")
    print(f"     curl -s -X PUT \"{hs}/_matrix/client/v3/rooms/{room}/send/m.room.message/"
          f"txn-$(date +%s)-$RANDOM\" -H \"Authorization: Bearer $TOKEN\" "
          f"-H 'Content-Type: application/json' -d {shlex.quote(message)}")
    say("Read the bot's answer (latest message first):")
    print(f"     curl -s \"{hs}/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2\" "
          f"-H \"Authorization: Bearer $TOKEN\"")
    print()
    say(f"Email: the group room's address is {ROOM_ADDRESS}; the bridge takes mail on "
        f"127.0.0.1:{demo.smtp_in_port}")
    say("(email.sender_auth is none: the From header is trusted, for the demo only).")
    say(f"Send a mail into \"{GROUP_ROOM_NAME}\" as {COLLEAGUE_NAME} (one line):")
    print(f"     {mail_one_liner(demo)}")
    say("See it in the group room (latest message first):")
    print(f"     curl -s \"{hs}/_matrix/client/v3/rooms/{quote(demo.group_room, safe='')}/"
          f"messages?dir=b&limit=2\" -H \"Authorization: Bearer $TOKEN\"")
    say(f"Staff's mail lands in {rel(MAILBOX)}/<address>/, one .eml file per mail (the demo "
        f"prints a line for each): whatever is said in \"{GROUP_ROOM_NAME}\" goes to")
    say(f"{rel(MAILBOX / COLLEAGUE_ADDRESS)}/. Subscribe more with "
        f"`!bridge email subscribe <address> [name]` in the room.")
    print()
    say(f"Slack: the simulator at {demo.slack_url} stands in for Slack; \"{GROUP_ROOM_NAME}\" is "
        f"linked to #{SLACK_CHANNEL} of workspace {SLACK_TEAM!r} too.")
    say(f"Post into #{SLACK_CHANNEL} as {SLACK_PEOPLE[0][2]} (one line; it appears in the group "
        f"room and is mailed to {COLLEAGUE_NAME.split()[0]}):")
    print(f"     {slack_post_one_liner(demo)}")
    say(f"See #{SLACK_CHANNEL} as Slack users see it (what the room says, from Matrix or from "
        "Erika's mail, arrives there under the sender's name):")
    print(f"     curl -s '{demo.slack_url}/_sim/messages?team={SLACK_TEAM}&channel="
          f"{SLACK_CHANNEL}' | python3 -m json.tool --no-ensure-ascii")
    say(f"The workspace's people and channels: curl -s {demo.slack_url}/_sim/state")
    print()
    say("Any Matrix client that reaches 127.0.0.1 works too: homeserver "
        f"{hs}, user {ADMIN_LOCALPART}, password {ADMIN_PASSWORD}.")
    say("Press Ctrl-C to stop.")


def wait_until_interrupted(demo: Demo) -> None:
    # Returns only if a process dies on its own; Ctrl-C/SIGTERM arrive as KeyboardInterrupt.
    assert demo.bridge is not None and demo.synapse is not None
    while True:
        code = demo.bridge.poll()
        if code is not None:
            raise DemoError(f"the bridge exited by itself with code {code}; "
                            f"{rel(demo.bridge_log_path)} ends with:\n"
                            f"{tail(demo.bridge_log_path)}")
        if not demo.synapse.running:
            raise DemoError(f"Synapse exited by itself; see {rel(demo.synapse.log_path)}")
        if demo.sink is not None and not demo.sink.running:
            raise DemoError("the mail sink stopped by itself")
        if demo.slack is not None and not demo.slack.running:
            raise DemoError("the Slack simulator stopped by itself")
        time.sleep(0.5)


# --- step 9: stop everything ----------------------------------------------------------------


def stop_all(demo: Demo) -> None:
    """The bridge first (it finishes in-flight work), then the Slack simulator and the mail
    sink it talks to, then its homeserver."""
    if demo.bridge is not None:
        if demo.bridge.poll() is None:
            demo.bridge.send_signal(signal.SIGTERM)
            try:
                demo.bridge.wait(15)
            except subprocess.TimeoutExpired:
                say("the bridge did not stop within 15 s after SIGTERM; killing it")
                demo.bridge.kill()
                demo.bridge.wait()
        say(f"bridge stopped (exit code {demo.bridge.returncode})")
        (DEMO / "bridge.pid").unlink(missing_ok=True)
    if demo.bridge_log is not None:
        demo.bridge_log.close()
    if demo.slack is not None:
        was_running = demo.slack.running
        demo.slack.stop()
        if was_running:
            say("Slack simulator stopped")
    if demo.sink is not None:
        was_running = demo.sink.running
        demo.sink.stop()
        if was_running:
            say("mail sink stopped")
    if demo.synapse is not None:
        was_running = demo.synapse.running
        demo.synapse.stop()
        if was_running:
            say("Synapse stopped")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (e.g. from a CI runner) like Ctrl-C, so the same cleanup runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--once", action="store_true",
                        help="stop after the bot, email and Slack exchanges and exit 0 (for "
                             "CI smoke checks)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    demo = Demo()
    ready = False
    with sigterm_as_interrupt():
        try:
            heading("1. Demo directory")
            fresh_demo_dir()
            heading("2. Bridge config and registration (the real `bridge` CLI), then Synapse")
            write_config(demo)
            start_synapse(demo)
            heading("3. The mail sink for staff's mailboxes, the Slack simulator, then the "
                    "bridge")
            start_mail_sink(demo)
            start_slack(demo)
            start_bridge(demo)
            wait_for_health(demo)
            run_check(demo)
            heading(f"4. Chatting with the bot as {ADMIN_MXID}")
            asyncio.run(talk_to_bot(demo))
            ready = True
            print_report(demo)
            print(f"\nDemo ready in {time.monotonic() - started:.1f} s.", flush=True)
            print_admin_page(demo)
            if not args.once:
                print_next_steps(demo)
                wait_until_interrupted(demo)
        except KeyboardInterrupt:
            print("\nStopping ...", flush=True)
            if not ready:
                return 130
        except DemoError as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            # A second Ctrl-C must not leave half of it running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            stop_all(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
