"""The bridge's own mail relay, as a real one behaves: it refuses our login or our sender,
offers SMTPUTF8 or not, and would time out idle connections. What subscribers receive, what
the room and `!bridge status` say, and what `bridge check` finds, over real SMTP."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.helpers import command, is_notice_from
from testkit.matrix_client import MatrixTestClient
from testkit.synapse import free_port
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN, EmailBridge
from tests.email.relay import StrictRelay
from tests.email.test_email_bridge import _email_room

LOGIN = ("bridge", "richtig")
JUERGEN = "jürgen@stadt.example"


@pytest.fixture
def relay_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def sink(relay_options: dict[str, Any]) -> AsyncIterator[StrictRelay]:
    """The relay the bridge sends through (the email fixtures call it `sink`)."""
    relay = StrictRelay(**relay_options)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def _count(events: list[dict[str, Any]], words: str) -> int:
    return sum(words in e["content"].get("body", "") for e in events
               if e["type"] == "m.room.message")


async def _status(homeserver: Homeserver, admin: MatrixTestClient, room: str) -> str:
    reply = await command(homeserver.bot, admin, room, "!bridge status", expect="email")
    line = next(line for line in reply["content"]["body"].splitlines()
                if line.startswith("- email:"))
    return line


# Login refused with 535, or our sender refused at MAIL FROM: both are the relay's fault.
OUTAGES = [
    pytest.param({"login": LOGIN},
                 {"sender_auth": "none", "max_bounces": 1,
                  "smtp_out": {"username": LOGIN[0], "password": "falsch", "idle_seconds": 0.5}},
                 "535", id="login-refused"),
    pytest.param({"refuse_sender": "553 5.7.1 Sender address rejected: not owned by user"},
                 {"sender_auth": "none", "max_bounces": 1, "smtp_out": {"idle_seconds": 0.5}},
                 "553", id="sender-refused"),
]


@pytest.mark.parametrize(("relay_options", "email_settings", "code"), OUTAGES,
                         indirect=["relay_options", "email_settings"])
async def test_a_relay_refusing_us_is_an_outage_not_a_bounce(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient, code: str) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example",
                                "max@stadt.example")
    if code == "535":
        # Health tells the truth before any mail: the bridge asked the relay at start
        # (connect, EHLO, login; which senders it takes shows only when mail is sent).
        status = await _status(homeserver, admin, room)
        assert "❌" in status and code in status, status

    await admin.send_text(room, "Die Sitzung ist verschoben.")
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "delayed"),
                                        timeout=20)
    assert code in notice["content"]["body"]
    status = await _status(homeserver, admin, room)
    assert "❌" in status and code in status, status
    await asyncio.sleep(3)  # several retries (at most 1 s apart in the tests)
    assert sink.received == []
    listing = await command(homeserver.bot, admin, room, "!bridge email list",
                            expect="erika@stadt.example")
    assert "paused" not in listing["content"]["body"]  # max_bounces is 1: nobody was blamed
    assert _count(await admin.messages(room), "delayed") == 1  # told once, not per retry

    # The admin fixes the relay: the mail that waited reaches everyone, once.
    if code == "535":
        sink.login = (LOGIN[0], "falsch")
    else:
        sink.refuse_sender = None
    mails = await sink.wait_for(lambda r: True, count=2, timeout=20)
    assert sorted(m.rcpt_tos[0] for m in mails) == ["erika@stadt.example", "max@stadt.example"]
    await admin.wait_for_event(room, is_notice_from(homeserver.bot, "works again"), timeout=20)
    assert "✅" in await _status(homeserver, admin, room)
    # No connection was left open on any of the error paths, nor after the work was done.
    await sink.until(lambda: sink.open_connections == 0, timeout=10)
    assert len(sink.received) == 2


@pytest.mark.parametrize("email_settings", [{"sender_auth": "none",
                                             "smtp_out": {"idle_seconds": 0.5}}],
                         indirect=True)
async def test_idle_connections_to_the_relay_are_closed_with_quit(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await admin.send_text(room, "Guten Morgen.")
    await sink.wait_for(lambda r: True)
    quits = sink.quits
    # Not left for the relay to time out (Postfix waits 300 s and logs each one).
    await sink.until(lambda: sink.open_connections == 0, timeout=5)
    assert sink.quits > quits


@pytest.mark.parametrize("relay_options", [{"timeout": 0.5}], indirect=True)
async def test_a_relay_closing_idle_connections_first_is_no_outage(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await admin.send_text(room, "Erste Nachricht.")
    await sink.wait_for(lambda r: True)
    await asyncio.sleep(1.5)  # the relay times the pooled connection out before we do
    await admin.send_text(room, "Zweite Nachricht.")
    await sink.wait_for(lambda r: True, count=2)
    assert _count(await admin.messages(room), "delayed") == 0
    assert "✅" in await _status(homeserver, admin, room)


@pytest.mark.parametrize("relay_options", [{"smtputf8": True}], indirect=True)
async def test_a_non_ascii_address_is_mailed_with_smtputf8(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient) -> None:
    room, address = await _email_room(homeserver, admin, None, JUERGEN, "erika@stadt.example")
    await admin.send_text(room, "Grüße an alle.")
    mails = await sink.wait_for(lambda r: True, count=2)
    (mail,) = [m for m in mails if m.rcpt_tos == [JUERGEN]]
    index = sink.received.index(mail)
    assert "SMTPUTF8" in sink.mail_options[index]
    assert f"\r\nTo: {JUERGEN}\r\n".encode() in mail.raw  # UTF-8 in the header, as sent
    assert "Grüße an alle." in mail.message.get_body(("plain",)).get_content()

    # And what Jürgen writes reaches the room.
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"Jürgen <{JUERGEN}>", address, "Antwort"
    msg.set_content("Danke, Jürgen hier.")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", email_bridge.smtp_port, timeout=30) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)
    event = await admin.wait_for_event(
        room, lambda e: "Jürgen hier" in e["content"].get("body", ""), timeout=20)
    assert event["sender"] == email_bridge.email.puppet_user_id(JUERGEN)


async def test_a_non_ascii_address_fails_for_good_where_the_relay_has_no_smtputf8(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, JUERGEN, "erika@stadt.example")
    await admin.send_text(room, "Grüße an alle.")
    await sink.wait_for(lambda r: r.rcpt_tos == ["erika@stadt.example"])
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, JUERGEN),
                                        timeout=20)
    assert "SMTPUTF8" in notice["content"]["body"]
    connections = sink.connections
    await asyncio.sleep(2.5)  # retries would come within a second or two
    assert sink.connections == connections and sink.to(JUERGEN) == []
    assert _count(await admin.messages(room), "SMTPUTF8") == 1
    listing = await command(homeserver.bot, admin, room, "!bridge email list",
                            expect=JUERGEN)
    assert "paused" not in listing["content"]["body"]  # his mailbox did not fail


async def test_the_date_of_a_mail_is_when_the_message_was_written(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient) -> None:
    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await sink.stop()
    event_id = await admin.send_text(room, "Geschrieben, bevor der Relay wieder lief.")
    event = await admin.wait_for_event(room, lambda e: e["event_id"] == event_id)
    await asyncio.sleep(3)
    await sink.start()
    (mail,) = await sink.wait_for(lambda r: True, timeout=30)
    sent_at = time.time()
    written = parsedate_to_datetime(mail.message["Date"]).timestamp()
    assert abs(written - event["origin_server_ts"] / 1000) < 1.5
    assert sent_at - written > 2.5


async def test_the_smtp_dialogue_is_not_logged_at_info(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    room, address = await _email_room(homeserver, admin, None, "erika@stadt.example")
    await admin.send_text(room, "Hinaus.")
    await sink.wait_for(lambda r: True)
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "erika@stadt.example", address, "Herein"
    msg.set_content("Herein.")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", email_bridge.smtp_port, timeout=30) as client:
            client.send_message(msg)

    await asyncio.to_thread(send)
    await admin.wait_for_event(room, lambda e: e["content"].get("body") == "Herein\n\nHerein.",
                               timeout=20)
    chatter = [r.getMessage() for r in caplog.records
               if r.name in ("mail.log", "aiosmtplib") and r.levelno < logging.WARNING]
    assert chatter == []


def _check_config(homeserver: Homeserver, tmp_path: Path, database_url: str,
                  smtp_out: dict[str, Any]) -> Path:
    data = yaml.safe_load(homeserver.config_path.read_text())
    data["database"]["url"] = database_url
    data["email"] = {"enabled": True, "domain": MAIL_DOMAIN, "sender_auth": "none",
                     "token_secret": "test-token-secret-0123456789",
                     "smtp_in": {"hostname": "127.0.0.1", "port": free_port()},
                     "smtp_out": smtp_out}
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("relay_options", [{"login": LOGIN}], indirect=True)
async def test_bridge_check_tests_the_relay(homeserver: Homeserver, sink: StrictRelay,
                                            tmp_path: Path, sqlite_url: str) -> None:
    from tests.test_cli import bridge_cmd

    async def check(**smtp_out: Any) -> str:
        config = _check_config(homeserver, tmp_path, sqlite_url,
                               {"host": sink.host, "port": sink.port, **smtp_out})
        # In a thread: the relay answers from this test's event loop meanwhile.
        result = await asyncio.to_thread(bridge_cmd, "check", "-c", str(config))
        return next((line for line in result.stdout.splitlines() if "email relay" in line),
                    result.stdout + result.stderr)

    good = await check(username=LOGIN[0], password=LOGIN[1])
    assert good.startswith("[  OK] email relay") and f"logged in as {LOGIN[0]}" in good, good
    wrong = await check(username=LOGIN[0], password="falsch")
    assert wrong.startswith("[FAIL] email relay") and "535" in wrong, wrong
    assert "username and password" in wrong
    no_tls = await check(username=LOGIN[0], password=LOGIN[1], security="starttls")
    assert no_tls.startswith("[FAIL] email relay") and "STARTTLS" in no_tls, no_tls
    down = await check(port=free_port())
    assert down.startswith("[FAIL] email relay") and "email.smtp_out" in down, down
    await sink.until(lambda: sink.open_connections == 0, timeout=5)


async def test_a_mail_that_cannot_be_written_fails_for_good_at_once(
        homeserver: Homeserver, email_bridge: EmailBridge, sink: StrictRelay,
        admin: MatrixTestClient) -> None:
    from bridge.email import store as email_store

    room, _ = await _email_room(homeserver, admin, None, "erika@stadt.example")
    # A subscriber an older version let in, whose address no mail can be written to.
    async with email_bridge.hub.db.transaction() as session:
        await email_store.subscribe(session, room, "a..b@stadt.example", None, "@old:test")
    await admin.send_text(room, "An alle.")
    await sink.wait_for(lambda r: r.rcpt_tos == ["erika@stadt.example"])
    notice = await admin.wait_for_event(room, is_notice_from(homeserver.bot, "a..b@"),
                                        timeout=20)
    assert "could not write the mail" in notice["content"]["body"]
    await asyncio.sleep(2)  # not retried: a retry would fail the same way
    assert _count(await admin.messages(room), "could not write the mail") == 1
