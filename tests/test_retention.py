"""Retention: the job deletes what is older than ``retention.*`` allows, in batches, and
nothing else (pending work, newer rows, what is kept for ever); two processes may run it at
once; an edit or reply to a message whose mapping is gone is posted as a new message.

The clock is moved (``now``), never waited for. SQLite and PostgreSQL; the end-to-end case
(real Synapse, the Slack simulator) on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
import uuid
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from bridge.config import RetentionConfig
from bridge.core.retention import declarations, run_retention, schema_tables
from bridge.db import store
from bridge.db.engine import Database
from bridge.db.models import (
    AppserviceTransaction,
    AuditEntry,
    IdentityClaim,
    InboundKey,
    InboxItem,
    MessageMapping,
    OutboxItem,
    Portal,
)
from bridge.email.models import EmailSubscriber, EmailThread
from testkit.helpers import command
from testkit.matrix_client import MatrixTestClient
from testkit.slack_sim import SlackSimulator
from testkit.smtp_sink import SmtpSink
from tests.conftest import Homeserver
from tests.email.conftest import MAIL_DOMAIN
from tests.email.conftest import sink as sink
from tests.slack.conftest import (
    ANNA,
    CHANNEL,
    linked_room,
    running_slack_and_email_bridge,
)
from tests.slack.conftest import slack_sim as slack_sim
from tests.slack.conftest import team as team
from tests.slack.relay_helpers import has_body, posted

DAY = 86400.0
NOW = 1_800_000_000.0  # the moment the job is run at: any fixed time will do
ROOM = "!bauamt:stadt.example"
ERIKA = "erika@stadt.example"


def days_ago(days: float) -> float:
    return NOW - days * DAY


def test_every_table_says_what_it_stores_and_how_long() -> None:
    """A new table without a declaration would be missing from the data report and from
    retention: this fails until it says what it holds."""
    from tests.support.recording_network import network as test_network

    tables = schema_tables()
    declared = {data.table: data for data in declarations()}
    assert set(tables) <= set(declared), sorted(set(tables) - set(declared))
    # The example of a network added later declares its table too. (Its models are not
    # imported here: they would join the one metadata that test_migrations compares.)
    assert [data.table for data in test_network.stored_data] == ["recording_note"]
    for data in declared.values():
        assert data.table in tables, data.table
        if data.retention is not None:
            assert data.age_column is not None, data.table
            assert hasattr(RetentionConfig(), data.retention), data.retention


async def _seed(db: Database) -> None:
    """Rows of every kind the job touches: old and new, finished and pending."""
    async with db.transaction() as session:
        session.add(Portal(room_id=ROOM, created_at=days_ago(1000)))
        for n, age in enumerate((400, 400, 400, 10)):  # three older than a year
            session.add(MessageMapping(room_id=ROOM, event_id=f"$e{n}", network="slack",
                                       remote_space="T_C", remote_id=f"{n}.0", part=0,
                                       created_at=days_ago(age)))
            session.add(InboundKey(network="slack", key=f"k{n}", received_at=days_ago(age)))
        for n, (state, age) in enumerate((("done", 40), ("failed", 40), ("pending", 40),
                                          ("done", 5))):
            session.add(OutboxItem(lane=f"slack:{ROOM}", network="slack", room_id=ROOM,
                                   kind="event", payload="{}", created_at=days_ago(age),
                                   state=state, next_attempt_at=days_ago(age)))
            session.add(InboxItem(room_id=ROOM, event_id=f"$in{n}", event="{}",
                                  received_at=days_ago(age), state=state))
        session.add(AppserviceTransaction(txn_id="old", received_at=days_ago(40)))
        session.add(AppserviceTransaction(txn_id="new", received_at=days_ago(1)))
        session.add(AuditEntry(at=days_ago(3000), actor="operator", via="api", room_id=ROOM,
                               action="link", details="{}"))
        session.add(EmailThread(thread_key="old", room_id=ROOM, root_message_id="<a@x>",
                                topic="Alt", created_at=days_ago(100)))
        session.add(EmailThread(thread_key="new", room_id=ROOM, root_message_id="<b@x>",
                                topic="Neu", created_at=days_ago(10)))
        # A self-service claim that expired long ago, and one still open.
        for n, age in enumerate((2, 0)):
            session.add(IdentityClaim(matrix_user_id="@anna:stadt.example", network="slack",
                                      remote_id=f"T_U{n}", label=f"rathaus:U{n}",
                                      code_hash="x", tries_left=3,
                                      created_at=days_ago(age) - 600,
                                      expires_at=days_ago(age) + 600))
        # Kept as long as the subscription lasts, whatever its age.
        session.add(EmailSubscriber(room_id=ROOM, address="erika@stadt.example",
                                    created_by="@a:x", created_at=days_ago(2000)))


async def _count(db: Database, model: Any, *where: Any) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where))
                   or 0)


async def test_the_job_deletes_what_is_older_and_nothing_else(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.upgrade()
        await _seed(db)
        # A small batch: the three old mappings take two batches.
        deleted = await run_retention(db, RetentionConfig(), now=NOW, batch=2)
        assert deleted == {"message_mapping": 3, "inbound_key": 3, "outbox": 2, "inbox": 2,
                           "appservice_transaction": 1, "email_thread": 1,
                           "identity_claim": 1}
        assert await _count(db, MessageMapping) == 1
        # Pending work is never deleted for its age, however old: it was accepted.
        assert await _count(db, OutboxItem, OutboxItem.state == "pending") == 1
        assert await _count(db, InboxItem, InboxItem.state == "pending") == 1
        assert await _count(db, OutboxItem) == 2 and await _count(db, InboxItem) == 2
        # audit_days 0 keeps for ever; subscribers are kept while subscribed.
        assert await _count(db, AuditEntry) == 1
        assert await _count(db, EmailSubscriber) == 1
        async with db.sessions() as session:
            assert await session.scalar(select(EmailThread.thread_key)) == "new"
        # Run again: nothing more is old enough.
        assert await run_retention(db, RetentionConfig(), now=NOW) == {}
        # A shorter retention takes the rest; 0 keeps.
        short = RetentionConfig(message_mappings_days=1, delivered_days=0, audit_days=365)
        assert await run_retention(db, short, now=NOW) == {
            "message_mapping": 1, "inbound_key": 1, "audit_log": 1}
        assert await _count(db, OutboxItem) == 2
    finally:
        await db.close()


async def test_two_processes_at_once_delete_each_row_once(database_url: str) -> None:
    """Two bridges on one database running the job at the same moment: together they
    delete every old row, neither fails."""
    first, second = Database(database_url), Database(database_url)
    try:
        await first.upgrade()
        async with first.transaction() as session:
            for n in range(120):
                session.add(MessageMapping(room_id=ROOM, event_id=f"$e{n}", network="slack",
                                           remote_space="T_C", remote_id=f"{n}.0", part=0,
                                           created_at=days_ago(400 + n % 3)))
        results = await asyncio.gather(
            run_retention(first, RetentionConfig(), now=NOW, batch=7),
            run_retention(second, RetentionConfig(), now=NOW, batch=7))
        assert sum(r.get("message_mapping", 0) for r in results) == 120
        assert await _count(first, MessageMapping) == 0
    finally:
        await first.close()
        await second.close()


async def _thread_roots(db: Database) -> list[str]:
    async with db.sessions() as session:
        return list(await session.scalars(select(EmailThread.root_message_id)))


async def _smtp_send(port: int, message: EmailMessage) -> None:
    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(message)

    await asyncio.to_thread(send)  # (the bridge runs in this event loop)


async def _mapped(db: Database, event_id: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        async with db.sessions() as session:
            if await store.mappings_for_event(session, event_id):
                return
        assert loop.time() < deadline, f"{event_id} never mapped"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_edit_or_reply_to_a_message_whose_mapping_expired_is_posted_as_new(
        homeserver: Homeserver, database_url: str, slack_sim: SlackSimulator, team: Any,
        sink: SmtpSink, admin: MatrixTestClient) -> None:
    async with running_slack_and_email_bridge(homeserver, database_url, slack_sim, team,
                                              sink) as running:
        sim = running.sim
        room = await linked_room(running, admin)
        tag = uuid.uuid4().hex[:6]
        localpart = f"bauamt-{tag}"
        await command(homeserver.bot, admin, room, f"!bridge link email {localpart}",
                      expect="Linked")
        await command(homeserver.bot, admin, room, f"!bridge email subscribe {ERIKA}",
                      expect="Subscribed")
        first_mail = EmailMessage()
        first_mail["From"], first_mail["To"] = ERIKA, f"{localpart}@{MAIL_DOMAIN}"
        first_mail["Subject"], first_mail["Message-ID"] = "Bauantrag", make_msgid()
        first_mail.set_content(f"Alte Mail {tag}")
        await _smtp_send(running.smtp_port, first_mail)  # type: ignore[attr-defined]
        await admin.wait_for_event(room, has_body(f"Alte Mail {tag}"), timeout=20)
        assert first_mail["Message-ID"].strip("<>") in await _thread_roots(running.hub.db)
        old_ts = await sim.post_message(team, CHANNEL, ANNA, text=f"Alte Nachricht {tag}")
        old_event = await admin.wait_for_event(room, has_body(f"Alte Nachricht {tag}"),
                                               timeout=15)
        await admin.send_text(room, f"Alte Antwort aus Matrix {tag}")
        await posted(sim, team, f"Alte Antwort aus Matrix {tag}")
        matrix_event = await admin.wait_for_event(
            room, has_body(f"Alte Antwort aus Matrix {tag}"), timeout=15)

        bridge = running.bridge
        assert bridge is not None
        # (The mapping of what went to Slack is written with the delivery's success, a
        # moment after Slack has the message.)
        await _mapped(bridge.db, matrix_event["event_id"])

        # A year and a day later (the clock moved, not waited for): the mappings are gone.
        deleted = await run_retention(bridge.db, bridge.config.retention,
                                      now=time.time() + 366 * DAY)
        assert deleted.get("message_mapping", 0) >= 2
        async with bridge.db.sessions() as session:
            assert await store.mappings_for_event(session, old_event["event_id"]) == []

        # Slack: the old message is edited, and replied to in its thread.
        await sim.edit_message(team, CHANNEL, old_ts, f"Alte Nachricht korrigiert {tag}")
        edited = await admin.wait_for_event(
            room, has_body(f"Alte Nachricht korrigiert {tag}"), timeout=15)
        # Posted as a new message: not an edit of an event the bridge no longer knows.
        assert "m.relates_to" not in edited["content"], edited
        await sim.post_message(team, CHANNEL, ANNA, text=f"Spaete Antwort {tag}",
                               thread_ts=old_ts)
        await admin.wait_for_event(room, has_body(f"Spaete Antwort {tag}"), timeout=15)

        # Matrix: the old message is edited and replied to.
        await admin.send_event(room, "m.room.message", {
            "msgtype": "m.text", "body": f"* Korrektur aus Matrix {tag}",
            "m.new_content": {"msgtype": "m.text", "body": f"Korrektur aus Matrix {tag}"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": matrix_event["event_id"]}})
        await posted(sim, team, f"Korrektur aus Matrix {tag}")
        await admin.send_event(room, "m.room.message", {
            "msgtype": "m.text", "body": f"Antwort aus Matrix {tag}",
            "m.relates_to": {"m.in_reply_to": {"event_id": old_event["event_id"]}}})
        await posted(sim, team, f"Antwort aus Matrix {tag}")

        # Mail: a reply to the old mail, whose thread and mapping are gone, starts a thread.
        assert first_mail["Message-ID"].strip("<>") not in await _thread_roots(bridge.db)
        reply = EmailMessage()
        reply["From"], reply["To"] = ERIKA, f"{localpart}@{MAIL_DOMAIN}"
        reply["Subject"], reply["Message-ID"] = "Re: Bauantrag", make_msgid()
        reply["In-Reply-To"] = reply["References"] = first_mail["Message-ID"]
        reply.set_content(f"Spaete Antwort per Mail {tag}")
        await _smtp_send(running.smtp_port, reply)  # type: ignore[attr-defined]
        await admin.wait_for_event(room, has_body(f"Spaete Antwort per Mail {tag}"),
                                   timeout=20)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_bridge_run_applies_retention_at_start(homeserver: Homeserver,
                                                     database_url: str) -> None:
    """The job is scheduled by the bridge itself: rows a year and more old are gone once it
    has started, newer ones stay."""
    from tests.conftest import RunningBridge

    db = Database(database_url)
    try:
        await db.upgrade()
        async with db.transaction() as session:
            for n, age in enumerate((400, 10)):
                session.add(MessageMapping(room_id=ROOM, event_id=f"$e{n}", network="slack",
                                           remote_space="T_C", remote_id=f"{n}.0", part=0,
                                           created_at=time.time() - age * DAY))
    finally:
        await db.close()
    running = RunningBridge(homeserver, homeserver.config(database_url))
    bridge = await running.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while await _count(bridge.db, MessageMapping) != 1:
            assert loop.time() < deadline, "the retention job did not run at start"
            await asyncio.sleep(0.05)
        async with bridge.db.sessions() as session:
            assert await session.scalar(select(MessageMapping.event_id)) == "$e1"
    finally:
        await running.stop()


async def test_data_report_lists_every_table_with_rows_oldest_and_retention(
        database_url: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.admin.test_audit_cli import config_for, run_cli

    db = Database(database_url)
    try:
        await db.upgrade()
        await _seed(db)
    finally:
        await db.close()
    code, out, err = await run_cli(capsys, "data-report", "-c",
                                   config_for(tmp_path, database_url))
    assert code == 0, err
    blocks = {block.split(":", 1)[0]: block for block in out.strip().split("\n\n")}
    assert set(blocks) == set(schema_tables())
    mapping = blocks["message_mapping"]
    assert "4 rows, oldest 2025-" in mapping, mapping  # 400 days before NOW (2027-01-15)
    assert "retention.message_mappings_days: 365 days" in mapping
    assert "which Matrix event each remote message became" in mapping
    assert "retention.mail_originals_days: 90 days" in blocks["email_thread"]
    assert "retention.audit_days: 0, kept for ever" in blocks["audit_log"]
    assert "1 rows" in blocks["email_subscriber"] and "until unsubscribed" in \
        blocks["email_subscriber"]
    assert "0 rows, oldest -" in blocks["puppet"]
    assert "(not declared" not in out


@pytest.mark.parametrize("value", [-1, "ein Jahr", 1.5])
def test_a_bad_retention_value_names_its_key(value: Any) -> None:
    from bridge.config import ConfigError, parse_config

    data = {"homeserver": {"domain": "stadt.example"},
            "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32},
            "retention": {"delivered_days": value}}
    with pytest.raises(ConfigError, match=r"^retention\.delivered_days: "):
        parse_config(data, environ={})
    data["retention"] = {"delivered_day": 30}  # a typo is refused, not ignored
    with pytest.raises(ConfigError, match=r"retention\.delivered_day"):
        parse_config(data, environ={})


def test_the_example_config_sets_every_retention_key() -> None:
    from bridge.cli import example_config_text

    section = yaml.safe_load(example_config_text())["retention"]
    assert set(section) == set(RetentionConfig.model_fields)
    assert RetentionConfig(**section) == RetentionConfig()  # the defaults, as documented
