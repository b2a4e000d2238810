"""Several bridge processes: SQLite refuses a second one; on PostgreSQL two run together
behind HAProxy and one of them is SIGKILLed mid-stream (README "High availability")."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import smtplib
import subprocess
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bridge.db import leases as db_leases
from bridge.db.engine import Database
from bridge.db.models import BridgeLease, OutboxItem
from testkit.helpers import command, open_room
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from testkit.synapse import free_port
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import ANNA, CHANNEL, add_workspace, workspace_config
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body, posted, room_events, text_of
from tests.test_all_directions import plain
from tests.test_cli import REPO, _session_config, _start_bridge, _wait_healthy


async def test_a_second_process_on_one_sqlite_database_refuses_to_start_and_says_why(
        homeserver: Homeserver, tmp_path: Path, sqlite_url: str) -> None:
    config = _session_config(homeserver, tmp_path, sqlite_url)
    first = _start_bridge(config)
    try:
        await _wait_healthy(homeserver, first)
        second_config = config.with_name("second.yaml")
        second_config.write_text(config.read_text())
        second = _start_bridge(second_config)
        assert second.wait(timeout=60) != 0
        said = second_config.with_suffix(".log").read_text()
        assert f"another bridge process (pid {first.pid}) is running on the SQLite " \
               f"database " in said, said
        assert "bridge.db (it holds the lock " in said and "bridge.db.lock)" in said
        assert "SQLite serves one bridge process only" in said and "PostgreSQL" in said
        assert "Traceback" not in said
        assert first.poll() is None  # the first one runs on
        # A SIGKILLed holder does not block the restart: the kernel dropped its lock.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first = _start_bridge(config)
        await _wait_healthy(homeserver, first)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert first.returncode == 0


# --- two processes on PostgreSQL behind HAProxy --------------------------------------------

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)
HAPROXY_SAMPLE = REPO / "contrib" / "haproxy" / "haproxy.cfg"
PER_KIND = 12  # messages of each kind (Slack in two workspaces, Matrix, email)
ERIKA = "erika@stadt.example"


@dataclass
class Process:
    name: str
    config: Path
    appservice_port: int
    events_port: int
    smtp_port: int
    popen: subprocess.Popen[str] | None = None

    @property
    def log(self) -> str:
        return self.config.with_suffix(".log").read_text()


def _process_config(homeserver: Homeserver, database_url: str, sim: SlackSimulator,
                    teams: list[Any], sink: SmtpSink, name: str) -> Process:
    """One process's config: the same but for its own ports (on one host here; on two
    hosts they would be the same too)."""
    ports = Process(name, Path(), free_port(), free_port(), free_port())
    path = homeserver.config_file(
        database_url,
        appservice__port=ports.appservice_port,
        slack__enabled=True, slack__api_url=sim.api_url,
        slack__workspaces=[workspace_config(t) for t in teams],
        slack__events_api={"hostname": "127.0.0.1", "port": ports.events_port,
                           "path": "/slack/events"},
        email__enabled=True, email__domain=MAIL_DOMAIN, email__sender_auth="none",
        email__token_secret="test-token-secret-0123456789",
        email__smtp_in={"hostname": "127.0.0.1", "port": ports.smtp_port},
        email__smtp_out={"host": sink.host, "port": sink.port},
        bridge__outbox={"retry_base_seconds": 0.2, "retry_max_seconds": 1.0,
                        "give_up_after_hours": 1.0},
        bridge__public_url="https://bridge.example.test",
        logging__level="INFO")
    ports.config = path.rename(path.with_name(f"bridge-{name}.yaml"))
    return ports


async def _healthy(url: str, process: subprocess.Popen[str] | None = None,
                   what: str = "") -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            assert process is None or process.poll() is None, f"{what} exited"
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{what} never became healthy at {url}")


async def _send_mail(ports: list[int], text: str, to: str) -> int:
    """Like a sending MTA with several MX hosts: the first that takes it (a dead one
    refuses the connection). Returns the port that took it."""
    msg = EmailMessage()
    msg["From"] = f"Erika Mustermann <{ERIKA}>"
    msg["To"] = to
    msg["Subject"] = text
    msg["Message-ID"] = make_msgid(domain="stadt.example")
    msg.set_content(text)

    def send() -> int:
        for port in ports:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    client.send_message(msg)
                return port
            except (ConnectionRefusedError, smtplib.SMTPServerDisconnected):
                continue
        raise AssertionError(f"no MX took {text}")

    return await asyncio.to_thread(send)


async def _claims_and_leases(database_url: str, process_id: str) -> tuple[set[int], set[str]]:
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            now = time.time()
            claims = set((await session.scalars(select(OutboxItem.id).where(
                OutboxItem.claimed_by == process_id, OutboxItem.state == "pending",
                OutboxItem.claimed_until > now))).all())
            leases = set((await session.scalars(select(BridgeLease.name).where(
                BridgeLease.holder == process_id, BridgeLease.expires_at > now))).all())
        return claims, leases
    finally:
        await db.close()


async def _process_ids(database_url: str) -> dict[int, str]:
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            return {p.pid: p.id for p in await db_leases.processes(session)}
    finally:
        await db.close()


async def _taken_over(database_url: str, dead: str, survivor: str, claims: set[int],
                      leases: set[str]) -> tuple[bool, bool]:
    """(the dead process's claims are all the survivor's or done, its leases the
    survivor's)."""
    db = Database(database_url)
    try:
        async with db.sessions() as session:
            still = set((await session.scalars(select(OutboxItem.id).where(
                OutboxItem.id.in_(claims), OutboxItem.claimed_by == dead,
                OutboxItem.state == "pending"))).all()) if claims else set()
            # (The survivor may have let go of a job's lease again since: it was its.)
            holders = set((await session.scalars(select(BridgeLease.holder).where(
                BridgeLease.name.in_(leases)))).all()) if leases else set()
        return not still, holders <= {survivor}
    finally:
        await db.close()


def _start_haproxy(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Debian's HAProxy with the sample config of contrib/haproxy/, its addresses given
    as environment variables (as the sample expects)."""
    assert HAPROXY is not None
    log = open(tmp_path / "haproxy.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([HAPROXY, "-db", "-f", str(HAPROXY_SAMPLE)],
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


_MARKER = re.compile(r"\b([SMEH]\d\d) aus")


def _mails_to(sink: SmtpSink, address: str) -> list[str]:
    """The texts of the mails to ``address``, a copy with the Message-ID of an earlier one
    counted once. SMTP cannot be asked whether a mail arrived (RFC 1047): one handed to the
    relay in the instant before the SIGKILL, its success not yet recorded, is sent again by
    the survivor with the same Message-ID, which mail clients show once (README "High
    availability"). A copy with a new Message-ID would be a double, and is counted."""
    texts: list[str] = []
    seen: dict[str, str] = {}
    for received in sink.received:
        if address not in received.rcpt_tos:
            continue
        text = plain(received).strip()
        message_id = str(received.message["Message-ID"] or "")
        if message_id and message_id in seen:
            assert seen[message_id] == text, ("same Message-ID, other text", message_id)
            continue
        seen[message_id] = text
        texts.append(text)
    return texts


def _in_order(texts: list[str], kind: str) -> list[str]:
    """The markers ("S03") of one kind of message, in the order the texts have them (a
    mail's subject may come before its text in Slack: one marker per text)."""
    found = [m.group(1) for t in texts if (m := _MARKER.search(t))]
    return [marker for marker in found if marker.startswith(kind)]


@pytest.mark.skipif(HAPROXY is None, reason="HAProxy is not installed (Debian: apt install "
                    "haproxy; .ci/run installs it)")
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_processes_behind_haproxy_lose_double_and_reorder_nothing_when_one_is_killed(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, admin: MatrixTestClient, tmp_path: Path) -> None:
    sim = slack_sim
    # A second workspace on the Events API, whose requests come in through HAProxy too.
    amt = add_workspace(sim, team_id="T0AMT", name="amt", socket_mode=False)
    events_bind = free_port()
    amt.events_url = f"http://127.0.0.1:{events_bind}/slack/events"
    a, b = (_process_config(homeserver, database_url, sim, [team, amt], sink, name)
            for name in ("a", "b"))
    assert HAPROXY is not None
    haproxy = _start_haproxy(tmp_path, {
        "APPSERVICE_BIND": f"127.0.0.1:{homeserver.bridge_port}",
        "EVENTS_BIND": f"127.0.0.1:{events_bind}",
        "BRIDGE_A_APPSERVICE": f"127.0.0.1:{a.appservice_port}",
        "BRIDGE_B_APPSERVICE": f"127.0.0.1:{b.appservice_port}",
        "BRIDGE_A_EVENTS": f"127.0.0.1:{a.events_port}",
        "BRIDGE_B_EVENTS": f"127.0.0.1:{b.events_port}"})
    try:
        for process in (a, b):  # (A first: it becomes the housekeeper)
            process.popen = _start_bridge(process.config)
            await _healthy(f"http://127.0.0.1:{process.appservice_port}/_bridge/health",
                           process.popen, f"bridge {process.name}")
        await _healthy(f"http://127.0.0.1:{homeserver.bridge_port}/_bridge/health",
                       haproxy, "HAProxy")
        await sim.wait_for(lambda: sim.socket_count(team) == 2, timeout=30)
        assert a.popen is not None and b.popen is not None
        ids = await _process_ids(database_url)
        a_id, b_id = ids[a.popen.pid], ids[b.popen.pid]

        bot = homeserver.bot
        room = await open_room(bot, admin, bot_power=100, name="Bauamt")
        await command(bot, admin, room, f"!bridge link slack {CHANNEL} rathaus",
                      expect="Linked")
        localpart = f"bauamt-{uuid.uuid4().hex[:6]}"
        await command(bot, admin, room, f"!bridge link email {localpart}", expect="Linked")
        await command(bot, admin, room, f"!bridge email subscribe {ERIKA}",
                      expect="Subscribed")
        address = f"{localpart}@{MAIL_DOMAIN}"
        amt_room = await open_room(bot, admin, bot_power=100, name="Amt")
        await command(bot, admin, amt_room, f"!bridge link slack {CHANNEL} amt",
                      expect="Linked")
        # Slack answers posts slowly: deliveries are in flight (claimed) when A dies.
        sim.slow_down("chat.postMessage", 0.15)

        killed_at = 0.0
        claims: set[int] = set()
        leases: set[str] = set()
        mx_ports = [a.smtp_port, b.smtp_port]
        for i in range(PER_KIND):
            await sim.post_message(team, CHANNEL, ANNA, text=f"S{i:02d} aus Slack")
            await sim.post_message(amt, CHANNEL, ANNA, text=f"H{i:02d} aus dem Amt")
            await admin.send_text(room, f"M{i:02d} aus Matrix")
            # Mail goes to both MX hosts in turn (the dead one refuses: the other).
            await _send_mail(mx_ports[i % 2:] + mx_ports[:i % 2], f"E{i:02d} aus der Mail",
                             address)
            if i == PER_KIND // 2:
                # Mid-stream: once A holds claimed work, SIGKILL it.
                for _ in range(200):
                    claims, leases = await _claims_and_leases(database_url, a_id)
                    if claims:
                        break
                    await asyncio.sleep(0.02)
                a.popen.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                a.popen.wait(timeout=10)
        assert claims, "A held no claimed deliveries when it was killed"
        assert "housekeeping" in leases

        # The survivor takes over A's claims and leases within the lease time.
        claims_after = leases_after = None
        while claims_after is None or leases_after is None:
            claims_done, leases_done = await _taken_over(database_url, a_id, b_id, claims,
                                                         leases)
            elapsed = time.monotonic() - killed_at
            if claims_done and claims_after is None:
                claims_after = elapsed
            if leases_done and leases_after is None:
                leases_after = elapsed
            assert elapsed < 30, (claims_done, leases_done)
            await asyncio.sleep(0.1)
        print(f"\nHA take-over after SIGKILL (heartbeat every 2 s, expiry 10 s; machine "
              f"load {os.getloadavg()[0]:.1f}): {len(claims)} claimed deliveries taken over "
              f"after {claims_after:.1f} s, leases {sorted(leases)} after "
              f"{leases_after:.1f} s")
        assert claims_after < 10 + 2 * 2 + 3 and leases_after < 10 + 2 * 2 + 3
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{homeserver.bridge_port}/_bridge/health") as response:
            health = await response.json()  # through HAProxy: only B answers now
        assert response.status == 200
        assert health["process"]["id"] == b_id and health["process"]["housekeeper"]

        # Nothing lost, nothing doubled, every room's order kept.
        def timeline_texts(events: list[dict[str, Any]]) -> list[str]:
            return [e["content"].get("body", "") for e in events
                    if e["type"] == "m.room.message" and e["sender"] != bot]

        expected_room = {f"{k}{i:02d}" for k in "SME" for i in range(PER_KIND)}
        for _ in range(300):
            texts = timeline_texts(await room_events(admin, room, limit=400))
            amt_texts = timeline_texts(await room_events(admin, amt_room, limit=200))
            slack_texts = [text_of(m) for m in sim.messages(team, CHANNEL)]
            mails = _mails_to(sink, ERIKA)
            if (set(_in_order(texts, "")) >= expected_room
                    and len(_in_order(amt_texts, "H")) >= PER_KIND
                    and len(_in_order(slack_texts, "M") + _in_order(slack_texts, "E"))
                    >= 2 * PER_KIND
                    and len(_in_order(mails, "S") + _in_order(mails, "M")) >= 2 * PER_KIND):
                break
            await asyncio.sleep(0.1)
        sim.slow_down("chat.postMessage", 0)
        # One more of each way, after everything: once through, every repeat would be too.
        await sim.post_message(team, CHANNEL, ANNA, text="Z99 Schluss aus Slack")
        await admin.wait_for_event(room, has_body("Z99 Schluss aus Slack"), timeout=30)
        await admin.send_text(room, "Y99 Schluss aus Matrix")
        await posted(sim, team, "Y99 Schluss aus Matrix", timeout=30)
        await sink.wait_for(lambda r: "Y99 Schluss" in plain(r), timeout=30)

        texts = timeline_texts(await room_events(admin, room, limit=400))
        amt_texts = timeline_texts(await room_events(admin, amt_room, limit=200))
        slack_texts = [text_of(m) for m in sim.messages(team, CHANNEL)
                       if m.get("bot_id")]
        mails = _mails_to(sink, ERIKA)
        want = {k: [f"{k}{i:02d}" for i in range(PER_KIND)] for k in "SMEH"}
        got = {
            "room S": _in_order(texts, "S"), "room M": _in_order(texts, "M"),
            "room E": _in_order(texts, "E"), "amt H": _in_order(amt_texts, "H"),
            "Slack M": _in_order(slack_texts, "M"), "Slack E": _in_order(slack_texts, "E"),
            "mail S": _in_order(mails, "S"), "mail M": _in_order(mails, "M"),
        }
        for where, seen in got.items():
            # Exactly the expected list: nothing lost, nothing doubled, in order.
            assert seen == want[where[-1]], (where, seen)
        assert _in_order(mails, "E") == []  # Erika's own mails do not come back to her
        assert b.popen.poll() is None
        assert "taking over its work" in b.log
        assert "Traceback" not in b.log, b.log[-3000:]
    finally:
        for process in (a, b):
            if process.popen is not None and process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
                process.popen.wait(timeout=30)
        haproxy.terminate()
        haproxy.wait(timeout=10)
